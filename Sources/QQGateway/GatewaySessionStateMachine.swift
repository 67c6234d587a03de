import ClusterCore

/// The gateway session logic as a pure state machine: connection events, frames and timer ticks in, actions out.
/// The clock is a parameter, so every path — heartbeats, zombie detection, backoff, close codes — is tested
/// without sockets or sleeping.
public struct GatewaySessionStateMachine: Sendable {
    /// The session's timing: reconnect backoff and jitter, the Hello and handshake timeouts, and the random seed.
    public struct Configuration: Sendable {
        /// Delay before the second consecutive reconnect attempt; doubles per attempt up to `maxBackoff`.
        public var baseBackoff: Duration = .milliseconds(250)
        public var maxBackoff: Duration = .seconds(30)
        /// Fraction of each backoff drawn at random, either way.
        public var jitter: Double = 0.2
        /// How long a socket may take from connect to Hello.
        public var helloTimeout: Duration = .seconds(10)
        /// How long an Identify or Resume may wait for READY / RESUMED.
        public var handshakeTimeout: Duration = .seconds(30)
        public var seed: UInt64 = 1

        /// The default timing.
        public init() {}
    }

    /// Where the session stands; each state carries exactly the data that has a meaning in it.
    public enum State: Sendable, Equatable {
        case idle
        /// A socket is being opened; past `helloBy` the attempt is given up.
        case connecting(helloBy: MonotonicInstant)
        /// The socket is open and the server's Hello has not come yet.
        case awaitingHello(by: MonotonicInstant)
        /// Hello came and no session is stored: heartbeats run while the identify permit is awaited.
        case waitingForPermit(Heartbeat)
        /// Identify is out; READY must come by `readyBy`.
        case identifying(Heartbeat, readyBy: MonotonicInstant)
        /// Resume is out; RESUMED must come by `resumedBy`.
        case resuming(Heartbeat, resumedBy: MonotonicInstant)
        case ready(Heartbeat)
        /// We asked the socket to close; what follows is `then` (nil: we are stopping).
        case closing(then: CloseCodePolicy?)
        case backoff(until: MonotonicInstant)
        case stopped
        case failed(FatalReason)

        /// The state's name for log lines and protocol violations.
        public var name: String {
            switch self {
            case .idle: "idle"
            case .connecting: "connecting"
            case .awaitingHello: "awaiting Hello"
            case .waitingForPermit: "waiting for an identify permit"
            case .identifying: "identifying"
            case .resuming: "resuming"
            case .ready: "ready"
            case .closing: "closing"
            case .backoff: "backing off"
            case .stopped: "stopped"
            case .failed: "failed"
            }
        }

        /// The heartbeat of the connection, from Hello until it closes.
        public var heartbeat: Heartbeat? {
            switch self {
            case .waitingForPermit(let heartbeat), .identifying(let heartbeat, _), .resuming(let heartbeat, _), .ready(let heartbeat):
                heartbeat
            default: nil
            }
        }

        /// The same state with its heartbeat replaced (states without one are unchanged).
        func with(_ heartbeat: Heartbeat) -> State {
            switch self {
            case .waitingForPermit: .waitingForPermit(heartbeat)
            case .identifying(_, let readyBy): .identifying(heartbeat, readyBy: readyBy)
            case .resuming(_, let resumedBy): .resuming(heartbeat, resumedBy: resumedBy)
            case .ready: .ready(heartbeat)
            default: self
            }
        }
    }

    /// The heartbeat of one connection, at the interval its Hello named.
    public struct Heartbeat: Sendable, Equatable {
        public let interval: Duration
        /// When the next heartbeat is due.
        public var nextAt: MonotonicInstant
        /// When the heartbeat still waiting for its ACK went out; nil when every heartbeat has been answered.
        public var unacknowledgedSince: MonotonicInstant?
    }

    /// Why a session ended for good: a configuration error or a delisting or ban (with its close code), or a reshard.
    public enum FatalReason: Sendable, Equatable {
        case configuration(code: UInt16)
        case reshardRequired
        case stopped(code: UInt16)
    }

    /// What the machine is fed: connection events, frames, timer ticks and the owner's requests.
    public enum Input: Sendable, Equatable {
        case start
        case connected
        case frame(GatewayFrame)
        /// The socket closed; the code the server sent, nil when it dropped without one.
        case closed(code: UInt16?)
        case permitGranted
        case tick
        /// The reader is blocked on the bot's backpressure (ACKs cannot be read), or no longer blocked.
        case readerBlocked(Bool)
        /// Close with a resumable close and stop.
        case stop
        /// Mark where the stream stands: a heartbeat goes out now (or as soon as the session is ready), and its ACK
        /// — which the gateway writes after every dispatch it had queued before — reaches `fenceReached`.
        case fence
    }

