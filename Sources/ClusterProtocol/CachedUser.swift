// A user as the cache holds it: a value of the wire too (a worker reports the users it wrote, and a host of a
// cluster of several hosts publishes them to the others).

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

extension IPCMessage {
    /// The most bytes of users one `usersWritten` message carries: a batch of any length goes in several, each far
    /// below the supervisor's frame limit.
    public static let usersWrittenBytes = 256 * 1024

    /// A batch's `usersWritten` messages, each at most about `maxBytes` on the wire. A user alone over `maxBytes`
    /// (a name or avatar no platform gives) is left out: the host's file has it; only the telling is skipped.
    public static func usersWrittenChunks(changed: [CachedUser], added: [CachedUser], maxBytes: Int = usersWrittenBytes) -> [IPCMessage] {
        var messages: [IPCMessage] = []
        var chunk: (changed: [CachedUser], added: [CachedUser]) = ([], [])
        var bytes = 0
        for (user, isChanged) in changed.map({ ($0, true) }) + added.map({ ($0, false) }) {
            let size = user.wireSize
            guard size <= maxBytes else { continue }
            if bytes + size > maxBytes {
                messages.append(.usersWritten(changed: chunk.changed, added: chunk.added))
                chunk = ([], [])
                bytes = 0
            }
            if isChanged { chunk.changed.append(user) } else { chunk.added.append(user) }
            bytes += size
        }
        if !chunk.changed.isEmpty || !chunk.added.isEmpty { messages.append(.usersWritten(changed: chunk.changed, added: chunk.added)) }
        return messages
    }
}

extension CachedUser {
    /// Its size in an IPC frame: three strings with their lengths, the flags and the numbers.
    public var wireSize: Int { 22 + id.utf8.count + username.utf8.count + (avatar?.utf8.count ?? 0) + (avatar == nil ? 0 : 4) }
}
