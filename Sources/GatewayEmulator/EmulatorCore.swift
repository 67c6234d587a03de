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
}

/// A gateway session. A class, mutated in place under the emulator's lock: as a struct in a dictionary, every
/// dispatch would copy its resume ring.
final class EmulatorSession: @unchecked Sendable {  // only touched under the emulator lock
    let id: String
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

    init(id: String, shard: ShardID, intents: Int, seq: Int, ringCapacity: Int, connection: Int) {
        self.id = id
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

/// A fault the admin API asked for.
public struct EmulatorFault: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case reconnect, invalidSession, drop, stopAcks, close, refuseIdentify, allowIdentify
        /// Sends malformed frames (bad JSON, an unknown op, a dispatch without s, a wrong-typed field) to test clients.
        case badFrames
    }
    public var kind: Kind
    /// Shard id to hit; nil hits every session.
    public var shard: Int?
    /// Layout (shard total) to hit; nil hits every layout.
    public var total: Int?
    /// Close code for `close` and `refuseIdentify`.
    public var code: UInt16?

    public init(kind: Kind, shard: Int? = nil, total: Int? = nil, code: UInt16? = nil) {
        self.kind = kind
        self.shard = shard
        self.total = total
        self.code = code
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

    // REST limiter: GCRA with burst = rate (one second's worth)
    var restTAT: Int64 = 0
    var currentSecond: Int64 = -1
    var requestsThisSecond = 0

    var listeningURL = "ws://127.0.0.1:0/websocket"
    /// When the emulator started: the zero of the stats clock.
    var startedAt: Int64 = 0
    var timestampCache: (second: Int64, text: String) = (-1, "")

    static let botUserID = "11853627484521870163"
    static let botUsername = "botcluster-emulator"
    static let botAuthorJSON = "{\"id\":\"\(botUserID)\",\"username\":\"\(botUsername)\",\"bot\":true}"

    init(config: EmulatorConfig, app: AppConfig, now: Int64) {
        self.config = config
        self.app = app
        world = EmulatorWorld(traffic: config.traffic)
        rng = SplitMix64(seed: UInt64(config.traffic.seed))
        messageIDs = MessageIDs(instance: secureRandom.next())
        remaining = config.sessionStartRemaining
        resetAt = now + config.sessionStartResetAfter.nanoseconds
        startedAt = now
        stats.sessionStartRemaining = remaining
    }

    // MARK: tokens

    enum TokenResult {
        case issued(token: String, expiresIn: Int)
        case refused(code: Int, message: String)
    }

    mutating func issueToken(appID: String?, secret: String?, now: Int64) -> TokenResult {
        guard let appID, let secret else {
            return .refused(code: 100_016, message: "appId and clientSecret are required")
        }
        guard appID == app.id, secret == app.secret.reveal() else {
            return .refused(code: 100_016, message: "invalid appid or secret")
        }
        tokens = tokens.filter { $0.value > now }
        let lifetime = config.tokenLifetime.nanoseconds
        // The same token until its last 60 s; then a new one, the old one staying valid until it expires.
        if let token = currentToken, let expiry = tokens[token], expiry - now > min(60_000_000_000, lifetime / 2) {
            return .issued(token: token, expiresIn: Int((expiry - now) / 1_000_000_000))
        }
        let token = hex(secureRandom.next(), width: 16) + hex(secureRandom.next(), width: 16)
        tokens[token] = now + lifetime
        currentToken = token
        stats.tokensIssued += 1
        return .issued(token: token, expiresIn: Int(lifetime / 1_000_000_000))
    }

    /// Whether a token (with or without its "QQBot " prefix) is valid now.
    func tokenValid(_ raw: String, now: Int64) -> Bool {
        var token = Substring(raw)
        if token.hasPrefix("QQBot ") { token = token.dropFirst(6) }
        guard let expiry = tokens[String(token)] else { return false }
        return expiry > now
    }

    /// Checks an Authorization header: `QQBot <token>` or the legacy `Bot <appid>.<token>`.
    func authorize(_ header: String?, now: Int64) -> Bool {
        guard let header else { return false }
        if header.hasPrefix("QQBot ") { return tokenValid(String(header.dropFirst(6)), now: now) }
        if header.hasPrefix("Bot ") {
            let rest = header.dropFirst(4)
            guard let dot = rest.firstIndex(of: ".") else { return false }
            return rest[..<dot] == app.id && tokenValid(String(rest[rest.index(after: dot)...]), now: now)
        }
        return false
    }

    // MARK: REST limit

    /// Authorizes a request and spends the REST limit; the error to answer, or nil when admitted.
    mutating func admit(_ authorization: String?, now: Int64) -> PlatformError? {
        guard authorize(authorization, now: now) else {
            return PlatformError(status: .unauthorized, code: 11244, message: "token invalid or expired")
        }
        guard let retryAfter = admitRequest(now: now) else { return nil }
        return PlatformError(
            status: .tooManyRequests, code: 22009, message: "request rate limit exceeded",
            headers: [.retryAfter: String(retryAfter)]
        )
    }

    /// Takes one request from the global REST limit; returns nil when accepted, else the seconds to wait.
    mutating func admitRequest(now: Int64) -> Int? {
        stats.restRequests += 1
        let interval = Int64(1e9 / config.restRate)
        let burst = max(1, Int64(config.restRate.rounded(.down))) * interval
        let tat = max(restTAT, now)
        if tat - now + interval > burst {
            stats.rateLimited += 1
            let wait = Double(tat + interval - burst - now) / 1e9
            return max(1, Int(wait.rounded(.up)))
        }
        restTAT = tat + interval
        let second = Int64(wallClockMilliseconds() / 1000)
        if second != currentSecond {
            currentSecond = second
            requestsThisSecond = 0
        }
        requestsThisSecond += 1
        stats.peakRequestsPerSecond = max(stats.peakRequestsPerSecond, requestsThisSecond)
        return nil
    }

    // MARK: replies

    enum ReplyResult {
        case accepted
        case unknownMessage
        case wrongTarget
        case duplicateSeq
        case tooManyReplies
    }

    /// Records a passive reply to message `msgID` sent to `target` of `kind`.
    mutating func recordReply(msgID: String, kind: MessageRecord.Kind, target: Int, msgSeq: Int?) -> ReplyResult {
        guard let index = messageIDs.index(of: msgID), index < messages.count else { return .unknownMessage }
        var record = messages[index]
        guard record.kind == kind, Int(record.target) == target else { return .wrongTarget }
        if kind != .guild {
            let seq = msgSeq ?? 1
            if (1...63).contains(seq) {
                let bit = UInt64(1) << UInt64(seq)
                if record.usedSeqs & bit != 0 {
                    stats.repliesRefusedDuplicateSeq += 1
                    return .duplicateSeq
                }
                record.usedSeqs |= bit
            }
        }
        guard record.replies < 5 else { return .tooManyReplies }
        let now = MonotonicInstant.now().nanoseconds
        if record.replies == 0 { record.firstReplyAt = now }
        record.replies += 1
        messages[index] = record
        stats.lastReplyAtMs = clockMs(now)
        return .accepted
    }

    /// Reply latency (generated -> first reply) of the messages generated in [fromMs, untilMs) of the stats clock.
    func replyLatency(fromMs: Double, untilMs: Double) -> ReplyLatency {
        let from = startedAt + Int64(fromMs * 1e6), until = startedAt + Int64(untilMs * 1e6)
        // Records are appended as they are generated: the window is one contiguous run.
        var low = 0, high = messages.count
        while low < high {
            let mid = (low + high) / 2
            if messages[mid].generatedAt < from { low = mid + 1 } else { high = mid }
        }
        var latencies: [Int64] = []
        var unreplied = 0
        var index = low
        while index < messages.count, messages[index].generatedAt < until {
            let record = messages[index]
            if record.replies > 0 { latencies.append(record.firstReplyAt - record.generatedAt) } else { unreplied += 1 }
            index += 1
        }
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return Double(latencies[min(latencies.count - 1, Int((Double(latencies.count) * p).rounded(.up)) - 1)]) / 1e6
        }
        return ReplyLatency(messages: index - low, unreplied: unreplied, p50Ms: percentile(0.5), p99Ms: percentile(0.99), maxMs: percentile(1))
    }

