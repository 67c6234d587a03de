/// A gateway shard: its id and the total number of shards in its layout, as `[id, total]` on the wire.
public struct ShardID: Hashable, Sendable, Codable, CustomStringConvertible {
    public var id: Int
    public var total: Int

    /// Shard `id` of a layout of `total` shards; the values are not checked.
    public init(_ id: Int, of total: Int) {
        self.id = id
        self.total = total
    }

    public var description: String { "\(id)/\(total)" }

    /// Parses "ID/TOTAL" as the CLI takes it.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = Int(parts[0]), let total = Int(parts[1]), total >= 1, id >= 0, id < total else {
            return nil
        }
        self.init(id, of: total)
    }

    /// Whether events of `guildID` go to this shard: `(guild_id >> 22) % total == id`.
    public func covers(guildID: UInt64) -> Bool {
        ShardMath.shard(forGuild: guildID, total: total) == id
    }

    /// Encodes the shard as `[id, total]`.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        try container.encode(id)
        try container.encode(total)
    }

    /// Decodes a shard from `[id, total]`; the values are not checked.
    public init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        let id = try container.decode(Int.self)
        let total = try container.decode(Int.self)
        self.init(id, of: total)
    }
}

/// The platform's sharding arithmetic.
public enum ShardMath {
    /// The shard a guild's events go to.
    public static func shard(forGuild guildID: UInt64, total: Int) -> Int {
        precondition(total > 0)
        return Int((guildID >> 22) % UInt64(total))
    }

    /// The identify bucket of a shard: `shard_id % max_concurrency`.
    public static func bucket(ofShard shard: Int, maxConcurrency: Int) -> Int {
        shard % max(1, maxConcurrency)
    }

    /// Recommended shard count for a number of guilds at a given density (at least one shard).
    public static func recommendedShards(guilds: Int, guildsPerShard: Int) -> Int {
        max(1, (guilds + max(1, guildsPerShard) - 1) / max(1, guildsPerShard))
    }
}
