import ClusterCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

/// One dispatch as the gateway delivered it: protocol-level, decoded into a typed event by the runtime.
public struct GatewayDispatch: Sendable {
    public var seq: Int
    public var name: String
    /// The envelope's event id (`id`), when the platform sent one.
    public var eventID: String?
    public var payload: JSONValue
    public var receivedAt: MonotonicInstant

    /// A dispatch of `name` with `seq` in its session, received at `receivedAt`.
    public init(seq: Int, name: String, eventID: String?, payload: JSONValue, receivedAt: MonotonicInstant) {
        self.seq = seq
        self.name = name
        self.eventID = eventID
        self.payload = payload
        self.receivedAt = receivedAt
    }
}

/// Where a shard's events come from: a websocket session (`GatewayClient`), or the supervisor's webhook ingress.
public protocol EventSource: Sendable {
    /// Delivers events in order until stopped or failed for good.
    func run(onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void) async -> GatewayClientOutcome
    /// The session and the seq of the last event delivered before this call's moment: handling up to it handles
    /// everything this source had received (a rescale's retiring layout waits for that).
    func fence() async -> (sessionID: String?, seq: Int?)
    /// Stops delivering; `run` returns.
    func stop()
}

/// What the client tells its owner.
public enum GatewayClientEvent: Sendable {
    case ready(sessionID: String, shard: ShardID?)
    case resumed(sessionID: String, seq: Int)
    case dispatch(GatewayDispatch)
    /// The session is gone; a stored (session, seq) must be forgotten.
    case sessionInvalidated
    case heartbeatAcknowledged(latency: Duration)
    case disconnected(code: UInt16?, reconnectIn: Duration?)
    /// A configuration error, a reshard, or a ban: the client has stopped and will not reconnect.
    case failed(GatewaySessionStateMachine.FatalReason)
}

/// How a client's run ended.
public enum GatewayClientOutcome: Sendable, Equatable {
    /// Stopped on request, with the session it can be resumed from.
    case stopped(sessionID: String?, seq: Int?)
    case failed(GatewaySessionStateMachine.FatalReason)
}

/// One gateway shard's connection: the session state machine driven over a real websocket (ws or wss) on the
/// NIO event loop, with heartbeats, zombie detection, resume, identify permits and backoff.
public final class GatewayClient: EventSource {
    /// What a client connects to and how: URL, shard, intents, the session's timing, TLS and proxies.
    public struct Configuration: Sendable {
        /// The gateway's websocket URL (from `/gateway/bot`).
        public var url: String
        public var shard: ShardID
        public var intents: GatewayIntents
        public var session = GatewaySessionStateMachine.Configuration()
        /// A session to resume instead of identifying (from a predecessor).
        public var resume: (id: String, seq: Int)?
        public var maxFrameSize = 1 << 22
        /// TLS for `wss://` (the platform HTTP client's, so that `gateway.trustRoots` holds for both).
        public var tls = TLSConfiguration.makeClientConfiguration()
        /// Proxies from the environment.
        public var proxies = ProxyEnvironment()
        /// How long our close frame may wait for the server's before the socket is closed anyway.
        public var closeTimeout: Duration = .milliseconds(500)

        /// A configuration with defaults for the rest; `resume` names a session to resume instead of identifying.
        public init(url: String, shard: ShardID, intents: GatewayIntents, resume: (id: String, seq: Int)? = nil) {
            self.url = url
            self.shard = shard
            self.intents = intents
            self.resume = resume
        }
    }

    enum Outgoing: Sendable {
        case text(String)
        /// An Identify: the permit hears of it once the frame has left, so the identify window the ledger starts
        /// never begins before the gateway can have seen it.
        case identify(String)
        case pong(ByteBuffer)
        case close(UInt16)
    }

    struct Connection: Sendable {
        var outgoing: AsyncStream<Outgoing>.Continuation?
        /// The socket of the attempt under way, from the moment it exists (before TLS and the upgrade).
        var channel: (any Channel)?
        /// The writer runs: a close goes out as a close frame; before that, closing means closing the socket.
        var writing = false
        /// A close was asked for on this attempt: a socket that appears later is closed at once.
        var closeRequested = false
        var connectRequested = false
        /// An Identify is queued or being written and its permit has not heard of it yet.
        var identifyUnreported = false
    }