    // MARK: connections

    mutating func openConnection(now: Int64) -> Int {
        let id = nextConnectionID
        nextConnectionID += 1
        connections[id] = EmulatorConnection(id: id, lastHeartbeat: now)
        return id
    }

    /// The most bytes a connection's outbox holds: a client that stops reading is closed (4009, resumable, as the
    /// platform closes a slow consumer) instead of growing the emulator's memory without end. Far above a burst
    /// that a reading client drains (20,000 messages are about 14 MB).
    static let maxOutboxBytes = 64 << 20

    /// Queues a frame on a connection; returns the connection when its writer must wake.
    @discardableResult
    mutating func enqueue(_ frame: ByteBuffer, on connectionID: Int) -> Int? {
        guard let connection = connections[connectionID], connection.close == nil else { return nil }
        if connection.outboxBytes + frame.readableBytes > Self.maxOutboxBytes {
            stats.slowConsumersClosed += 1
            connection.outbox = []
            connection.outboxBytes = 0
            return requestClose(connectionID, .code(4009, "client too slow: \(Self.maxOutboxBytes >> 20) MiB unread"), now: MonotonicInstant.now().nanoseconds)
        }
        let wake = connection.outbox.isEmpty && connection.waiter != nil
        connection.outbox.append(frame)
        connection.outboxBytes += frame.readableBytes
        return wake ? connectionID : nil
    }

