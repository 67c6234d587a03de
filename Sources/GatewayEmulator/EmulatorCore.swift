import ClusterCore
import Foundation
import HTTPTypes
import NIOCore

/// How the server ends a connection.
enum CloseRequest: Equatable {
    /// A websocket close frame with this code, then the socket closes.
    case code(UInt16, String)
    /// The socket closes with no close frame (a dropped connection).
    case drop
}

/// What a connection's writer task does next.
struct OutboxBatch {
    var frames: [ByteBuffer]
    var close: CloseRequest?
}

/// One message the traffic generator made, for the ground-truth counters.
struct MessageRecord {
    enum Kind: UInt8 { case guild, group, c2c }
    var kind: Kind
    /// Guild channel index, group index or user index: where a reply must go.
    var target: Int32
    var generatedAt: Int64
    var deliveredAt: Int64 = 0
    var delivered = false
    /// Disconnected resumable sessions that hold it unsent.
    var holders: UInt16 = 0
    var replies: UInt8 = 0
    var firstReplyAt: Int64 = 0
    /// msg_seq values already used by replies (bit n = seq n, 1...63).
    var usedSeqs: UInt64 = 0
    /// The last four sessions the message was routed to (the newest: retired layouts' sessions, kept resumable,
    /// come first), with its seq in each (both layouts of a rescale get it): what `/emulator/unreplied` tells of a
    /// message nobody answered. Written in turn at `routeCount % 4`.
    var routes = (Route(), Route(), Route(), Route())
    var routeCount: UInt8 = 0

    /// The routes kept, oldest first.
    var lastRoutes: [Route] {
        let all = [routes.0, routes.1, routes.2, routes.3]
        let count = Int(routeCount)
        return count <= 4 ? Array(all.prefix(count)) : (0..<4).map { all[(count + $0) % 4] }
    }

    /// A session (by `EmulatorSession.number`) and the seq a message had in it; session -1: none.
    struct Route {
        var session: Int32 = -1
        var seq: Int32 = 0
    }

    mutating func routed(session: Int32, seq: Int) {
        let route = Route(session: session, seq: Int32(truncatingIfNeeded: seq))
        switch routeCount % 4 {
        case 0: routes.0 = route
        case 1: routes.1 = route
        case 2: routes.2 = route
        default: routes.3 = route
        }
        routeCount &+= routeCount < .max ? 1 : 0
    }
}

/// What became of a session, kept after it ended, for `/emulator/unreplied`.
struct SessionTrace {
    var id: String
    var shard: ShardID
    var identifiedAt: Int64
    var endedAt: Int64?
    var endReason: String?
}

/// A gateway session. A class, mutated in place under the emulator's lock: as a struct in a dictionary, every
/// dispatch would copy its resume ring.
final class EmulatorSession: @unchecked Sendable {  // only touched under the emulator lock
    let id: String
    /// The session's number in identify order (its index in `EmulatorCore.sessionTraces`).
    let number: Int32
    let shard: ShardID
    let intents: Int
    var lastSeq: Int
    /// Frames up to this seq were handed to a socket.
    var sentUpTo: Int
    var ring: FrameRing
    /// The highest seq the ring has evicted: a Resume from below it cannot be served.
    var evictedUpTo = 0
    var connection: Int?
    var disconnectedAt: Int64?

    init(id: String, number: Int32, shard: ShardID, intents: Int, seq: Int, ringCapacity: Int, connection: Int) {
        self.id = id
        self.number = number
        self.shard = shard
        self.intents = intents
        lastSeq = seq
        sentUpTo = seq
        ring = FrameRing(capacity: ringCapacity)
        self.connection = connection
    }
}

/// A websocket connection, mutated in place under the emulator's lock.
final class EmulatorConnection: @unchecked Sendable {  // only touched under the emulator lock
    let id: Int
    var session: String?
    var outbox: [ByteBuffer] = []
    var outboxBytes = 0
    var close: CloseRequest?
    var waiter: CheckedContinuation<OutboxBatch, Never>?
    var lastHeartbeat: Int64
    var acksStopped = false

    init(id: Int, lastHeartbeat: Int64) {
        self.id = id
        self.lastHeartbeat = lastHeartbeat
    }
}

/// Everything the emulator knows, behind one lock. Methods take the current time and return the connections whose
/// writer must wake up; the caller resumes them outside the lock.
struct EmulatorCore {
    var config: EmulatorConfig
    let app: AppConfig
    var world: EmulatorWorld
    /// The traffic generator's: seeded, so that a run's messages can be reproduced.
    var rng: SplitMix64
    /// Tokens, session ids and message ids are random per instance (never derived from the traffic seed): one
    /// instance's cannot be guessed, and no two instances share any.
    var secureRandom = SystemRandomNumberGenerator()
    let messageIDs: MessageIDs
    var stats = EmulatorStats()

    // tokens
    var tokens: [String: Int64] = [:]
    var currentToken: String?

    // identify ledger of the emulated platform
    var lastIdentifyAt: [Int: Int64] = [:]
    var remaining: Int
    var resetAt: Int64
    var refusals: [EmulatorFault] = []

    var sessions: [String: EmulatorSession] = [:]
    /// Session ids in creation order, for routing without hashing on the hot path.
    var sessionOrder: [String] = []
    var connections: [Int: EmulatorConnection] = [:]
    var nextConnectionID = 1

    var messages: [MessageRecord] = []
    /// Every session identified, by number (at most `maxSessionTraces`: later ones are numbered but not traced).
    var sessionTraces: [SessionTrace] = []
    var sessionsIdentified = 0
    static let maxSessionTraces = 1 << 20

    // REST limiter: GCRA with burst = rate (one second's worth)
    var restTAT: Int64 = 0
    var currentSecond: Int64 = -1
    var requestsThisSecond = 0

    // webhook delivery (see EmulatorCore+Webhook)
    var webhookQueue: [WebhookDelivery] = []
    var webhookHead = 0
    var webhookRetries = RetryQueue()
    var webhookSeq = 0
    var webhookQueuedSincePoke = false
    /// The callback URL, and whether it answered op 13 with the right signature.
    var webhookURL: String?
    var webhookValidated = false

    var listeningURL = "ws://127.0.0.1:0/websocket"
    /// When the emulator started: the zero of the stats clock.
    var startedAt: Int64 = 0
    /// The wall clock then (milliseconds since 1970): message timestamps are that plus the monotonic time since.
    let wallClockAtStart: Int64
    var timestampCache: (second: Int64, text: String) = (-1, "")

    static let botUserID = "11853627484521870163"
    static let botUsername = "botcluster-emulator"
    static let botAuthorJSON = "{\"id\":\"\(botUserID)\",\"username\":\"\(botUsername)\",\"bot\":true}"

    /// A fresh platform at `now` (monotonic nanoseconds), when the wall clock reads `wallClockMs`.
    init(config: EmulatorConfig, app: AppConfig, now: Int64, wallClockMs: Int64) {
        self.config = config
        self.app = app
        world = EmulatorWorld(traffic: config.traffic)
        rng = SplitMix64(seed: UInt64(config.traffic.seed))
        messageIDs = MessageIDs(instance: secureRandom.next())
        remaining = config.sessionStartRemaining
        resetAt = now + config.sessionStartResetAfter.nanoseconds
        startedAt = now
        wallClockAtStart = wallClockMs
        stats.sessionStartRemaining = remaining
        webhookURL = config.webhook.url
    }

    /// Milliseconds since the emulator started.
    func clockMs(_ now: Int64) -> Double { Double(now - startedAt) / 1e6 }
}
