// The wire between the supervisor and its workers and control commands, as values: what each side may say, with
// no transport in it (the frame codec and the sockets are ClusterIPC's). The supervisor's pure state machines use
// these types without importing an event-loop library.

/// The IPC protocol version; a peer speaking another is refused with a clear error.
public let ipcProtocolVersion: UInt16 = 4

/// Who is on the other end of an IPC connection.
public enum IPCRole: UInt8, Sendable {
    case worker = 1
    /// A `botcluster status/restart/stop/scale` command.
    case control = 2
}

/// The first message of every connection.
public struct Hello: Sendable, Equatable {
    public var version: UInt16
    public var role: IPCRole
    public var ordinal: Int32
    public var generation: UInt64
    public var pid: Int32

    /// A hello of this protocol version; a control client leaves ordinal and generation unset.
    public init(version: UInt16 = ipcProtocolVersion, role: IPCRole, ordinal: Int32 = -1, generation: UInt64 = 0, pid: Int32) {
        self.version = version
        self.role = role
        self.ordinal = ordinal
        self.generation = generation
        self.pid = pid
    }
}

/// What the supervisor tells a worker it is to run.
public struct Assignment: Sendable, Equatable {
    public var shard: Int32
    public var total: Int32
    public var generation: UInt64
    /// The session to resume (its predecessor's), or nil to identify.
    public var resumeSessionID: String?
    public var resumeSeq: Int64
    public var apiBase: String
    public var tokenURL: String
    public var gatewayURL: String
    /// Connect and get ready, but hand no event to the handler until told (a new generation during a rescale).
    public var holdDispatch: Bool

    /// An assignment of shard `shard` of `total` to the worker of `generation`.
    public init(shard: Int32, total: Int32, generation: UInt64, resumeSessionID: String?, resumeSeq: Int64, apiBase: String, tokenURL: String, gatewayURL: String, holdDispatch: Bool) {
        self.shard = shard
        self.total = total
        self.generation = generation
        self.resumeSessionID = resumeSessionID
        self.resumeSeq = resumeSeq
        self.apiBase = apiBase
        self.tokenURL = tokenURL
        self.gatewayURL = gatewayURL
        self.holdDispatch = holdDispatch
    }
}

/// A worker's gateway progress, reported when it changed (the `heartbeat` message, by its historical name).
public struct WorkerProgress: Sendable, Equatable {
    /// The gateway connection's state as the worker sees it.
    public enum State: UInt8, Sendable {
        case connecting = 0, identifying = 1, ready = 2, draining = 3
    }

    public var state: State
    /// Heartbeat-ACK round trip of the gateway, microseconds (-1: none yet).
    public var heartbeatLatencyMicros: Int64
    /// Time since the last dispatch, milliseconds (-1: none yet).
    public var lastEventAgeMillis: Int64
    public var reconnects: Int32
    public var received: Int64
    public var handled: Int64
    public var dispatchP50Micros: Int64
    public var dispatchP99Micros: Int64
    /// The session a successor would resume from (its id and committed seq), carried with the figures so that an
    /// event costs the supervisor one report, not a progress report and a session report.
    public var session: CommittedSession?

    /// A gateway session and the seq up to which every event of it was handled.
    public struct CommittedSession: Sendable, Equatable {
        public var id: String
        public var seq: Int64

        /// The session `id`, committed up to `seq`.
        public init(id: String, seq: Int64) {
            self.id = id
            self.seq = seq
        }
    }

    /// Whether `other` says the same, but for the age of the last event (which grows on its own, and which the
    /// supervisor ages from the time the report came).
    public func sameFigures(as other: WorkerProgress?) -> Bool {
        guard var other else { return false }
        other.lastEventAgeMillis = lastEventAgeMillis
        return other == self
    }