    /// Asks a connection to close; returns it when its writer must wake.
    @discardableResult
    mutating func requestClose(_ connectionID: Int, _ request: CloseRequest, now: Int64) -> Int? {
        guard let connection = connections[connectionID], connection.close == nil else { return nil }
        connection.close = request
        detach(connectionID, now: now)
        return connection.waiter != nil ? connectionID : nil
    }

    /// Takes the next batch for a connection's writer, or stores its continuation until there is one.
    mutating func takeBatch(_ connectionID: Int, waiter: CheckedContinuation<OutboxBatch, Never>) -> OutboxBatch? {
        guard let connection = connections[connectionID] else { return OutboxBatch(frames: [], close: .drop) }
        if connection.outbox.isEmpty && connection.close == nil {
            connection.waiter = waiter
            return nil
        }
        let batch = OutboxBatch(frames: connection.outbox, close: connection.close)
        connection.outbox = []
        connection.outboxBytes = 0
        connection.waiter = nil
        return batch
    }

    /// Removes the waiter of a connection so it can be resumed with the pending batch.
    mutating func claimWaiter(_ connectionID: Int) -> (CheckedContinuation<OutboxBatch, Never>, OutboxBatch)? {
        guard let connection = connections[connectionID], let waiter = connection.waiter else { return nil }
        let batch = OutboxBatch(frames: connection.outbox, close: connection.close)
        connection.outbox = []
        connection.outboxBytes = 0
        connection.waiter = nil
        return (waiter, batch)
    }

    /// The socket of a connection is gone.
    mutating func connectionClosed(_ connectionID: Int, now: Int64) {
        detach(connectionID, now: now)
        connections[connectionID] = nil
    }

    /// Separates a connection from its session, which stays resumable for its time to live.
    mutating func detach(_ connectionID: Int, now: Int64) {
        guard let connection = connections[connectionID], let sessionID = connection.session else { return }
        connection.session = nil
        guard let session = sessions[sessionID], session.connection == connectionID else { return }
        session.connection = nil
        session.disconnectedAt = now
    }