    /// What the machine asks its driver to do, in the order given.
    public enum Action: Sendable, Equatable {
        case connect
        case requestIdentifyPermit
        case sendIdentify
        case sendResume(sessionID: String, seq: Int)
        case sendHeartbeat(seq: Int?)
        /// Close the socket with this code (non-1000 keeps the session resumable).
        case closeSocket(code: UInt16)
        case ready(sessionID: String, shard: ShardID?)
        case resumed
        case dispatch(GatewayFrame)
        case heartbeatAcknowledged(latency: Duration)
        /// The session is gone (op 9, identify-class close): the stored session must be forgotten.
        case sessionInvalidated
        case invalidateToken
        /// A connection ended; the counts of reconnects and the reason feed gateway progress reports.
        case disconnected(code: UInt16?, reconnectIn: Duration?)
        case stopped
        case failed(FatalReason)
        /// A frame that broke the protocol (logged by the driver; the session carries on or resumes).
        case protocolViolation(String)
        /// Every dispatch the gateway had queued when the fence was asked for has been received; `seq` is the last
        /// `s` by then (nil: no session). Also given when the client stops or fails with a fence pending.
        case fenceReached(seq: Int?)
    }

    enum Fence: Equatable {
        case none
        /// Asked for; its heartbeat goes out once the session is ready.
        case pending
        /// Its heartbeat is out: the fence is reached at the `acks`-th ACK from now (2 when an earlier heartbeat
        /// was still unanswered).
        case sent(acks: Int)
    }

    /// The close code we use when we close: not 1000, so the session stays resumable.
    public static let resumableCloseCode: UInt16 = 4000

    public private(set) var state: State = .idle
    /// The session to resume; it outlives connections.
    public private(set) var sessionID: String?
    /// The last `s` received.
    public private(set) var lastSeq: Int?
    public private(set) var reconnects = 0
    /// The reader waits on the bot's backpressure, so ACKs cannot be read: a missing ACK is no zombie then.
    var readerBlocked = false
    /// Consecutive connection attempts that did not reach READY/RESUMED.
    var failedAttempts = 0
    /// An identify permit granted while no connection was waiting for it, kept for the next Hello.
    var permitHeld = false
    var stopRequested = false
    var fence = Fence.none
    let configuration: Configuration
    var rng: SplitMix64

    /// A machine in `.idle`; with `session`, it resumes that session instead of identifying.
    public init(configuration: Configuration = .init(), resuming session: (id: String, seq: Int)? = nil) {
        self.configuration = configuration
        rng = SplitMix64(seed: configuration.seed)
        if let session {
            sessionID = session.id
            lastSeq = session.seq
        }
    }

    /// The earliest moment a `.tick` has something to do.
    public var nextDeadline: MonotonicInstant? {
        switch state {
        case .backoff(let until): until
        case .connecting(let deadline), .awaitingHello(let deadline): deadline
        case .waitingForPermit(let heartbeat), .ready(let heartbeat): heartbeat.nextAt
        case .identifying(let heartbeat, let deadline), .resuming(let heartbeat, let deadline): min(heartbeat.nextAt, deadline)
        case .idle, .closing, .stopped, .failed: nil
        }
    }

    /// Whether the session is READY (or RESUMED) on an open connection.
    public var isReady: Bool {
        if case .ready = state { return true }
        return false
    }

    /// Feeds one input at `now` and returns what the driver must do, in order.
    public mutating func handle(_ input: Input, now: MonotonicInstant) -> [Action] {
        switch input {
        case .start:
            guard case .idle = state else { return [] }
            return connect(now)
        case .stop:
            stopRequested = true
            switch state {
            case .idle, .backoff, .connecting:
                state = .stopped
                return [.stopped] + fenceEnded()
            case .stopped, .failed, .closing:
                return []
            case .awaitingHello, .waitingForPermit, .identifying, .resuming, .ready:
                state = .closing(then: nil)
                return [.closeSocket(code: Self.resumableCloseCode)]
            }
        case .connected:
            guard case .connecting = state else { return [] }
            state = .awaitingHello(by: now + configuration.helloTimeout)
            return []
        case .permitGranted:
            permitHeld = true
            guard case .waitingForPermit(let heartbeat) = state else { return [] }
            permitHeld = false
            state = .identifying(heartbeat, readyBy: now + configuration.handshakeTimeout)
            return [.sendIdentify]
        case .readerBlocked(let blocked):
            readerBlocked = blocked
            return []
        case .frame(let frame):
            return handleFrame(frame, now: now)
        case .closed(let code):
            return handleClosed(code, now: now)
        case .tick:
            return handleTick(now)
        case .fence:
            switch state {
            case .stopped, .failed:
                return [.fenceReached(seq: lastSeq)]
            case .ready:
                return sendFence(now)
            default:
                if fence == .none { fence = .pending }
                return []
            }
        }
    }

