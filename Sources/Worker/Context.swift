import ClusterCore
import Logging
import QQGateway
import UserCache

/// What a handler gets with each event: the OpenAPI client, its shard, a logger, and the event's identity.
public struct Context: Sendable {
    public let api: OpenAPIClient
    public let shard: ShardID
    public let logger: Logger
    /// The event's id (the envelope `id`), usable as `event_id` in a reply.
    public let eventID: String?
    /// The event's `s` on this shard's session.
    public let seq: Int
    /// The cluster's users (memory, then the shared file, then the platform when configured).
    public let users: UserDirectory?

    /// The context of one event; `users` is nil when the process has no user cache.
    public init(api: OpenAPIClient, shard: ShardID, logger: Logger, eventID: String?, seq: Int, users: UserDirectory? = nil) {
        self.api = api
        self.shard = shard
        self.logger = logger
        self.eventID = eventID
        self.seq = seq
        self.users = users
    }

    /// A passive reply in the message's channel.
    @discardableResult
    public func reply(to message: Message, content: String) async throws -> SentMessage {
        try await api.sendChannelMessage(channelID: message.channelID, OutgoingMessage(content: content, msgID: message.id))
    }

    /// A passive reply in the group. `msgSeq` numbers replies to one message (the platform refuses a repeat, which
    /// makes a reply sent twice after a crash land once).
    @discardableResult
    public func reply(to message: GroupMessage, content: String, msgSeq: Int = 1) async throws -> SentMessage {
        try await api.sendGroupMessage(groupOpenID: message.groupOpenID, OutgoingMessage(content: content, msgID: message.id, msgSeq: msgSeq))
    }

    /// A passive reply to a direct message.
    @discardableResult
    public func reply(to message: C2CMessage, content: String, msgSeq: Int = 1) async throws -> SentMessage {
        let openID = message.author.userOpenID ?? message.author.id
        return try await api.sendC2CMessage(userOpenID: openID, OutgoingMessage(content: content, msgID: message.id, msgSeq: msgSeq))
    }
}
