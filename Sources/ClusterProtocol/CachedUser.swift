// A user as the cache holds it; also what a host of several publishes to the others through the store (as JSON).

/// A user as the cache holds it.
public struct CachedUser: Sendable, Equatable, Codable {
    public var id: String
    public var username: String
    public var avatar: String?
    public var bot: Bool
    /// Seconds since 1970 when a worker last wrote it.
    public var updatedAt: Double
    /// The shard that saw it last.
    public var shard: Int

    /// A user as a worker saw it at `updatedAt` on `shard`.
    public init(id: String, username: String, avatar: String?, bot: Bool, updatedAt: Double, shard: Int) {
        self.id = id
        self.username = username
        self.avatar = avatar
        self.bot = bot
        self.updatedAt = updatedAt
        self.shard = shard
    }
}