    mutating func heartbeat(_ connectionID: Int, now: Int64) -> Bool {
        guard let connection = connections[connectionID] else { return false }
        connection.lastHeartbeat = now
        return !connection.acksStopped
    }

    // MARK: sessions

    enum IdentifyResult {
        case ready(sessionID: String, seq: Int)
        case close(UInt16, String)
    }

    mutating func identify(connectionID: Int, token: String?, shard: ShardID, intents: Int, now: Int64) -> IdentifyResult {
        guard let token, tokenValid(token, now: now) else {
            return .close(4004, "authentication failed")
        }
        guard shard.total >= 1, shard.total <= 4096, shard.id >= 0, shard.id < shard.total else {
            return .close(4010, "invalid shard \(shard)")
        }
        let known = GatewayIntents.names.reduce(0) { $0 | $1.intent.rawValue }
        guard intents & ~known == 0 else { return .close(4013, "invalid intent") }
        guard intents & ~config.grantedIntents.rawValue == 0 else {
            let missing = GatewayIntents(rawValue: intents & ~config.grantedIntents.rawValue)
            return .close(4014, "intent not permitted: \(missing)")
        }
        if let refusal = refusals.last(where: { ($0.shard == nil || $0.shard == shard.id) && ($0.total == nil || $0.total == shard.total) }) {
            return .close(refusal.code ?? 4010, "identify refused by a fault")
        }
        if now >= resetAt {
            remaining = config.sessionStartTotal
            resetAt = now + config.sessionStartResetAfter.nanoseconds
        }
        let bucket = ShardMath.bucket(ofShard: shard.id, maxConcurrency: config.maxConcurrency)
        if let last = lastIdentifyAt[bucket], now - last < config.identifyWindow.nanoseconds {
            stats.identifyViolations += 1
            return .close(4008, "identify too fast for bucket \(bucket): \((now - last) / 1_000_000) ms after the previous one, window \(config.identifyWindow)")
        }
        guard remaining > 0 else {
            stats.identifyViolations += 1
            return .close(4008, "daily session start limit reached")
        }
        lastIdentifyAt[bucket] = now
        remaining -= 1
        stats.sessionStartRemaining = remaining
        stats.identifies += 1
        let sessionID = UUID().uuidString.lowercased()
        sessions[sessionID] = EmulatorSession(
            id: sessionID, shard: shard, intents: intents, seq: 1, ringCapacity: config.resumeBuffer, connection: connectionID
        )
        sessionOrder.append(sessionID)
        connections[connectionID]?.session = sessionID
        return .ready(sessionID: sessionID, seq: 1)
    }

    enum ResumeResult {
        case resumed(replay: [ByteBuffer], resumedSeq: Int, displaced: Int?)
        case invalid(String)
    }

    mutating func resume(connectionID: Int, token: String?, sessionID: String?, seq: Int?, now: Int64) -> ResumeResult? {
        guard let token, tokenValid(token, now: now) else { return nil }
        guard let sessionID, let session = sessions[sessionID] else {
            stats.resumesRefused += 1
            return .invalid("unknown session")
        }
        let clientSeq = seq ?? 0
        // Every frame after `seq` must still be held: the ring may have evicted some when it filled up.
        guard clientSeq <= session.lastSeq, clientSeq >= session.evictedUpTo else {
            stats.resumesRefused += 1
            invalidate(sessionID, now: now)
            return .invalid(clientSeq > session.lastSeq ? "seq \(clientSeq) is ahead of the session" : "seq \(clientSeq) is no longer held")
        }
        var displaced: Int?
        if let old = session.connection, old != connectionID {
            displaced = old
            connections[old]?.session = nil
        }
        var replay: [ByteBuffer] = []
        for frame in session.ring.frames(after: clientSeq) {
            replay.append(frame.bytes)
            if frame.seq > session.sentUpTo, frame.message >= 0 {
                markDelivered(Int(frame.message), now: now, releasingHolder: true)
            }
        }
        session.lastSeq += 1
        session.sentUpTo = session.lastSeq
        session.connection = connectionID
        session.disconnectedAt = nil
        connections[connectionID]?.session = sessionID
        stats.resumes += 1
        stats.lastResumeAtMs = clockMs(now)
        stats.dispatched += replay.count
        return .resumed(replay: replay, resumedSeq: session.lastSeq, displaced: displaced)
    }

