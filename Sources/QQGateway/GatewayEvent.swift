import ClusterCore

/// Why an event's payload could not be read.
public struct EventDecodingError: Error, Sendable, CustomStringConvertible {
    public var event: String
    public var message: String
    public var description: String { "\(event): \(message)" }
}

/// Reads typed fields of an event payload, naming the field when one is missing or of the wrong type.
struct PayloadReader {
    let event: String
    let value: JSONValue
    let path: String

    init(event: String, value: JSONValue, path: String = "d") {
        self.event = event
        self.value = value
        self.path = path
    }

    func fail(_ key: String, _ problem: String) -> EventDecodingError {
        EventDecodingError(event: event, message: "\(path).\(key) \(problem)")
    }

    func string(_ key: String) throws(EventDecodingError) -> String {
        guard let raw = value[key], raw != .null else { throw fail(key, "is missing") }
        if let s = raw.stringValue { return s }
        if case .number(let n) = raw, n.rounded() == n { return String(Int64(n)) }
        throw fail(key, "must be a string, got \(raw.kindDescription)")
    }

    func optionalString(_ key: String) throws(EventDecodingError) -> String? {
        guard let raw = value[key], raw != .null else { return nil }
        if let s = raw.stringValue { return s }
        if case .number(let n) = raw, n.rounded() == n { return String(Int64(n)) }
        throw fail(key, "must be a string, got \(raw.kindDescription)")
    }

    func optionalBool(_ key: String) throws(EventDecodingError) -> Bool? {
        guard let raw = value[key], raw != .null else { return nil }
        guard case .bool(let b) = raw else { throw fail(key, "must be a boolean, got \(raw.kindDescription)") }
        return b
    }

    func optionalInt(_ key: String) throws(EventDecodingError) -> Int? {
        guard let raw = value[key], raw != .null else { return nil }
        if let n = raw.intValue { return n }
        if let s = raw.stringValue, let n = Int(s) { return n }
        throw fail(key, "must be a whole number, got \(raw.kindDescription)")
    }

    func strings(_ key: String) throws(EventDecodingError) -> [String] {
        guard let raw = value[key], raw != .null else { return [] }
        guard case .array(let items) = raw else { throw fail(key, "must be an array, got \(raw.kindDescription)") }
        var result: [String] = []
        for item in items {
            guard let s = item.stringValue else { throw fail(key, "must hold strings") }
            result.append(s)
        }
        return result
    }

    func object(_ key: String) throws(EventDecodingError) -> PayloadReader? {
        guard let raw = value[key], raw != .null else { return nil }
        guard case .object = raw else { throw fail(key, "must be an object, got \(raw.kindDescription)") }
        return PayloadReader(event: event, value: raw, path: "\(path).\(key)")
    }
}

/// A user as events carry it.
public struct User: Sendable, Equatable, Hashable {
    public var id: String
    public var username: String?
    public var avatar: String?
    public var bot: Bool
    /// Group and C2C events name users by openid instead of id.
    public var memberOpenID: String?
    public var userOpenID: String?

    /// A user from its fields; only `id` is required (`bot` defaults to false).
    public init(id: String, username: String? = nil, avatar: String? = nil, bot: Bool = false, memberOpenID: String? = nil, userOpenID: String? = nil) {
        self.id = id
        self.username = username
        self.avatar = avatar
        self.bot = bot
        self.memberOpenID = memberOpenID
        self.userOpenID = userOpenID
    }

    init(_ r: PayloadReader) throws(EventDecodingError) {
        let member = try r.optionalString("member_openid")
        let user = try r.optionalString("user_openid")
        let id = try r.optionalString("id") ?? member ?? user
        guard let id else { throw r.fail("id", "is missing") }
        self.init(
            id: id, username: try r.optionalString("username"), avatar: try r.optionalString("avatar"),
            bot: try r.optionalBool("bot") ?? false, memberOpenID: member, userOpenID: user
        )
    }
}

/// A guild member as events carry it.
public struct Member: Sendable, Equatable {
    public var user: User?
    public var nick: String?
    public var roles: [String]
    public var joinedAt: String?
    public var guildID: String?

    init(_ r: PayloadReader) throws(EventDecodingError) {
        user = try r.object("user").map { reader throws(EventDecodingError) in try User(reader) }
        nick = try r.optionalString("nick")
        roles = try r.strings("roles")
        joinedAt = try r.optionalString("joined_at")
        guildID = try r.optionalString("guild_id")
    }
}

/// A guild channel message (AT_MESSAGE_CREATE, MESSAGE_CREATE, DIRECT_MESSAGE_CREATE).
public struct Message: Sendable, Equatable {
    public var id: String
    public var channelID: String
    public var guildID: String
    public var content: String
    public var timestamp: String?
    public var author: User
    public var member: Member?
    public var seq: Int?
    public var seqInChannel: String?

