import ClusterCore
import ClusterProtocol
import ClusterIPC
import Logging
import QQGateway
import RateBudget
import ServiceLifecycle
import UserCache
#if canImport(Glibc)
import Glibc
#endif

/// One shard in this process, as a `Service` (`botcluster run`): discovers the gateway, paces its own identifies,
/// spends its own REST budget, and on graceful shutdown drains and says where it stopped.
public final class LoneShard: Service {
    let config: ClusterConfig
    let shard: ShardID
    let endpoints: @Sendable () async throws -> GatewayEndpoints
    let handler: any EventHandler
    let logger: Logger
    let say: @Sendable (String) -> Void
    let complain: @Sendable (String) -> Void
    /// The exit status the process ends with (see `WorkerExitStatus`), once `run` has returned.
    public let exitStatus = AsyncSignal<Int32>()

    /// - Parameters:
    ///   - endpoints: where the platform is, once it can be reached (an embedded emulator listens).
    ///   - say: a line for the operator (where the shard stopped); `complain`: an error for the operator.
    public init(
        config: ClusterConfig, shard: ShardID, endpoints: @escaping @Sendable () async throws -> GatewayEndpoints, handler: any EventHandler,
        logger: Logger, say: @escaping @Sendable (String) -> Void, complain: @escaping @Sendable (String) -> Void
    ) {
        self.config = config
        self.shard = shard
        self.endpoints = endpoints
        self.handler = handler
        self.logger = logger
        self.say = say
        self.complain = complain
    }

    /// Runs the shard until shutdown or a fatal close, tells the operator where it stopped, and sets `exitStatus`.
    public func run() async throws {
        let endpoints = try await endpoints()
        let budget = LocalRateBudget(rate: config.rateBudget.globalRate, burst: config.rateBudget.globalBurst)
        let clients: PlatformClients
        let info: GatewayBotInfo
        do {
            (clients, info) = try await PlatformClients.discover(config: config, endpoints: endpoints, budget: budget, logger: logger)
        } catch {
            complain(error.description)
            exitStatus.set(1)
            return
        }
        let permit = LocalIdentifyPermit(
            configuration: .init(maxConcurrency: info.maxConcurrency, window: config.effectiveIdentifyWindow, margin: config.identify.margin, slotTimeout: config.identify.slotTimeout),
            remaining: info.remaining
        )
        let users: UserDirectory?
        do {
            try RunDirectory.prepare(config.supervisor.runDirectory)
            let store = try UserStore.prepare(path: config.supervisor.runDirectory + "/users.sqlite", logger: logger)
            users = UserDirectory.make(store: store, config: config, shard: shard, api: clients.api, logger: logger) { _ in }
        } catch {
            logger.error("user cache unavailable; running without it", metadata: ["error": "\(error)"])
            users = nil
        }
        let runtime = ShardRuntime.make(
            config: config, clients: clients, gatewayURL: info.url, shard: shard, handler: handler, resume: nil,
            permit: permit, claims: LocalEventClaims(ttl: config.exactlyOnce.ttl), users: users, observer: nil, logger: logger
        )
        logger.info("running shard", metadata: ["gateway": "\(info.url)", "max_concurrency": "\(info.maxConcurrency)"])
        let outcome = await runShard(
            runtime, drainTimeout: config.worker.drainTimeout,
            onDeadline: { sessionID, seq in
                self.say("stopped shard \(self.shard): session \(sessionID ?? "none") seq \(seq); handlers still running at the drain deadline were abandoned (their events come after that seq)")
                exit(WorkerExitStatus.stopped)
            },
            beside: [{ await permit.run() }, { await users?.run() }]
        )
        // Users seen last are written if the file lets us within a second (a cache: losing them costs a lookup).
        _ = try? await withTimeout(.seconds(1), "the user cache's last write") { await users?.flush() }
        await clients.shutdown()
        let stats = outcome.stats
        let p50 = stats.dispatchLatency.percentile(0.5).map(DurationFormat.human) ?? "-"
        let p99 = stats.dispatchLatency.percentile(0.99).map(DurationFormat.human) ?? "-"
        say("stopped shard \(shard): session \(outcome.sessionID ?? "none") seq \(outcome.committedSeq); received \(stats.received), handled \(stats.handled), duplicates skipped \(stats.duplicatesSkipped), handler errors \(stats.handlerErrors), reconnects \(stats.reconnects); dispatch latency p50 \(p50) p99 \(p99)")
        switch outcome.gateway {
        case .stopped: break
        case .failed(.configuration(let code)):
            complain("shard \(shard): the gateway refused the configuration (close \(code)); fix cluster.json, restarting cannot help")
        case .failed(.reshardRequired):
            complain("shard \(shard): too many guilds for \(shard.total) shards (close 4011); run with more shards")
        case .failed(.stopped(let code)):
            complain("shard \(shard): the bot is delisted or banned (close \(code))")
        }
        exitStatus.set(WorkerExitStatus.of(outcome.gateway))
    }
}