    let configuration: Configuration
    let tokens: TokenProvider
    let permit: any IdentifyPermit
    let logger: Logger
    let machine: Mutex<GatewaySessionStateMachine>
    let connection = Mutex(Connection())
    let timerWakeup = Wakeup()
    let connectWakeup = Wakeup()
    /// Callers of `fence()` waiting for the fence to be reached; nil once `run` has ended.
    let fenceWaiters = Mutex<[CheckedContinuation<(sessionID: String?, seq: Int?), Never>]?>([])

    /// Creates the client of one shard; nothing connects until `run`.
    public init(configuration: Configuration, tokens: TokenProvider, permit: any IdentifyPermit, logger: Logger) {
        self.configuration = configuration
        self.tokens = tokens
        self.permit = permit
        var logger = logger
        logger[metadataKey: "shard.id"] = "\(configuration.shard)"
        self.logger = logger
        machine = Mutex(GatewaySessionStateMachine(configuration: configuration.session, resuming: configuration.resume))
    }

    /// The session as it stands (id and last seq received).
    public var session: (id: String?, seq: Int?) {
        machine.withLock { ($0.sessionID, $0.lastSeq) }
    }

    /// Closes the socket resumably and ends `run`.
    public func stop() {
        performWithoutWaiting(feed(.stop))
        connectWakeup.poke()
    }

    /// Waits until every dispatch the gateway had queued for this session when called has been handed to `run`'s
    /// `onEvent`, and returns the session and its last seq by then. It is a heartbeat whose ACK the gateway writes behind those
    /// dispatches (sent once the session is ready, again after a reconnect). Returns at once when the client has
    /// stopped, and when it stops or fails before the fence is reached.
    public func fence() async -> (sessionID: String?, seq: Int?) {
        await withCheckedContinuation { continuation in
            let registered = fenceWaiters.withLock { waiters in
                guard waiters != nil else { return false }
                waiters!.append(continuation)
                return true
            }
            guard registered else {
                continuation.resume(returning: (session.id, session.seq))
                return
            }
            performWithoutWaiting(feed(.fence))
        }
    }

    func fenceReached(seq: Int?) {
        let sessionID = machine.withLock { $0.sessionID }
        let waiters = fenceWaiters.withLock { waiters in
            defer { if waiters != nil { waiters = [] } }
            return waiters ?? []
        }
        for waiter in waiters { waiter.resume(returning: (sessionID, seq)) }
    }

