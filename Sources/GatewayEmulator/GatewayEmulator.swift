import ClusterCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Synchronization

/// Why the emulator cannot start (a bad certificate or key).
public struct EmulatorSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// A local QQ gateway and OpenAPI: a real websocket and HTTP server speaking the platform's protocol, with a
/// traffic generator, fault injection, rate limits that answer 429, and ground-truth counters.
///
/// Run it as a `Service` (in-process, as `botcluster launch` does with the embedded default) or through
/// `botcluster emulator`. ``waitUntilListening()`` returns the bound port once connections are accepted.
public final class GatewayEmulator: Service, Sendable {
    let core: Mutex<EmulatorCore>
    let config: EmulatorConfig
    let app: AppConfig
    let logger: Logger
    let listening = AsyncSignal<Int>()
    /// Poked when webhook deliveries are queued or the callback URL is set: the delivery loop sleeps until then.
    let webhookWork = Wakeup()
    let connections = ConnectionRegistry()

    /// An emulator for the bot `app`, configured by cluster.json's `emulator` section; nothing listens before `run()`.
    public init(config: EmulatorConfig, app: AppConfig, logger: Logger) {
        self.config = config
        self.app = app
        self.logger = logger
        core = Mutex(EmulatorCore(config: config, app: app, now: MonotonicInstant.now().nanoseconds, wallClockMs: wallClockMilliseconds()))
    }

    /// Connections the server holds open (HTTP and websocket).
    public var openConnections: Int { connections.count }

    /// Waits until the server accepts connections and returns its port.
    public func waitUntilListening() async throws -> Int {
        try await listening.wait()
    }

    /// The OpenAPI base URL once listening (`http://127.0.0.1:<port>`, or `https://` with `tls`).
    public func baseURL() async throws -> String {
        let port = try await waitUntilListening()
        return "\(config.tls == nil ? "http" : "https")://\(config.host):\(port)"
    }

