/// The emulator's ground truth, as `GET /emulator/stats` returns it.
public struct EmulatorStats: Codable, Sendable, Equatable {
    /// Identify frames accepted (sessions started).
    public var identifies: Int = 0
    /// Identify frames that broke the per-bucket window or the daily limit (closed with 4008).
    public var identifyViolations: Int = 0
    /// Resume frames accepted.
    public var resumes: Int = 0
    /// Resume frames refused with op 9.
    public var resumesRefused: Int = 0
    /// Sessions with a live socket now.
    public var activeSessions: Int = 0
    /// Sessions that can still be resumed (live or disconnected within their time to live).
    public var resumableSessions: Int = 0
    /// Dispatch frames written to sockets, replays included.
    public var dispatched: Int = 0
    /// Messages the traffic generator created (guild, group and C2C).
    public var messagesGenerated: Int = 0
    /// Messages that reached no live or resumable session.
    public var messagesUndelivered: Int = 0
    /// Messages held by a disconnected, resumable session and not yet sent.
    public var messagesPending: Int = 0
    /// Messages sent to at least one session.
    public var messagesDelivered: Int = 0
    /// Delivered messages with at least one reply.
    public var messagesReplied: Int = 0
    /// Delivered messages with more than one accepted reply.
    public var messagesRepliedMoreThanOnce: Int = 0
    /// Delivered messages with no reply, older than the grace period.
    public var messagesUnreplied: Int = 0
    /// Replies refused because their msg_id + msg_seq was already used (the platform's own de-duplication).
    public var repliesRefusedDuplicateSeq: Int = 0
    /// Authenticated OpenAPI requests, accepted or not.
    public var restRequests: Int = 0
    /// Requests answered 429.
    public var rateLimited: Int = 0
    /// The most requests accepted within one wall-clock second.
    public var peakRequestsPerSecond: Int = 0
    /// Access tokens issued.
    public var tokensIssued: Int = 0
    /// Frames from clients that broke the protocol (bad JSON, unknown op, ...).
    public var protocolErrors: Int = 0
    /// Connections closed because their client left more than the outbox bound unread.
    public var slowConsumersClosed: Int = 0
    /// Admin API calls refused (no admin token configured, or a wrong one).
    public var adminRefused: Int = 0
    /// Users renamed by the traffic generator.
    public var renames: Int = 0
    /// Messages pushed twice on purpose (duplicateShare).
    public var duplicatePushes: Int = 0
    /// Sessions started (identified or resumed) for a shard while another connection still held a live session of
    /// the same shard: two live sessions for one shard at once. A cluster that fences correctly never makes one.
    public var sessionOverlaps: Int = 0
    /// Webhook delivery: POSTs of dispatches made (first deliveries and retries).
    public var webhookPosts: Int = 0
    /// POSTs the bot acknowledged (op 12, d 0, with a 2xx status).
    public var webhookAcked: Int = 0
    /// POSTs not acknowledged (another status, d 1, no answer in time).
    public var webhookNotAcked: Int = 0
    /// Deliveries scheduled again after one was not acknowledged (same id).
    public var webhookRetries: Int = 0
    /// Events given up after `retryLimit` retries.
    public var webhookGaveUp: Int = 0
    /// Events waiting for a first POST or a retry.
    public var webhookWaiting: Int = 0
    /// op 13 validations the bot answered correctly, and ones refused (a wrong signature or token, no answer).
    public var webhookValidations: Int = 0
    public var webhookValidationsRefused: Int = 0
    /// Daily session starts left.
    public var sessionStartRemaining: Int = 0
    /// Milliseconds since the emulator started, now (the clock of the two fields below).
    public var clockMs: Double = 0
    /// When the last reply was recorded, and when the last burst began, in that clock (0 = never).
    public var lastReplyAtMs: Double = 0
    public var lastBurstAtMs: Double = 0
    /// When the last Resume was answered with RESUMED, in that clock (0 = never).
    public var lastResumeAtMs: Double = 0

    /// All counters at zero.
    public init() {}
}

/// How long the messages of a stretch of time waited for their first reply (`GET /emulator/latency`).
public struct ReplyLatency: Codable, Sendable, Equatable {
    /// Messages generated in the stretch.
    public var messages: Int
    /// Of those, how many have no reply (yet).
    public var unreplied: Int
    public var p50Ms: Double
    public var p99Ms: Double
    public var maxMs: Double
}

/// The messages delivered and never replied (past the grace), and those never delivered because every session that
/// held them ended, with where each went (`GET /emulator/unreplied`):
/// which session of which shard got it at which seq, and what became of that session. What a failed chaos run
/// prints, to tie a lost message to a worker.
public struct UnrepliedTrace: Codable, Sendable, Equatable {
    /// One session a message was routed to.
    public struct Route: Codable, Sendable, Equatable {
        /// The session's number in identify order, and the first 8 characters of its id.
        public var session: Int
        public var sessionID: String
        /// `i/N`.
        public var shard: String
        /// The message's seq in the session, and the session's last seq and the last one handed to a socket.
        public var seq: Int
        public var lastSeq: Int?
        public var sentUpTo: Int?
        /// `connected`, `disconnected Xms` (since, on the stats clock) or `ended Xms: reason`.
        public var state: String
    }

    /// One message nobody answered.
    public struct Message: Codable, Sendable, Equatable {
        public var id: String
        public var kind: String
        public var generatedMs: Double
        public var deliveredMs: Double
        /// The last four sessions it was routed to, oldest first (`routedTo` counts them all).
        public var routes: [Route]
        public var routedTo: Int
    }

    /// Every unreplied message, and the first `limit` of them.
    public var count: Int
    public var messages: [Message]
    /// Every message no session delivered before the sessions that held it ended, and the first `limit` of them
    /// (their `deliveredMs` is 0).
    public var undeliveredCount: Int = 0
    public var undelivered: [Message] = []
    /// The messages made while no session covered their shard (before the cluster was up, say): never routed.
    public var unroutedCount: Int = 0
}