    /// Runs the connection until it is stopped or fails; every event goes to `onEvent`, which may suspend to apply
    /// backpressure (reading pauses while it does).
    public func run(onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void) async -> GatewayClientOutcome {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.runTimer(onEvent: onEvent) }
            await perform(feed(.start), onEvent: onEvent, spawn: nil)
            while true {
                let (state, wantsConnect) = machine.withLock { machine in
                    (machine.state, connection.withLock { c in
                        defer { c.connectRequested = false }
                        return c.connectRequested
                    })
                }
                if case .stopped = state { break }
                if case .failed = state { break }
                if !wantsConnect {
                    await connectWakeup.wait(until: nil)
                    continue
                }
                let code = await connectOnce(onEvent: onEvent)
                await perform(feed(.closed(code: code)), onEvent: onEvent, spawn: nil)
            }
            group.cancelAll()
        }
        let remaining = fenceWaiters.withLock { waiters in
            defer { waiters = nil }
            return waiters ?? []
        }
        let (state, session) = machine.withLock { ($0.state, ($0.sessionID, $0.lastSeq)) }
        for waiter in remaining { waiter.resume(returning: session) }
        if case .failed(let reason) = state { return .failed(reason) }
        return .stopped(sessionID: session.0, seq: session.1)
    }

    // MARK: state machine plumbing

    func feed(_ input: GatewaySessionStateMachine.Input) -> [Action] {
        let (actions, before, after) = machine.withLock { machine -> ([Action], MonotonicInstant?, MonotonicInstant?) in
            let before = machine.nextDeadline
            let actions = machine.handle(input, now: .now())
            return (actions, before, machine.nextDeadline)
        }
        timerWakeup.poke(ifEarlier: after, than: before)
        return actions
    }

    func runTimer(onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void) async {
        while !Task.isCancelled {
            let deadline = machine.withLock { $0.nextDeadline }
            await timerWakeup.wait(until: deadline)
            if Task.isCancelled { return }
            if let deadline, MonotonicInstant.now() >= deadline {
                await perform(feed(.tick), onEvent: onEvent, spawn: nil)
            }
        }
    }

    func send(_ item: Outgoing) {
        if case .close(let code) = item {
            close(code: code)
            return
        }
        connection.withLock { connection in
            guard let outgoing = connection.outgoing, connection.writing else { return }
            if case .identify = item { connection.identifyUnreported = true }
            outgoing.yield(item)
        }
    }

    /// Ends the current connection attempt: with a close frame once the websocket is up (the socket is closed
    /// anyway `closeTimeout` later, should the server not answer), by closing the socket before that.
    func close(code: UInt16) {
        let (channel, frameQueued) = connection.withLock { connection -> ((any Channel)?, Bool) in
            guard !connection.closeRequested else { return (nil, false) }
            connection.closeRequested = true
            if connection.writing, let outgoing = connection.outgoing {
                outgoing.yield(.close(code))
                return (connection.channel, true)
            }
            return (connection.channel, false)
        }
        guard let channel else { return }
        if frameQueued {
            channel.eventLoop.scheduleTask(in: .nanoseconds(configuration.closeTimeout.nanoseconds)) { channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    /// Tells the permit that the Identify left: once written, or when its connection ended first (it may have
    /// partly left, and a later window start is the safe side).
    func reportIdentifySent() {
        let report = connection.withLock { connection in
            defer { connection.identifyUnreported = false }
            return connection.identifyUnreported
        }
        guard report else { return }
        permit.identifySent(shard: configuration.shard)
        logger.info("identify sent")
    }

    typealias Action = GatewaySessionStateMachine.Action

    /// Performs an action that needs no waiting (a socket write, a connect request, waking fence waiters) and
    /// returns true; returns false for one that must be awaited, which only `perform(_:onEvent:spawn:)` can do.
    func performAtOnce(_ action: Action) -> Bool {
        switch action {
        case .connect:
            connection.withLock { $0.connectRequested = true }
            connectWakeup.poke()
        case .sendHeartbeat(let seq):
            send(.text(GatewayFrame.heartbeat(lastSeq: seq).encoded()))
        case .closeSocket(let code):
            send(.close(code))
        case .stopped:
            // Stopped while a connection was being made: that attempt ends now.
            close(code: GatewaySessionStateMachine.resumableCloseCode)
        case .fenceReached(let seq):
            fenceReached(seq: seq)
        default:
            return false
        }
        return true
    }

    /// For `stop()` and `fence()`, which do not suspend: the inputs they feed only ever give actions that need no
    /// waiting.
    func performWithoutWaiting(_ actions: [Action]) {
        for action in actions where !performAtOnce(action) {
            assertionFailure("\(action) cannot be performed without waiting")
        }
    }

    /// Performs the state machine's actions in order: those that need no waiting at once, the others (the bot's
    /// `onEvent`, token and permit requests) awaited here or, with `spawn`, beside the reader.
    func perform(
        _ actions: [Action],
        onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void,
        spawn: ((@escaping @Sendable () async -> Void) -> Void)?
    ) async {
        for action in actions where !performAtOnce(action) {
            switch action {
            case .connect, .sendHeartbeat, .closeSocket, .stopped, .fenceReached:
                break  // performed at once above
            case .requestIdentifyPermit:
                let task: @Sendable () async -> Void = {
                    do {
                        try await self.permit.acquire(shard: self.configuration.shard)
                        await self.perform(self.feed(.permitGranted), onEvent: onEvent, spawn: nil)
                    } catch is CancellationError {
                    } catch {
                        self.logger.error("no identify permit", metadata: ["error": "\(error)"])
                        self.send(.close(GatewaySessionStateMachine.resumableCloseCode))
                    }
                }
                if let spawn { spawn(task) } else { await task() }
            case .sendIdentify:
                // Beside the reader (it may wait for a token over the network): a close or a stop still reaches
                // the reader while it waits, and ends the wait with the connection.
                let task: @Sendable () async -> Void = {
                    do {
                        let token = try await self.tokens.token()
                        self.send(.identify(GatewayFrame.identify(token: token, intents: self.configuration.intents, shard: self.configuration.shard).encoded()))
                    } catch is CancellationError {
                    } catch {
                        self.logger.error("cannot identify without a token", metadata: ["error": "\(error)"])
                        self.send(.close(GatewaySessionStateMachine.resumableCloseCode))
                    }
                }
                if let spawn { spawn(task) } else { await task() }
            case .sendResume(let sessionID, let seq):
                let task: @Sendable () async -> Void = {
                    do {
                        let token = try await self.tokens.token()
                        self.send(.text(GatewayFrame.resume(token: token, sessionID: sessionID, seq: seq).encoded()))
                        self.logger.info("resume sent", metadata: ["session.seq": "\(seq)"])
                    } catch is CancellationError {
                    } catch {
                        self.logger.error("cannot resume without a token", metadata: ["error": "\(error)"])
                        self.send(.close(GatewaySessionStateMachine.resumableCloseCode))
                    }
                }
                if let spawn { spawn(task) } else { await task() }
            case .ready(let sessionID, let shard):
                if let shard, shard != configuration.shard {
                    logger.warning("READY names another shard", metadata: ["ready.shard": "\(shard)"])
                }
                logger.info("ready", metadata: ["session.id": "\(sessionID)"])
                await onEvent(.ready(sessionID: sessionID, shard: shard))
            case .resumed:
                let (id, seq) = machine.withLock { ($0.sessionID ?? "", $0.lastSeq ?? 0) }
                logger.info("resumed", metadata: ["session.seq": "\(seq)"])
                await onEvent(.resumed(sessionID: id, seq: seq))
            case .dispatch(let frame):
                guard let seq = frame.s, let name = frame.t else { continue }
                _ = feed(.readerBlocked(true))
                await onEvent(.dispatch(GatewayDispatch(seq: seq, name: name, eventID: frame.id, payload: frame.d, receivedAt: .now())))
                _ = feed(.readerBlocked(false))
            case .heartbeatAcknowledged(let latency):
                await onEvent(.heartbeatAcknowledged(latency: latency))
            case .sessionInvalidated:
                logger.info("session invalidated")
                await onEvent(.sessionInvalidated)
            case .invalidateToken:
                await tokens.invalidate()
            case .disconnected(let code, let delay):
                logger.info("disconnected", metadata: ["close.code": "\(code.map(String.init) ?? "none")", "reconnectIn": "\(delay.map(DurationFormat.format) ?? "never")"])
                await onEvent(.disconnected(code: code, reconnectIn: delay))
            case .failed(let reason):
                logger.error("gateway session failed for good", metadata: ["reason": "\(reason)"])
                await onEvent(.failed(reason))
            case .protocolViolation(let message):
                logger.warning("gateway protocol violation", metadata: ["problem": "\(message)"])
            }
        }
    }

    // MARK: one connection

    /// Connects, runs the session over the socket until it closes, and returns the server's close code.
    func connectOnce(onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void) async -> UInt16? {
        let (outgoing, continuation) = AsyncStream<Outgoing>.makeStream()
        connection.withLock { connection in
            connection.outgoing = continuation
            connection.channel = nil
            connection.writing = false
            connection.closeRequested = false
        }
        defer {
            connection.withLock { connection in
                connection.outgoing = nil
                connection.channel = nil
                connection.writing = false
            }
            continuation.finish()
            reportIdentifySent()
        }
        let frames: GatewaySocket.Frames
        do {
            let target = URLTarget(configuration.url)
            frames = try await GatewaySocket.connect(
                url: configuration.url, tls: configuration.tls,
                proxy: target.flatMap { configuration.proxies.route(scheme: $0.scheme, host: $0.host) },
                maxFrameSize: configuration.maxFrameSize, timeout: configuration.session.helloTimeout
            ) { channel in
                let closeNow = self.connection.withLock { connection -> Bool in
                    connection.channel = channel
                    return connection.closeRequested
                }
                if closeNow { channel.close(promise: nil) }
            }
        } catch {
            logger.info("cannot connect to the gateway", metadata: ["error": "\(error)"])
            return nil
        }
        let stillWanted = connection.withLock { connection -> Bool in
            connection.writing = !connection.closeRequested
            return connection.writing
        }
        guard stillWanted else {
            try? await frames.channel.close()
            return nil
        }
        await perform(feed(.connected), onEvent: onEvent, spawn: nil)
        let closeCode = Mutex<UInt16?>(nil)
        do {
            try await frames.executeThenClose { inbound, outbound in
                try await withThrowingTaskGroup(of: Void.self) { connection in
                    // The writer drains what the session sends until its stream is finished (when reading ends),
                    // so that a close frame queued last still goes out.
                    connection.addTask { try await self.write(outgoing, to: outbound, allocator: frames.channel.allocator) }
                    // Work that must not hold up reading (waiting for an identify permit) runs beside the reader
                    // and is cancelled when reading ends.
                    try await withThrowingTaskGroup(of: Void.self) { reading in
                        let (sideWork, sideWorkContinuation) = AsyncStream<@Sendable () async -> Void>.makeStream()
                        defer { sideWorkContinuation.finish() }
                        reading.addTask {
                            for await work in sideWork { await work() }
                        }
                        let spawn: (@escaping @Sendable () async -> Void) -> Void = { work in sideWorkContinuation.yield(work) }
                        defer { reading.cancelAll() }
                        for try await frame in inbound {
                            switch frame.opcode {
                            case .text:
                                let text = String(buffer: frame.unmaskedData)
                                let decoded: GatewayFrame
                                do {
                                    decoded = try GatewayFrame.decode(text)
                                } catch {
                                    self.logger.warning("malformed gateway frame skipped", metadata: ["problem": "\(error)", "frame.prefix": "\(text.prefix(120))"])
                                    continue
                                }
                                await self.perform(self.feed(.frame(decoded)), onEvent: onEvent, spawn: spawn)
                            case .ping:
                                self.send(.pong(frame.unmaskedData))
                            case .connectionClose:
                                var data = frame.unmaskedData
                                let code = data.readInteger(as: UInt16.self)
                                closeCode.withLock { $0 = code }
                                // Answer the server's close (unless ours is already out); the socket closes after.
                                self.close(code: code ?? 1000)
                                return
                            case .binary:
                                self.logger.warning("binary frame from the gateway skipped")
                            default:
                                break
                            }
                        }
                    }
                    continuation.finish()
                    try await connection.waitForAll()
                }
            }
        } catch {
            logger.debug("gateway connection ended", metadata: ["error": "\(error)"])
        }
        return closeCode.withLock { $0 }
    }

    /// Writes what the session sends, in order, until a close frame has gone out or the connection ends.
    func write(_ outgoing: AsyncStream<Outgoing>, to outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>, allocator: ByteBufferAllocator) async throws {
        func frame(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> WebSocketFrame {
            // A client masks every frame (RFC 6455 §5.3).
            WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data)
        }
        for await item in outgoing {
            switch item {
            case .text(let text):
                try await outbound.write(frame(.text, allocator.buffer(string: text)))
            case .identify(let text):
                defer { reportIdentifySent() }
                try await outbound.write(frame(.text, allocator.buffer(string: text)))
            case .pong(let data):
                try await outbound.write(frame(.pong, data))
            case .close(let code):
                var data = allocator.buffer(capacity: 2)
                data.writeInteger(code)
                try await outbound.write(frame(.connectionClose, data))
                return
            }
        }
    }
}