    /// The server's TLS configuration from `emulator.tls` (ALPN: HTTP/2 or HTTP/1.1, see `PlatformTLSChannel`).
    static func serverTLS(_ files: TLSFiles) throws -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificate)
        } catch {
            throw EmulatorSetupError(description: "emulator.tls.certificate: cannot read PEM certificates from \(files.certificate): \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(file: files.key, format: .pem)
        } catch {
            throw EmulatorSetupError(description: "emulator.tls.key: cannot read a PEM private key from \(files.key): \(error)")
        }
        guard !chain.isEmpty else { throw EmulatorSetupError(description: "emulator.tls.certificate: \(files.certificate) holds no certificate") }
        return TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    }

    /// Serves the gateway, the OpenAPI and the admin API until cancelled (graceful shutdown), then closes every connection.
    public func run() async throws {
        let router = Router(context: BasicRequestContext.self)
        router.middlewares.add(PlatformErrorMiddleware())
        addRoutes(to: router)
        let tls: TLSConfiguration?
        do {
            tls = try config.tls.map(Self.serverTLS)
        } catch {
            listening.fail(error)
            throw error
        }
        let scheme = tls == nil ? "ws" : "wss"
        let app = Application(
            router: router,
            server: HTTPServerBuilder { responder in
                let http1 = HTTP1WebSocketUpgradeChannel(
                    responder: responder,
                    configuration: .init(http1: .init(), ws: .init(maxFrameSize: 1 << 20, closeTimeout: .seconds(2)))
                ) { request, channel, _ in
                    guard let path = request.path, path == "/websocket" || path.hasPrefix("/websocket/") || path.hasPrefix("/websocket?") else {
                        return .dontUpgrade
                    }
                    return .upgrade([:]) { inbound, outbound, _ in
                        await self.serveGateway(inbound: inbound, outbound: outbound, channel: channel)
                    }
                }
                guard let tls else { return TrackedChildChannel(inner: http1, registry: self.connections) }
                let secure = try PlatformTLSChannel(tls: tls, http1: http1, http2: HTTP2Channel(responder: responder))
                return TrackedChildChannel(inner: secure, registry: self.connections)
            },
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                self.core.withLock { $0.listeningURL = "\(scheme)://\(self.config.host):\(port)/websocket" }
                self.listening.set(port)
            },
            logger: logger
        )
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await self.runTraffic() }
                group.addTask { try await self.runSweeper() }
                group.addTask { try await self.runWebhookDelivery() }
                // The server returns on graceful shutdown and throws on cancellation; the loops end with it. Stopped
                // by cancellation, it would still wait for every open connection to end: close them.
                try await withTaskCancellationHandler {
                    try await app.run()
                } onCancel: {
                    self.connections.closeAll()
                }
                group.cancelAll()
            }
        } catch is CancellationError {
        } catch {
            listening.fail(error)
            throw error
        }
    }

    // MARK: state access

    /// Runs `body` under the lock with the clock read under it; connections it lists in `wake` get their pending frames
    /// handed over outside it.
    ///
    /// The clock is read after the lock is taken so that the core sees time in the order it sees events: two
    /// identifies on two event loops, their clocks read before the lock, could reach the core in the other order and
    /// look 0 ms apart as "before the previous one" (a false 4008 with the identify window off).
    func withCore<T>(_ body: (inout EmulatorCore, inout [Int], _ now: Int64) -> T) -> T {
        let (result, resumptions, queued) = core.withLock { core -> (T, [(CheckedContinuation<OutboxBatch, Never>, OutboxBatch)], Bool) in
            var wake: [Int] = []
            let result = body(&core, &wake, Self.now())
            return (result, wake.compactMap { core.claimWaiter($0) }, core.takeWebhookQueued())
        }
        for (waiter, batch) in resumptions { waiter.resume(returning: batch) }
        if queued { webhookWork.poke() }
        return result
    }

    static func now() -> Int64 { MonotonicInstant.now().nanoseconds }

    // MARK: public controls

    /// The ground truth counted so far.
    public func stats() -> EmulatorStats {
        core.withLock { $0.snapshot(now: Self.now()) }
    }

    /// Injects a fault into matching sessions.
    public func inject(_ fault: EmulatorFault) {
        logger.info("fault injected", metadata: ["fault.kind": "\(fault.kind.rawValue)", "shard.id": "\(fault.shard.map(String.init) ?? "all")"])
        withCore { core, wake, now in wake += core.apply(fault, now: now) }
    }

    /// Changes the message rates (per second); nil keeps a rate.
    public func setTraffic(rate: Double? = nil, groupRate: Double? = nil, c2cRate: Double? = nil) {
        core.withLock { core in
            if let rate { core.config.traffic.rate = rate }
            if let groupRate { core.config.traffic.groupRate = groupRate }
            if let c2cRate { core.config.traffic.c2cRate = c2cRate }
        }
    }

    /// Generates `count` AT_MESSAGE_CREATE at once (in chunks, so sockets start draining while it runs).
    /// Returns when it began, in milliseconds of the stats clock.
    @discardableResult
    public func burst(count: Int) -> Double {
        let startedAt = core.withLock { core in
            core.stats.lastBurstAtMs = core.clockMs(Self.now())
            return core.stats.lastBurstAtMs
        }
        var left = count
        while left > 0 {
            let chunk = min(left, 512)
            left -= chunk
            withCore { core, wake, now in
                for _ in 0..<chunk { core.generateGuildMessage(now: now, wake: &wake) }
            }
        }
        return startedAt
    }

    /// Sends one AT_MESSAGE_CREATE from user `userID` in guild number `guild` (its index, 0...guilds-1); false
    /// when either is unknown.
    public func message(from userID: String, inGuild guild: Int) -> Bool {
        withCore { core, wake, now in
            guard let id = UInt64(userID), let user = core.world.userIndex(id), (0..<core.world.guilds).contains(guild) else { return false }
            core.generateGuildMessage(now: now, wake: &wake, user: user, guild: guild)
            return true
        }
    }

    /// The guild id of guild number `guild`.
    public func guildID(_ guild: Int) -> String {
        core.withLock { String($0.world.guildID(guild)) }
    }

    /// Renames one user now (by user id); returns the new username, or nil for an unknown user.
    public func rename(userID: String) -> String? {
        core.withLock { core in
            guard let id = UInt64(userID), let index = core.world.userIndex(id) else { return nil }
            core.world.rename(index)
            core.stats.renames += 1
            return core.world.username(index)
        }
    }

    /// The current username of a user id, as the platform would return it.
    public func username(userID: String) -> String? {
        core.withLock { core in
            guard let id = UInt64(userID), let index = core.world.userIndex(id) else { return nil }
            return core.world.username(index)
        }
    }

    // MARK: loops

    func runTraffic() async throws {
        let tick = Duration.milliseconds(10)
        var last = Self.now()
        var due = (guild: 0.0, group: 0.0, c2c: 0.0)
        var nextBurst = last + config.traffic.burstEvery.nanoseconds
        var nextRename = last + config.traffic.renameEvery.nanoseconds
        while !Task.isCancelled {
            try await Task.sleep(for: tick)
            let now = Self.now()
            let elapsed = Double(now - last) / 1e9
            last = now
            let traffic = core.withLock { $0.config.traffic }
            due.guild += traffic.rate * elapsed
            due.group += traffic.groupRate * elapsed
            due.c2c += traffic.c2cRate * elapsed
            var guild = Int(due.guild)
            let group = Int(due.group)
            let c2c = Int(due.c2c)
            due.guild -= Double(guild)
            due.group -= Double(group)
            due.c2c -= Double(c2c)
            if traffic.burstSize > 0 && now >= nextBurst {
                guild += traffic.burstSize
                nextBurst = now + traffic.burstEvery.nanoseconds
            }
            let rename = traffic.renameShare > 0 && now >= nextRename
            if rename { nextRename = now + traffic.renameEvery.nanoseconds }
            guard guild + group + c2c > 0 || rename else { continue }
            withCore { core, wake, now in
                for _ in 0..<guild { core.generateGuildMessage(now: now, wake: &wake) }
                for _ in 0..<group { core.generateDirectMessage(group: true, now: now, wake: &wake) }
                for _ in 0..<c2c { core.generateDirectMessage(group: false, now: now, wake: &wake) }
                if rename { core.renameSome() }
            }
        }
    }

    func runSweeper() async throws {
        let period = min(config.heartbeatTimeout / 4, .milliseconds(100))
        while !Task.isCancelled {
            try await Task.sleep(for: period)
            withCore { core, wake, now in wake += core.sweep(now: now) }
        }
    }
}
