import ClusterCore

/// Where a webhook event goes: by guild for guild events (`(guild_id >> 22) % N`, as the websocket shards), by a
/// stable hash of the group or user openid for group and C2C events, else to shard 0.
public enum WebhookRoute: Sendable, Equatable {
    case guild(UInt64)
    case openID(String)
    case unrouted

    /// The route of an event's `d`.
    public static func of(_ d: JSONValue) -> WebhookRoute {
        if let guild = d["guild_id"]?.stringValue, let id = UInt64(guild) { return .guild(id) }
        if let group = d["group_openid"]?.stringValue, !group.isEmpty { return .openID(group) }
        if let user = d["author"]?["user_openid"]?.stringValue, !user.isEmpty { return .openID(user) }
        if let user = d["openid"]?.stringValue, !user.isEmpty { return .openID(user) }
        return .unrouted
    }

    /// The shard of a layout of `total` that owns the event.
    public func shard(total: Int) -> Int {
        switch self {
        case .guild(let id): return ShardMath.shard(forGuild: id, total: total)
        case .openID(let openID): return Int(Self.fnv1a(openID) % UInt64(max(1, total)))
        case .unrouted: return 0
        }
    }

    /// FNV-1a, 64 bits: stable across processes and releases (Swift's `Hasher` is seeded per process).
    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// The ingress's streams of events, one per shard of a layout (pure: the router carries out what it decides).
///
/// An event acknowledged to the platform is in its shard's stream until the shard's worker reports a committed
/// seq past it, so a worker that dies loses nothing: its successor attaches and gets every event after the
/// committed seq again (the claims ledger keeps each handled once). New events go to the serving layout; a
/// rescale's switch moves that, and the retiring layout's workers handle what their streams hold before they stop.
public struct WebhookStreams: Sendable {
    /// A stream: one shard of one layout.
    public struct Key: Hashable, Sendable {
        public var layout: Int
        public var ordinal: Int

        /// Shard `ordinal` of layout `layout`.
        public init(layout: Int, ordinal: Int) {
            self.layout = layout
            self.ordinal = ordinal
        }
    }

    /// One event in a stream.
    public struct Entry: Sendable, Equatable {
        public var seq: Int64
        public var eventID: String
        public var name: String
        public var payload: String
        /// Where it was routed from (kept: a retired layout's leftovers are routed again without parsing them).
        public var route: WebhookRoute
    }

    struct Stream {
        let id: String
        /// Every event up to this seq is handled (1: the stream's start, as a websocket READY is seq 1).
        var mark: Int64 = 1
        var next: Int64 = 2
        var entries: [Entry] = []
        /// Entries before this index are trimmed (compacted now and then, not per commit).
        var head = 0
        /// Event ids in the stream, to their seq: a redelivery of one adds nothing.
        var ids: [String: Int64] = [:]
        /// The worker connection the stream goes to, while one is attached.
        var attached: UInt64?
        var everAttached = false

        var pending: Int { entries.count - head }
    }

    /// What to do with an offered event.
    public enum Offer: Sendable, Equatable {
        /// Send it to the attached worker's connection, then acknowledge.
        case send(connection: UInt64, Entry)
        /// It waits in its stream for the shard's next worker (restarting, rolling): acknowledge.
        case queued
        /// It is in its stream already (a redelivery): acknowledge, nothing more.
        case duplicate
        /// The streams hold `limit` events, or its stream `streamLimit`: ask the platform to retry.
        case full
    }

    /// What an attaching worker is told: where its stream stands and what follows.
    public struct Attachment: Sendable, Equatable {
        public var streamID: String
        public var mark: Int64
        public var fresh: Bool
        public var replay: [Entry]
    }

    var streams: [Key: Stream] = [:]
    /// The layout new events go to, and its shard count.
    public private(set) var serving: (layout: Int, total: Int)
    /// Events in every stream.
    public private(set) var queued = 0
    public let limit: Int
    /// Events one stream may hold: a shard whose worker stays away (failed, in a crash loop's backoff) fills its
    /// own stream, not every shard's room.
    public let streamLimit: Int
    /// Part of every stream id: a restarted supervisor's streams are new (a worker never mistakes one for another).
    let instance: String

    /// Streams for the layout `layout` of `total` shards, holding at most `limit` events in all and `streamLimit`
    /// in one.
    public init(layout: Int, total: Int, limit: Int, streamLimit: Int, instance: String) {
        serving = (layout, max(1, total))
        self.limit = limit
        self.streamLimit = streamLimit
        self.instance = instance
    }

    func streamID(_ key: Key) -> String { "webhook-\(instance)-\(key.layout)-\(key.ordinal)" }

    /// The stream of the serving layout that `route` goes to.
    func key(for route: WebhookRoute) -> Key {
        Key(layout: serving.layout, ordinal: route.shard(total: serving.total))
    }

    /// Why an event would not be added: it is in its stream already, or there is no room (unless `ignoringLimits`).
    func refusal(_ key: Key, eventID: String, ignoringLimits: Bool) -> Offer? {
        if streams[key]?.ids[eventID] != nil { return .duplicate }
        if !ignoringLimits && (queued >= limit || (streams[key]?.pending ?? 0) >= streamLimit) { return .full }
        return nil
    }