    mutating func sendFence(_ now: MonotonicInstant) -> [Action] {
        fence = .sent(acks: state.heartbeat?.unacknowledgedSince != nil ? 2 : 1)
        return sendHeartbeat(now)
    }

    /// The client will receive nothing more: a pending fence is reached where the stream ended.
    mutating func fenceEnded() -> [Action] {
        guard fence != .none else { return [] }
        fence = .none
        return [.fenceReached(seq: lastSeq)]
    }

    /// The session is ready again (READY or RESUMED, after everything replayed): a fence waiting for it goes out.
    mutating func fenceAfterReady(_ now: MonotonicInstant) -> [Action] {
        fence == .pending ? sendFence(now) : []
    }

    mutating func connect(_ now: MonotonicInstant) -> [Action] {
        state = .connecting(helloBy: now + configuration.helloTimeout)
        return [.connect]
    }

    mutating func handleFrame(_ frame: GatewayFrame, now: MonotonicInstant) -> [Action] {
        switch frame.opcode {
        case .hello:
            guard case .awaitingHello = state else { return [.protocolViolation("Hello while \(state.name)")] }
            guard let ms = frame.d["heartbeat_interval"]?.intValue, ms > 0 else {
                return closeOwn(.resume, violation: "Hello without a positive heartbeat_interval")
            }
            let interval = Duration.milliseconds(ms)
            // The first heartbeat is jittered so that shards started together do not beat in step.
            let fraction = Double(rng.next() % 1_000_000) / 1_000_000
            let heartbeat = Heartbeat(interval: interval, nextAt: now + .nanoseconds(Int64(Double(interval.nanoseconds) * fraction)))
            if let sessionID {
                state = .resuming(heartbeat, resumedBy: now + configuration.handshakeTimeout)
                return [.sendResume(sessionID: sessionID, seq: lastSeq ?? 0)]
            }
            if permitHeld {
                permitHeld = false
                state = .identifying(heartbeat, readyBy: now + configuration.handshakeTimeout)
                return [.sendIdentify]
            }
            state = .waitingForPermit(heartbeat)
            return [.requestIdentifyPermit]
        case .heartbeatAck:
            var actions: [Action] = []
            if var heartbeat = state.heartbeat, let sent = heartbeat.unacknowledgedSince {
                heartbeat.unacknowledgedSince = nil
                state = state.with(heartbeat)
                actions.append(.heartbeatAcknowledged(latency: now - sent))
            }
            if case .sent(let acks) = fence {
                if acks > 1 {
                    fence = .sent(acks: acks - 1)
                } else {
                    fence = .none
                    actions.append(.fenceReached(seq: lastSeq))
                }
            }
            return actions
        case .reconnect:
            return closeOwn(.resume, violation: nil)
        case .invalidSession:
            sessionID = nil
            lastSeq = nil
            return closeOwn(.identify, violation: nil) + [.sessionInvalidated]
        case .dispatch:
            guard let seq = frame.s, let name = frame.t else { return [.protocolViolation("dispatch without s or t")] }
            if let last = lastSeq { lastSeq = max(last, seq) } else { lastSeq = seq }
            switch name {
            case "READY":
                guard case .identifying(let heartbeat, _) = state else { return [.protocolViolation("READY while \(state.name)")] }
                guard let id = frame.d["session_id"]?.stringValue else {
                    return closeOwn(.identify, violation: "READY without session_id")
                }
                sessionID = id
                state = .ready(heartbeat)
                failedAttempts = 0
                var shard: ShardID?
                if case .array(let parts) = frame.d["shard"], parts.count == 2, let a = parts[0].intValue, let b = parts[1].intValue {
                    shard = ShardID(a, of: b)
                }
                return [.ready(sessionID: id, shard: shard)] + fenceAfterReady(now)
            case "RESUMED":
                guard case .resuming(let heartbeat, _) = state else { return [.protocolViolation("RESUMED while \(state.name)")] }
                state = .ready(heartbeat)
                failedAttempts = 0
                return [.resumed] + fenceAfterReady(now)
            default:
                return [.dispatch(frame)]
            }
        case .heartbeat:
            // The server asks for a heartbeat now.
            return sendHeartbeat(now)
        case .identify, .resume, .httpCallbackAck, .callbackValidation, nil:
            return [.protocolViolation("unexpected op \(frame.op) from the server")]
        }
    }

