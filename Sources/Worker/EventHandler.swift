import ClusterCore
import QQGateway

/// A bot's event handlers. Every method has a default that does nothing; implement the ones the bot needs.
/// Handlers run concurrently (up to `worker.maxInFlight` at once); one that throws is logged and the shard goes
/// on; one that is slow holds only its own slot.
public protocol EventHandler: Sendable {
    /// The shard is ready (after READY; not after a resume).
    func ready(_ ctx: Context, sessionID: String) async throws
    func atMessageCreate(_ ctx: Context, _ message: Message) async throws
    func messageCreate(_ ctx: Context, _ message: Message) async throws
    func directMessageCreate(_ ctx: Context, _ message: Message) async throws
    func groupAtMessageCreate(_ ctx: Context, _ message: GroupMessage) async throws
    func c2cMessageCreate(_ ctx: Context, _ message: C2CMessage) async throws
    func guildMemberAdd(_ ctx: Context, _ member: Member) async throws
    func guildMemberUpdate(_ ctx: Context, _ member: Member) async throws
    func guildMemberRemove(_ ctx: Context, _ member: Member) async throws
    func guildCreate(_ ctx: Context, _ guild: Guild) async throws
    func guildUpdate(_ ctx: Context, _ guild: Guild) async throws
    func guildDelete(_ ctx: Context, _ guild: Guild) async throws
    func interactionCreate(_ ctx: Context, _ interaction: Interaction) async throws
    /// An event this version does not model, with its raw payload.
    func unknown(_ ctx: Context, name: String, payload: JSONValue) async throws
}

extension EventHandler {
    /// Ignores READY by default.
    public func ready(_ ctx: Context, sessionID: String) async throws {}
    /// Ignores AT_MESSAGE_CREATE by default.
    public func atMessageCreate(_ ctx: Context, _ message: Message) async throws {}
    /// Ignores MESSAGE_CREATE by default.
    public func messageCreate(_ ctx: Context, _ message: Message) async throws {}
    /// Ignores DIRECT_MESSAGE_CREATE by default.
    public func directMessageCreate(_ ctx: Context, _ message: Message) async throws {}
    /// Ignores GROUP_AT_MESSAGE_CREATE by default.
    public func groupAtMessageCreate(_ ctx: Context, _ message: GroupMessage) async throws {}
    /// Ignores C2C_MESSAGE_CREATE by default.
    public func c2cMessageCreate(_ ctx: Context, _ message: C2CMessage) async throws {}
    /// Ignores GUILD_MEMBER_ADD by default.
    public func guildMemberAdd(_ ctx: Context, _ member: Member) async throws {}
    /// Ignores GUILD_MEMBER_UPDATE by default.
    public func guildMemberUpdate(_ ctx: Context, _ member: Member) async throws {}
    /// Ignores GUILD_MEMBER_REMOVE by default.
    public func guildMemberRemove(_ ctx: Context, _ member: Member) async throws {}
    /// Ignores GUILD_CREATE by default.
    public func guildCreate(_ ctx: Context, _ guild: Guild) async throws {}
    /// Ignores GUILD_UPDATE by default.
    public func guildUpdate(_ ctx: Context, _ guild: Guild) async throws {}
    /// Ignores GUILD_DELETE by default.
    public func guildDelete(_ ctx: Context, _ guild: Guild) async throws {}
    /// Ignores INTERACTION_CREATE by default.
    public func interactionCreate(_ ctx: Context, _ interaction: Interaction) async throws {}
    /// Ignores events this version does not model, by default.
    public func unknown(_ ctx: Context, name: String, payload: JSONValue) async throws {}
}

extension EventHandler {
    /// Calls the method for `event`.
    func handle(_ event: GatewayEvent, ctx: Context) async throws {
        switch event {
        case .atMessageCreate(let m): try await atMessageCreate(ctx, m)
        case .messageCreate(let m): try await messageCreate(ctx, m)
        case .directMessageCreate(let m): try await directMessageCreate(ctx, m)
        case .groupAtMessageCreate(let m): try await groupAtMessageCreate(ctx, m)
        case .c2cMessageCreate(let m): try await c2cMessageCreate(ctx, m)
        case .guildMemberAdd(let m): try await guildMemberAdd(ctx, m)
        case .guildMemberUpdate(let m): try await guildMemberUpdate(ctx, m)
        case .guildMemberRemove(let m): try await guildMemberRemove(ctx, m)
        case .guildCreate(let g): try await guildCreate(ctx, g)
        case .guildUpdate(let g): try await guildUpdate(ctx, g)
        case .guildDelete(let g): try await guildDelete(ctx, g)
        case .interactionCreate(let i): try await interactionCreate(ctx, i)
        case .unknown(let name, let payload): try await unknown(ctx, name: name, payload: payload)
        }
    }
}

/// The example bot the shipped `botcluster` runs: one passive reply to every message that mentions it —
/// "pong" for "ping", an echo otherwise — in guild channels, groups and direct messages.
public struct ExampleBot: EventHandler {
    /// Creates the example bot (it keeps no state).
    public init() {}

    /// Answers a guild channel message that mentions the bot, with a passive reply.
    public func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        try await ctx.reply(to: message, content: Self.answer(message.content))
    }

    /// Answers a group message that mentions the bot, with a passive reply.
    public func groupAtMessageCreate(_ ctx: Context, _ message: GroupMessage) async throws {
        try await ctx.reply(to: message, content: Self.answer(message.content))
    }

    /// Answers a direct message, with a passive reply.
    public func c2cMessageCreate(_ ctx: Context, _ message: C2CMessage) async throws {
        try await ctx.reply(to: message, content: Self.answer(message.content))
    }

    /// "pong" for "ping" (after any mention), the text itself otherwise.
    public static func answer(_ content: String) -> String {
        var text = Substring(content).trimmingSpaces()
        while text.hasPrefix("<@"), let end = text.firstIndex(of: ">") {
            text = text[text.index(after: end)...].trimmingSpaces()
        }
        return text == "ping" ? "pong" : (text.isEmpty ? "(empty)" : "echo: \(text)")
    }
}

extension Substring {
    /// The text without leading and trailing spaces.
    func trimmingSpaces() -> Substring {
        let utf8 = self.utf8
        guard let first = utf8.firstIndex(where: { $0 != UInt8(ascii: " ") }) else { return self[endIndex...] }
        let last = utf8.lastIndex(where: { $0 != UInt8(ascii: " ") })!
        return self[first...last]
    }
}