    /// A report in `state`; the figures default to none yet (-1) or zero.
    public init(state: State, heartbeatLatencyMicros: Int64 = -1, lastEventAgeMillis: Int64 = -1, reconnects: Int32 = 0, received: Int64 = 0, handled: Int64 = 0, dispatchP50Micros: Int64 = -1, dispatchP99Micros: Int64 = -1, session: CommittedSession? = nil) {
        self.state = state
        self.heartbeatLatencyMicros = heartbeatLatencyMicros
        self.lastEventAgeMillis = lastEventAgeMillis
        self.reconnects = reconnects
        self.received = received
        self.handled = handled
        self.dispatchP50Micros = dispatchP50Micros
        self.dispatchP99Micros = dispatchP99Micros
        self.session = session
    }
}

/// How a worker's gateway session stands.
public enum GatewayState: Sendable, Equatable {
    case ready(sessionID: String)
    case resumed(sessionID: String)
    case disconnected(code: Int32)
    /// The gateway ended the session for good, with its close code.
    case failed(GatewayFailure, code: Int32)
}

/// Why the gateway ended a session for good.
public enum GatewayFailure: UInt8, Sendable, Equatable {
    /// The configuration was refused (4010, 4012-4014): fix cluster.json.
    case configuration = 1
    /// Too many guilds for the shard count (4011): reshard.
    case reshardRequired = 2
    /// The bot is delisted or banned (4914, 4915).
    case banned = 3
}

/// Every message of the IPC protocol, both ways. Requests carry an `id` their reply repeats.
public enum IPCMessage: Sendable, Equatable {
    case hello(Hello)
    case welcome(Assignment)
    /// The supervisor's answer to a control client's hello.
    case helloAck(supervisorPID: Int32)
    /// The connection is refused (version, role, unknown ordinal); it closes after this.
    case refused(reason: String)
    case heartbeat(WorkerProgress)
    case ping(id: UInt64)
    case pong(id: UInt64)
    case identifyRequest(id: UInt64, shard: Int32)
    case identifyGrant(id: UInt64)
    case identifyDenied(id: UInt64, reason: String)
    case identifySent(shard: Int32)
    /// The worker no longer needs the slot it asked for with `id`.
    case identifyCancel(id: UInt64)
    /// Lease `count` tokens of the REST budget for `route`.
    case budgetRequest(id: UInt64, route: String, count: Int32)
    /// Tokens granted, valid for `ttlMillis`.
    case budgetGrant(id: UInt64, count: Int32, ttlMillis: Int32)
    case budgetCancel(id: UInt64)
    /// Leased tokens not used (a draining worker).
    case budgetReturn(route: String, count: Int32)
    /// The platform answered 429 on `route` (worker to supervisor), or: pause `route` (supervisor to workers).
    case budgetRateLimited(route: String, retryAfterMillis: Int32)
    case budgetPause(route: String, forMillis: Int32)
    /// Users this worker wrote with changed fields (worker to supervisor), or: drop them from the cache (to workers).
    case usersChanged(ids: [String])
    case usersInvalidate(ids: [String])
    /// What a worker's cache serves for a user (a fan-out of the supervisor), and the answer (nil: not cached).
    case userQuery(id: UInt64, userID: String)
    case userAnswer(id: UInt64, username: String?)
    /// What a worker counted since it started (a fan-out of the supervisor at a metrics scrape), and the answer.
    case metricsQuery(id: UInt64)
    case metricsAnswer(id: UInt64, WorkerMetrics)
    /// Claim events before handling them; the reply holds one decision per key.
    case claims(id: UInt64, keys: [String])
    case claimResults(id: UInt64, decisions: [ClaimDecision])
    /// The decision for a key that had to wait.
    case claimResolved(key: String, decision: ClaimDecision)
    /// Handlers finished (their replies left), or did not run to the end.
    case claimsDone(keys: [String])
    case claimsReleased(keys: [String])
    /// Start handing events to the handler (a new generation at a rescale's switch).
    case startDispatch
    /// Handle everything the gateway sent so far, then say so with the same `fence` (the serving layout before a
    /// rescale's switch, and the old one after it): an answer names the request it answers.
    case finishDispatch(fence: UInt64)
    case dispatchFinished(fence: UInt64)
    /// A webhook-mode worker is ready for its shard's events (worker to supervisor).
    case webhookAttach
    /// The shard's event stream from the supervisor's ingress: its id, the seq up to which every event was handled
    /// (the events after it follow), and whether the stream is new (the first worker it ever had).
    case webhookStart(streamID: String, seq: Int64, fresh: Bool)
    /// One event of the stream: its seq there, the platform's event id and type, and the request's body as the
    /// platform sent it (its `d` is the event).
    case webhookDispatch(seq: Int64, eventID: String, name: String, payload: String)
    /// The worker's session and the seq up to which every dispatch is handled.
    case sessionCommitted(sessionID: String, seq: Int64)
    case sessionInvalidated
    case gatewayState(GatewayState)
    /// The worker drained and is about to exit; where its session stands.
    case drained(sessionID: String?, seq: Int64)
    case controlRequest(id: UInt64, command: ControlCommand)
    case controlProgress(id: UInt64, line: String)
    case controlReply(id: UInt64, ok: Bool, body: String)