    /// Sends a heartbeat; on a connection past Hello it is the one whose ACK is awaited, and the next is due an
    /// interval from now.
    mutating func sendHeartbeat(_ now: MonotonicInstant) -> [Action] {
        if var heartbeat = state.heartbeat {
            heartbeat.unacknowledgedSince = now
            heartbeat.nextAt = now + heartbeat.interval
            state = state.with(heartbeat)
        }
        return [.sendHeartbeat(seq: lastSeq)]
    }

    /// We close the socket ourselves; `then` says what to do once it is closed.
    mutating func closeOwn(_ then: CloseCodePolicy, violation: String?) -> [Action] {
        state = .closing(then: then)
        var actions: [Action] = []
        if let violation { actions.append(.protocolViolation(violation)) }
        actions.append(.closeSocket(code: Self.resumableCloseCode))
        return actions
    }

    mutating func handleTick(_ now: MonotonicInstant) -> [Action] {
        switch state {
        case .backoff(let until):
            guard now >= until else { return [] }
            return connect(now)
        case .connecting(let helloBy):
            return now >= helloBy ? closeOwn(.resume, violation: nil) : []
        case .awaitingHello(let deadline):
            return now >= deadline ? closeOwn(.resume, violation: "no Hello within \(DurationFormat.format(configuration.helloTimeout))") : []
        case .identifying(_, let readyBy) where now >= readyBy:
            return closeOwn(.identify, violation: "no READY within \(DurationFormat.format(configuration.handshakeTimeout))")
        case .resuming(_, let resumedBy) where now >= resumedBy:
            return closeOwn(.resume, violation: "no RESUMED within \(DurationFormat.format(configuration.handshakeTimeout))")
        case .waitingForPermit(let heartbeat), .identifying(let heartbeat, _), .resuming(let heartbeat, _), .ready(let heartbeat):
            guard now >= heartbeat.nextAt else { return [] }
            if heartbeat.unacknowledgedSince != nil && !readerBlocked {
                // No ACK for the last heartbeat before the next one is due: the connection is a zombie.
                return closeOwn(.resume, violation: "no heartbeat ACK within \(DurationFormat.format(heartbeat.interval)): zombie connection")
            }
            return sendHeartbeat(now)
        case .idle, .closing, .stopped, .failed:
            return []
        }
    }

    mutating func handleClosed(_ code: UInt16?, now: MonotonicInstant) -> [Action] {
        // A fence whose ACK can no longer come goes out again on the next connection.
        if case .sent = fence { fence = .pending }
        if case .stopped = state { return [] }
        if case .failed = state { return [] }
        if stopRequested {
            state = .stopped
            return [.disconnected(code: code, reconnectIn: nil), .stopped] + fenceEnded()
        }
        // Our own close decides; otherwise the server's code does.
        let policy: CloseCodePolicy
        if case .closing(let then?) = state {
            policy = then
        } else {
            policy = CloseCodePolicy.forCode(code)
        }
        var actions: [Action] = []
        switch policy {
        case .fatalConfiguration, .reshardRequired, .stop:
            let reason: FatalReason = policy == .reshardRequired ? .reshardRequired
                : policy == .stop ? .stopped(code: code ?? 0) : .configuration(code: code ?? 0)
            state = .failed(reason)
            return [.disconnected(code: code, reconnectIn: nil), .failed(reason)] + fenceEnded()
        case .identify, .refreshTokenAndIdentify:
            if sessionID != nil {
                sessionID = nil
                lastSeq = nil
                actions.append(.sessionInvalidated)
            }
            if policy == .refreshTokenAndIdentify { actions.append(.invalidateToken) }
        case .resume, .resumeAfterBackoff:
            break
        }
        reconnects += 1
        var delay = backoff()
        if policy == .resumeAfterBackoff { delay = max(delay, configuration.baseBackoff) }
        failedAttempts += 1
        actions.append(.disconnected(code: code, reconnectIn: delay))
        if delay == .zero {
            actions += connect(now)
        } else {
            state = .backoff(until: now + delay)
        }
        return actions
    }

    /// Jittered exponential backoff: none for the first attempt, then base, 2 x base, ... up to the cap.
    mutating func backoff() -> Duration {
        guard failedAttempts > 0 else { return .zero }
        let exponent = min(failedAttempts - 1, 20)
        let raw = min(Double(configuration.baseBackoff.nanoseconds) * pow2(exponent), Double(configuration.maxBackoff.nanoseconds))
        let spread = (Double(rng.next() % 2_000_001) / 1_000_000 - 1) * configuration.jitter
        return .nanoseconds(Int64(max(0, raw * (1 + spread))))
    }
}

func pow2(_ n: Int) -> Double {
    var result = 1.0
    for _ in 0..<n { result *= 2 }
    return result
}
