/// The gateway intents: which event groups a session subscribes to (bit values and names of the QQ protocol).
public struct GatewayIntents: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int
    /// The intents whose bits are set in `rawValue`.
    public init(rawValue: Int) { self.rawValue = rawValue }

    public static let guilds = GatewayIntents(rawValue: 1 << 0)
    public static let guildMembers = GatewayIntents(rawValue: 1 << 1)
    public static let guildMessages = GatewayIntents(rawValue: 1 << 9)
    public static let guildMessageReactions = GatewayIntents(rawValue: 1 << 10)
    public static let directMessage = GatewayIntents(rawValue: 1 << 12)
    public static let groupAndC2CEvent = GatewayIntents(rawValue: 1 << 25)
    public static let interaction = GatewayIntents(rawValue: 1 << 26)
    public static let messageAudit = GatewayIntents(rawValue: 1 << 27)
    public static let forumsEvent = GatewayIntents(rawValue: 1 << 28)
    public static let audioAction = GatewayIntents(rawValue: 1 << 29)
    public static let publicGuildMessages = GatewayIntents(rawValue: 1 << 30)

    /// The intents the platform grants every bot by default.
    public static let defaultGranted: GatewayIntents = [.guilds, .guildMembers, .publicGuildMessages]

    /// Protocol names, in bit order.
    public static let names: [(name: String, intent: GatewayIntents)] = [
        ("GUILDS", .guilds),
        ("GUILD_MEMBERS", .guildMembers),
        ("GUILD_MESSAGES", .guildMessages),
        ("GUILD_MESSAGE_REACTIONS", .guildMessageReactions),
        ("DIRECT_MESSAGE", .directMessage),
        ("GROUP_AND_C2C_EVENT", .groupAndC2CEvent),
        ("INTERACTION", .interaction),
        ("MESSAGE_AUDIT", .messageAudit),
        ("FORUMS_EVENT", .forumsEvent),
        ("AUDIO_ACTION", .audioAction),
        ("PUBLIC_GUILD_MESSAGES", .publicGuildMessages),
    ]

    /// The intent with this protocol name, if any.
    public init?(name: String) {
        guard let match = Self.names.first(where: { $0.name == name }) else { return nil }
        self = match.intent
    }

    /// The protocol names of the intents set, in bit order; unnamed bits as numbers.
    public var nameList: [String] {
        var rest = self
        var result: [String] = []
        for (name, intent) in Self.names where contains(intent) {
            result.append(name)
            rest.remove(intent)
        }
        if rest.rawValue != 0 { result.append(String(rest.rawValue)) }
        return result
    }

    public var description: String { nameList.joined(separator: "|") }
}