    /// Ends a session for good: its unsent messages become undelivered.
    mutating func invalidate(_ sessionID: String, now: Int64) {
        guard let session = sessions.removeValue(forKey: sessionID) else { return }
        sessionOrder.removeAll { $0 == sessionID }
        session.ring.forEach { frame in
            if frame.seq > session.sentUpTo, frame.message >= 0 { messages[Int(frame.message)].holders -= 1 }
        }
        if let connection = session.connection { connections[connection]?.session = nil }
    }

    mutating func markDelivered(_ index: Int, now: Int64, releasingHolder: Bool) {
        if releasingHolder { messages[index].holders -= 1 }
        if !messages[index].delivered {
            messages[index].delivered = true
            messages[index].deliveredAt = now
        }
    }

    // MARK: traffic

    /// Appends a dispatch to every session that should get it. Returns whether anyone got it.
    mutating func route(message index: Int, event: String, eventID: String, payload: String, guild: UInt64?, now: Int64, wake: inout [Int]) {
        let needed: GatewayIntents = event == "AT_MESSAGE_CREATE" ? .publicGuildMessages : .groupAndC2CEvent
        for sessionID in sessionOrder {
            guard let session = sessions[sessionID] else { continue }
            guard session.intents & needed.rawValue != 0 else { continue }
            if let guild {
                guard session.shard.covers(guildID: guild) else { continue }
            } else {
                guard session.shard.id == 0 else { continue }
            }
            session.lastSeq += 1
            let frame = DispatchFrame.encode(seq: session.lastSeq, event: event, eventID: eventID, payload: payload)
            if let evicted = session.ring.append(BufferedFrame(seq: session.lastSeq, bytes: frame, message: Int32(index))) {
                session.evictedUpTo = evicted.seq
                if evicted.seq > session.sentUpTo, evicted.message >= 0 { messages[Int(evicted.message)].holders -= 1 }
            }
            if let connection = session.connection, connections[connection]?.close == nil {
                session.sentUpTo = session.lastSeq
                if let w = enqueue(frame, on: connection) { wake.append(w) }
                stats.dispatched += 1
                markDelivered(index, now: now, releasingHolder: false)
            } else {
                messages[index].holders += 1
            }
        }
    }

    /// Makes one AT_MESSAGE_CREATE from a random user in a random channel (or the given user and guild).
    mutating func generateGuildMessage(now: Int64, wake: inout [Int], user chosenUser: Int? = nil, guild chosenGuild: Int? = nil) {
        let index = messages.count
        let guild = chosenGuild ?? Int(rng.next() % UInt64(world.guilds))
        let channel = Int(rng.next() % UInt64(world.channelsPerGuild))
        let user = chosenUser ?? Int(rng.next() % UInt64(world.users))
        let channelID = world.channelID(guild: guild, channel: channel)
        messages.append(MessageRecord(kind: .guild, target: Int32(channelID - EmulatorWorld.channelBase), generatedAt: now))
        stats.messagesGenerated += 1
        let id = messageIDs.make(index)
        let content = (index % 4 == 0) ? "ping" : "hello \(index)"
        var d = "{\"id\":\"\(id)\",\"channel_id\":\"\(channelID)\",\"guild_id\":\"\(world.guildID(guild))\",\"content\":\"<@!\(EmulatorCore.botUserID)> \(content)\",\"timestamp\":\"\(timestamp())\",\"author\":{\"id\":\"\(world.userID(user))\",\"username\":"
        JSONValue.writeQuoted(world.username(user), into: &d)
        d += ",\"avatar\":\"\(world.avatar(user))\",\"bot\":false},\"member\":{\"joined_at\":\"2024-01-01T00:00:00+08:00\",\"roles\":[\"1\"]},\"seq\":\(index + 1),\"seq_in_channel\":\"\(index + 1)\"}"
        let eventID = "AT_MESSAGE_CREATE:" + id
        route(message: index, event: "AT_MESSAGE_CREATE", eventID: eventID, payload: d, guild: world.guildID(guild), now: now, wake: &wake)
        if config.traffic.duplicateShare > 0, Double(rng.next() % 1_000_000) / 1_000_000 < config.traffic.duplicateShare {
            stats.duplicatePushes += 1
            route(message: index, event: "AT_MESSAGE_CREATE", eventID: eventID, payload: d, guild: world.guildID(guild), now: now, wake: &wake)
        }
    }