    init(_ r: PayloadReader) throws(EventDecodingError) {
        id = try r.string("id")
        channelID = try r.string("channel_id")
        guildID = try r.string("guild_id")
        content = try r.optionalString("content") ?? ""
        timestamp = try r.optionalString("timestamp")
        guard let author = try r.object("author") else { throw r.fail("author", "is missing") }
        self.author = try User(author)
        member = try r.object("member").map { reader throws(EventDecodingError) in try Member(reader) }
        seq = try r.optionalInt("seq")
        seqInChannel = try r.optionalString("seq_in_channel")
    }
}

/// A message in a group that mentions the bot (GROUP_AT_MESSAGE_CREATE).
public struct GroupMessage: Sendable, Equatable {
    public var id: String
    public var groupOpenID: String
    public var content: String
    public var timestamp: String?
    public var author: User

    init(_ r: PayloadReader) throws(EventDecodingError) {
        id = try r.string("id")
        groupOpenID = try r.string("group_openid")
        content = try r.optionalString("content") ?? ""
        timestamp = try r.optionalString("timestamp")
        guard let author = try r.object("author") else { throw r.fail("author", "is missing") }
        self.author = try User(author)
    }
}

/// A direct message to the bot from a user (C2C_MESSAGE_CREATE).
public struct C2CMessage: Sendable, Equatable {
    public var id: String
    public var content: String
    public var timestamp: String?
    public var author: User

    init(_ r: PayloadReader) throws(EventDecodingError) {
        id = try r.string("id")
        content = try r.optionalString("content") ?? ""
        timestamp = try r.optionalString("timestamp")
        guard let author = try r.object("author") else { throw r.fail("author", "is missing") }
        self.author = try User(author)
    }
}

/// A guild (GUILD_CREATE/UPDATE/DELETE).
public struct Guild: Sendable, Equatable {
    public var id: String
    public var name: String?
    public var ownerID: String?
    public var memberCount: Int?

    init(_ r: PayloadReader) throws(EventDecodingError) {
        id = try r.string("id")
        name = try r.optionalString("name")
        ownerID = try r.optionalString("owner_id")
        memberCount = try r.optionalInt("member_count")
    }
}

/// An interaction (INTERACTION_CREATE); the payload's details stay in `data`.
public struct Interaction: Sendable, Equatable {
    public var id: String
    public var type: Int?
    public var data: JSONValue

    init(_ r: PayloadReader) throws(EventDecodingError) {
        id = try r.string("id")
        type = try r.optionalInt("type")
        data = r.value["data"] ?? .null
    }
}

/// A dispatched event, typed where the protocol defines it; anything else keeps its raw payload.
public enum GatewayEvent: Sendable, Equatable {
    case atMessageCreate(Message)
    case messageCreate(Message)
    case directMessageCreate(Message)
    case groupAtMessageCreate(GroupMessage)
    case c2cMessageCreate(C2CMessage)
    case guildMemberAdd(Member)
    case guildMemberUpdate(Member)
    case guildMemberRemove(Member)
    case guildCreate(Guild)
    case guildUpdate(Guild)
    case guildDelete(Guild)
    case interactionCreate(Interaction)
    /// An event this version does not model: its name and raw `d`.
    case unknown(name: String, payload: JSONValue)

    /// Decodes the `d` of a dispatch named `name`.
    public static func decode(name: String, payload: JSONValue) throws(EventDecodingError) -> GatewayEvent {
        let r = PayloadReader(event: name, value: payload)
        func object() throws(EventDecodingError) -> PayloadReader {
            guard case .object = payload else { throw EventDecodingError(event: name, message: "d must be an object, got \(payload.kindDescription)") }
            return r
        }
        switch name {
        case "AT_MESSAGE_CREATE": return .atMessageCreate(try Message(object()))
        case "MESSAGE_CREATE": return .messageCreate(try Message(object()))
        case "DIRECT_MESSAGE_CREATE": return .directMessageCreate(try Message(object()))
        case "GROUP_AT_MESSAGE_CREATE": return .groupAtMessageCreate(try GroupMessage(object()))
        case "C2C_MESSAGE_CREATE": return .c2cMessageCreate(try C2CMessage(object()))
        case "GUILD_MEMBER_ADD": return .guildMemberAdd(try Member(object()))
        case "GUILD_MEMBER_UPDATE": return .guildMemberUpdate(try Member(object()))
        case "GUILD_MEMBER_REMOVE": return .guildMemberRemove(try Member(object()))
        case "GUILD_CREATE": return .guildCreate(try Guild(object()))
        case "GUILD_UPDATE": return .guildUpdate(try Guild(object()))
        case "GUILD_DELETE": return .guildDelete(try Guild(object()))
        case "INTERACTION_CREATE": return .interactionCreate(try Interaction(object()))
        default: return .unknown(name: name, payload: payload)
        }
    }

    /// The users this event names (authors, members), for the user cache.
    public var users: [User] {
        switch self {
        case .atMessageCreate(let m), .messageCreate(let m), .directMessageCreate(let m): return [m.author]
        case .guildMemberAdd(let m), .guildMemberUpdate(let m), .guildMemberRemove(let m): return m.user.map { [$0] } ?? []
        default: return []
        }
    }
}