    /// Whether an event would be taken (nil), or why not: a redelivery, or no room. Changes nothing.
    public func check(route: WebhookRoute, eventID: String) -> Offer? {
        refusal(key(for: route), eventID: eventID, ignoringLimits: false)
    }

    /// Adds an event to its shard's stream in the serving layout (or finds it there: a redelivery).
    /// `ignoringLimits`: events acknowledged already (by an earlier supervisor, or to a retired layout), which must
    /// all find room.
    public mutating func offer(route: WebhookRoute, eventID: String, name: String, payload: String, ignoringLimits: Bool = false) -> Offer {
        let key = key(for: route)
        if let refusal = refusal(key, eventID: eventID, ignoringLimits: ignoringLimits) { return refusal }
        queued += 1
        let id = streamID(key)
        // Mutated in place (through the dictionary's default subscript): a copy of a stream would copy its
        // entries, an O(events waiting) cost per event.
        return Self.append(to: &streams[key, default: Stream(id: id)], Entry(seq: 0, eventID: eventID, name: name, payload: payload, route: route))
    }

    static func append(to stream: inout Stream, _ event: Entry) -> Offer {
        var entry = event
        entry.seq = stream.next
        stream.next += 1
        stream.entries.append(entry)
        stream.ids[entry.eventID] = entry.seq
        guard let connection = stream.attached else { return .queued }
        return .send(connection: connection, entry)
    }

    /// A worker of `key` on `connection` asks for its stream: from now on it gets its events.
    public mutating func attach(_ key: Key, connection: UInt64) -> Attachment {
        let id = streamID(key)
        return Self.attach(&streams[key, default: Stream(id: id)], connection: connection)
    }

    static func attach(_ stream: inout Stream, connection: UInt64) -> Attachment {
        let fresh = !stream.everAttached
        stream.attached = connection
        stream.everAttached = true
        return Attachment(streamID: stream.id, mark: stream.mark, fresh: fresh, replay: Array(stream.entries[stream.head...]))
    }

    /// The connection closed: its streams wait for the next worker.
    public mutating func detach(connection: UInt64) {
        for (key, stream) in streams where stream.attached == connection { streams[key]?.attached = nil }
    }

    /// The worker of `key` handled every event of `streamID` up to `seq`: they leave the stream. Returns their ids.
    @discardableResult
    public mutating func commit(_ key: Key, streamID: String, seq: Int64) -> [String] {
        guard streams[key] != nil else { return [] }
        let handled = Self.commit(&streams[key]!, streamID: streamID, seq: seq)
        queued -= handled.count
        return handled
    }

    static func commit(_ stream: inout Stream, streamID: String, seq: Int64) -> [String] {
        guard stream.id == streamID, seq > stream.mark else { return [] }
        let upTo = min(seq, stream.next - 1)
        var handled: [String] = []
        while stream.head < stream.entries.count, stream.entries[stream.head].seq <= upTo {
            handled.append(stream.entries[stream.head].eventID)
            stream.ids[stream.entries[stream.head].eventID] = nil
            stream.head += 1
        }
        stream.mark = upTo
        if stream.head >= 1024 || stream.head == stream.entries.count {
            stream.entries.removeFirst(stream.head)
            stream.head = 0
        }
        return handled
    }

    /// From now on new events go to `layout` of `total` shards (a rescale's switch). Streams of other layouts that
    /// are empty and have no worker are dropped.
    public mutating func serve(layout: Int, total: Int) {
        let previous = serving.layout
        serving = (layout, max(1, total))
        streams = streams.filter { key, stream in
            key.layout == layout || key.layout == previous || stream.pending > 0 || stream.attached != nil
        }
    }

    /// Takes the streams of a layout whose workers no longer handle anything (a rescale's retired layout) and
    /// returns what they held and was not handled, oldest first per stream: it goes to the serving layout.
    public mutating func removeLayout(_ layout: Int) -> [Entry] {
        var left: [Entry] = []
        for key in streams.keys.filter({ $0.layout == layout }).sorted(by: { $0.ordinal < $1.ordinal }) {
            guard let stream = streams.removeValue(forKey: key) else { continue }
            left += stream.entries[stream.head...]
            queued -= stream.pending
        }
        return left
    }

    /// Every event held, for writing them down again (a database made anew).
    public var allEntries: [Entry] {
        streams.keys.sorted { ($0.layout, $0.ordinal) < ($1.layout, $1.ordinal) }.flatMap { key in
            streams[key].map { Array($0.entries[$0.head...]) } ?? []
        }
    }

    /// Whether `connection` is attached to a stream already.
    public func isAttached(_ connection: UInt64) -> Bool {
        streams.values.contains { $0.attached == connection }
    }

    /// Events waiting in `key`'s stream (sent or not, not yet handled).
    public func pending(_ key: Key) -> Int { streams[key]?.pending ?? 0 }
}