    /// Makes one GROUP_AT_MESSAGE_CREATE or C2C_MESSAGE_CREATE; they go to shard 0 of each layout.
    mutating func generateDirectMessage(group: Bool, now: Int64, wake: inout [Int]) {
        let index = messages.count
        let user = Int(rng.next() % UInt64(world.users))
        let groupIndex = Int(rng.next() % UInt64(max(1, world.guilds)))
        messages.append(MessageRecord(kind: group ? .group : .c2c, target: Int32(group ? groupIndex : user), generatedAt: now))
        stats.messagesGenerated += 1
        let id = messageIDs.make(index)
        let event = group ? "GROUP_AT_MESSAGE_CREATE" : "C2C_MESSAGE_CREATE"
        let content = (index % 4 == 0) ? "ping" : "hello \(index)"
        let author = group ? "{\"member_openid\":\"\(world.memberOpenID(user))\"}" : "{\"user_openid\":\"\(world.userOpenID(user))\"}"
        var d = "{\"id\":\"\(id)\",\"content\":\"\(content)\",\"timestamp\":\"\(timestamp())\",\"author\":\(author)"
        if group { d += ",\"group_openid\":\"\(world.groupOpenID(groupIndex))\"" }
        d += "}"
        route(message: index, event: event, eventID: event + ":" + id, payload: d, guild: nil, now: now, wake: &wake)
    }

    mutating func timestamp() -> String {
        let second = wallClockMilliseconds() / 1000
        if second != timestampCache.second { timestampCache = (second, isoTimestamp()) }
        return timestampCache.text
    }

    /// Renames the share of users configured to change names.
    mutating func renameSome() {
        for user in world.renamers {
            world.rename(user)
            stats.renames += 1
        }
    }

    // MARK: faults

    /// Applies a fault to matching sessions; returns the connections to wake.
    mutating func apply(_ fault: EmulatorFault, now: Int64) -> [Int] {
        switch fault.kind {
        case .refuseIdentify:
            refusals.append(fault)
            return []
        case .allowIdentify:
            refusals.removeAll { ($0.shard == fault.shard || fault.shard == nil) && ($0.total == fault.total || fault.total == nil) }
            return []
        default:
            break
        }
        var wake: [Int] = []
        for sessionID in sessionOrder {
            guard let session = sessions[sessionID] else { continue }
            if let shard = fault.shard, session.shard.id != shard { continue }
            if let total = fault.total, session.shard.total != total { continue }
            guard let connection = session.connection else { continue }
            switch fault.kind {
            case .reconnect:
                if let w = enqueue(DispatchFrame.control(op: 7), on: connection) { wake.append(w) }
                if let w = requestClose(connection, .code(4009, "reconnect"), now: now) { wake.append(w) }
            case .invalidSession:
                if let w = enqueue(DispatchFrame.control(op: 9, d: "false"), on: connection) { wake.append(w) }
                invalidate(sessionID, now: now)
                if let w = requestClose(connection, .code(4009, "invalid session"), now: now) { wake.append(w) }
            case .drop:
                if let w = requestClose(connection, .drop, now: now) { wake.append(w) }
            case .stopAcks:
                connections[connection]?.acksStopped = true
            case .badFrames:
                session.lastSeq += 1
                let wrongType = DispatchFrame.encode(seq: session.lastSeq, event: "AT_MESSAGE_CREATE", eventID: "AT_MESSAGE_CREATE:bad", payload: "{\"id\":true}")
                session.sentUpTo = session.lastSeq
                for frame in ["not json", "{\"op\":99,\"d\":null}", "{\"op\":0,\"t\":\"AT_MESSAGE_CREATE\",\"d\":{}}"] {
                    if let w = enqueue(DispatchFrame.allocator.buffer(string: frame), on: connection) { wake.append(w) }
                }
                if let w = enqueue(wrongType, on: connection) { wake.append(w) }
            case .close:
                let code = fault.code ?? 4009
                if CloseCodeClass.invalidatesSession(code) { invalidate(sessionID, now: now) }
                if let w = requestClose(connection, .code(code, "closed by fault"), now: now) { wake.append(w) }
            case .refuseIdentify, .allowIdentify:
                break
            }
        }
        return wake
    }

