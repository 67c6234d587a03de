import ClusterCore
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import Synchronization
import WSClient

/// One dispatch as the gateway delivered it: protocol-level, decoded into a typed event by the runtime.
public struct GatewayDispatch: Sendable {
    public var seq: Int
    public var name: String
    /// The envelope's event id (`id`), when the platform sent one.
    public var eventID: String?
    public var payload: JSONValue
    public var receivedAt: MonotonicInstant
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
public final class GatewayClient: Sendable {
    public struct Configuration: Sendable {
        /// The gateway's websocket URL (from `/gateway/bot`).
        public var url: String
        public var shard: ShardID
        public var intents: GatewayIntents
        public var session = GatewaySessionStateMachine.Configuration()
        /// A session to resume instead of identifying (from a predecessor).
        public var resume: (id: String, seq: Int)?
        public var maxFrameSize = 1 << 22

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
        case close(UInt16)
    }

    struct Connection: Sendable {
        var outgoing: AsyncStream<Outgoing>.Continuation?
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
        let actions = feed(.stop)
        perform(actionsWithoutAwaiting: actions)
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
            perform(actionsWithoutAwaiting: feed(.fence))
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

    func feed(_ input: GatewaySessionStateMachine.Input) -> [GatewaySessionStateMachine.Action] {
        let (actions, deadlineMoved) = machine.withLock { machine -> ([GatewaySessionStateMachine.Action], Bool) in
            let before = machine.nextDeadline
            let actions = machine.handle(input, now: .now())
            return (actions, machine.nextDeadline != before)
        }
        if deadlineMoved { timerWakeup.poke() }
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
        connection.withLock { connection in
            guard let outgoing = connection.outgoing else { return }
            if case .identify = item { connection.identifyUnreported = true }
            outgoing.yield(item)
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

    /// Performs what cannot wait (socket writes, connect requests) without suspending.
    func perform(actionsWithoutAwaiting actions: [GatewaySessionStateMachine.Action]) {
        for action in actions {
            switch action {
            case .closeSocket(let code): send(.close(code))
            case .sendHeartbeat(let seq): send(.text(GatewayFrame.heartbeat(lastSeq: seq).encoded()))
            case .fenceReached(let seq): fenceReached(seq: seq)
            case .connect:
                connection.withLock { $0.connectRequested = true }
                connectWakeup.poke()
            default: break
            }
        }
    }

    func perform(
        _ actions: [GatewaySessionStateMachine.Action],
        onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void,
        spawn: ((@escaping @Sendable () async -> Void) -> Void)?
    ) async {
        for action in actions {
            switch action {
            case .connect:
                connection.withLock { $0.connectRequested = true }
                connectWakeup.poke()
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
                do {
                    let token = try await tokens.token()
                    send(.identify(GatewayFrame.identify(token: token, intents: configuration.intents, shard: configuration.shard).encoded()))
                } catch {
                    logger.error("cannot identify without a token", metadata: ["error": "\(error)"])
                    send(.close(GatewaySessionStateMachine.resumableCloseCode))
                }
            case .sendResume(let sessionID, let seq):
                do {
                    let token = try await tokens.token()
                    send(.text(GatewayFrame.resume(token: token, sessionID: sessionID, seq: seq).encoded()))
                    logger.info("resume sent", metadata: ["session.seq": "\(seq)"])
                } catch {
                    logger.error("cannot resume without a token", metadata: ["error": "\(error)"])
                    send(.close(GatewaySessionStateMachine.resumableCloseCode))
                }
            case .sendHeartbeat(let seq):
                send(.text(GatewayFrame.heartbeat(lastSeq: seq).encoded()))
            case .closeSocket(let code):
                send(.close(code))
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
            case .stopped:
                break
            case .fenceReached(let seq):
                fenceReached(seq: seq)
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
        connection.withLock { $0.outgoing = continuation }
        defer {
            connection.withLock { $0.outgoing = nil }
            continuation.finish()
            reportIdentifySent()
        }
        var wsConfiguration = WebSocketClientConfiguration()
        wsConfiguration.maxFrameSize = configuration.maxFrameSize
        wsConfiguration.closeTimeout = .milliseconds(500)
        wsConfiguration.autoPing = .disabled
        var wsLogger = logger
        wsLogger.logLevel = max(logger.logLevel, .notice)
        do {
            let closeFrame = try await WebSocketClient.connect(url: configuration.url, configuration: wsConfiguration, logger: wsLogger) { inbound, outbound, _ in
                await self.perform(self.feed(.connected), onEvent: onEvent, spawn: nil)
                // Work that must not hold up reading (waiting for an identify permit) runs beside the reader and
                // ends with the connection.
                let (sideWork, sideWorkContinuation) = AsyncStream<@Sendable () async -> Void>.makeStream()
                defer { sideWorkContinuation.finish() }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await work in sideWork { await work() }
                    }
                    group.addTask {
                        for await item in outgoing {
                            switch item {
                            case .text(let text):
                                try await outbound.write(.text(text))
                            case .identify(let text):
                                defer { self.reportIdentifySent() }
                                try await outbound.write(.text(text))
                            case .close(let code):
                                try await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: nil)
                                return
                            }
                        }
                    }
                    let spawn: (@escaping @Sendable () async -> Void) -> Void = { work in sideWorkContinuation.yield(work) }
                    for try await message in inbound.messages(maxSize: self.configuration.maxFrameSize) {
                        guard case .text(let text) = message else {
                            self.logger.warning("binary frame from the gateway skipped")
                            continue
                        }
                        let frame: GatewayFrame
                        do {
                            frame = try GatewayFrame.decode(text)
                        } catch {
                            self.logger.warning("malformed gateway frame skipped", metadata: ["problem": "\(error)", "frame.prefix": "\(text.prefix(120))"])
                            continue
                        }
                        await self.perform(self.feed(.frame(frame)), onEvent: onEvent, spawn: spawn)
                    }
                    group.cancelAll()
                }
            }
            return closeFrame.map { UInt16(webSocketErrorCode: $0.closeCode) }
        } catch {
            logger.debug("gateway connection ended", metadata: ["error": "\(error)"])
            return nil
        }
    }
}