    /// The id of a request or reply, when it has one.
    public var correlationID: UInt64? {
        switch self {
        case .ping(let id), .pong(let id), .identifyRequest(let id, _), .identifyGrant(let id), .identifyDenied(let id, _), .identifyCancel(let id),
            .budgetRequest(let id, _, _), .budgetGrant(let id, _, _), .budgetCancel(let id), .userQuery(let id, _), .userAnswer(let id, _),
            .metricsQuery(let id), .metricsAnswer(let id, _),
            .claims(let id, _), .claimResults(let id, _),
            .controlRequest(let id, _), .controlProgress(let id, _), .controlReply(let id, _, _):
            return id
        default:
            return nil
        }
    }

    /// A short name for logs.
    public var name: String {
        switch self {
        case .hello: return "hello"
        case .welcome: return "welcome"
        case .helloAck: return "helloAck"
        case .refused: return "refused"
        case .heartbeat: return "heartbeat"
        case .ping: return "ping"
        case .pong: return "pong"
        case .identifyRequest: return "identifyRequest"
        case .identifyGrant: return "identifyGrant"
        case .identifyDenied: return "identifyDenied"
        case .identifySent: return "identifySent"
        case .identifyCancel: return "identifyCancel"
        case .budgetRequest: return "budgetRequest"
        case .budgetGrant: return "budgetGrant"
        case .budgetCancel: return "budgetCancel"
        case .budgetReturn: return "budgetReturn"
        case .budgetRateLimited: return "budgetRateLimited"
        case .budgetPause: return "budgetPause"
        case .claims: return "claims"
        case .claimResults: return "claimResults"
        case .claimResolved: return "claimResolved"
        case .claimsDone: return "claimsDone"
        case .claimsReleased: return "claimsReleased"
        case .startDispatch: return "startDispatch"
        case .finishDispatch: return "finishDispatch"
        case .dispatchFinished: return "dispatchFinished"
        case .webhookAttach: return "webhookAttach"
        case .webhookStart: return "webhookStart"
        case .webhookDispatch: return "webhookDispatch"
        case .usersChanged: return "usersChanged"
        case .usersInvalidate: return "usersInvalidate"
        case .userQuery: return "userQuery"
        case .userAnswer: return "userAnswer"
        case .metricsQuery: return "metricsQuery"
        case .metricsAnswer: return "metricsAnswer"
        case .sessionCommitted: return "sessionCommitted"
        case .sessionInvalidated: return "sessionInvalidated"
        case .gatewayState: return "gatewayState"
        case .drained: return "drained"
        case .controlRequest: return "controlRequest"
        case .controlProgress: return "controlProgress"
        case .controlReply: return "controlReply"
        }
    }
}