    // MARK: housekeeping

    /// Closes connections that stopped heartbeating and expires sessions past their time to live.
    mutating func sweep(now: Int64) -> [Int] {
        var wake: [Int] = []
        let timeout = config.heartbeatTimeout.nanoseconds
        for (id, connection) in connections where connection.close == nil && now - connection.lastHeartbeat > timeout {
            if let w = requestClose(id, .code(4009, "heartbeat timeout"), now: now) { wake.append(w) }
        }
        let ttl = config.sessionTTL.nanoseconds
        for sessionID in sessionOrder {
            if let session = sessions[sessionID], session.connection == nil, let since = session.disconnectedAt, now - since > ttl {
                invalidate(sessionID, now: now)
            }
        }
        return wake
    }

    /// Milliseconds since the emulator started.
    func clockMs(_ now: Int64) -> Double { Double(now - startedAt) / 1e6 }

    mutating func snapshot(now: Int64) -> EmulatorStats {
        var s = stats
        s.clockMs = clockMs(now)
        s.activeSessions = sessions.values.filter { $0.connection != nil }.count
        s.resumableSessions = sessions.count
        var undelivered = 0, pending = 0, delivered = 0, replied = 0, more = 0, unreplied = 0
        let grace = config.unrepliedGrace.nanoseconds
        for record in messages {
            if record.delivered {
                delivered += 1
                if record.replies >= 1 { replied += 1 }
                if record.replies >= 2 { more += 1 }
                if record.replies == 0 && now - record.deliveredAt > grace { unreplied += 1 }
            } else if record.holders > 0 {
                pending += 1
            } else {
                undelivered += 1
            }
        }
        s.messagesUndelivered = undelivered
        s.messagesPending = pending
        s.messagesDelivered = delivered
        s.messagesReplied = replied
        s.messagesRepliedMoreThanOnce = more
        s.messagesUnreplied = unreplied
        s.sessionStartRemaining = remaining
        return s
    }
}

/// Close codes by what they do to a session on the emulated platform.
enum CloseCodeClass {
    /// Codes after which the session cannot be resumed.
    static func invalidatesSession(_ code: UInt16) -> Bool {
        switch code {
        case 4008, 4009: return false
        default: return code >= 4000
        }
    }
}

extension UUID {
    init(using rng: inout SplitMix64) {
        var a = rng.next()
        var b = rng.next()
        a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000
        b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000
        let bytes = withUnsafeBytes(of: a.bigEndian) { Array($0) } + withUnsafeBytes(of: b.bigEndian) { Array($0) }
        self.init(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                         bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }
}

/// The current time as the platform writes it, "2021-05-20T15:14:58+08:00".
func isoTimestamp() -> String {
    let ms = wallClockMilliseconds() + 8 * 3_600_000
    var t = time_t(ms / 1000)
    var parts = tm()
    gmtime_r(&t, &parts)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))+08:00"
}
