import ClusterCore
import Foundation
import GRDB
import Logging
import SQLiteSupport

/// A user as the cache holds it (and, as JSON, as a host of several publishes it to the others).
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

    /// Whether the fields a bot sees differ.
    func differs(from other: CachedUser) -> Bool {
        username != other.username || avatar != other.avatar || bot != other.bot
    }
}

/// The shared `users.sqlite` of a cluster: WAL, a busy timeout, one GRDB pool per process. The supervisor
/// creates and migrates it (`prepare`); workers open it (`open`). It is a cache: a file that is corrupt or of an
/// unknown schema is moved aside and made anew, never a crash loop.
public final class UserStore: Sendable {
    let pool: DatabasePool
    let reader: UserReader
    public let path: String

    static func migrator() -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-users") { db in
            try db.create(table: "users") { t in
                t.primaryKey("id", .text)
                t.column("username", .text).notNull()
                t.column("avatar", .text)
                t.column("bot", .boolean).notNull()
                t.column("updated_at", .double).notNull()
                t.column("shard", .integer).notNull()
            }
        }
        // Several hosts: a row written here that the other hosts may hold stale stays marked until the supervisor
        // published it, so that a supervisor killed before it could is followed by one that does.
        migrator.registerMigration("v2-unpublished") { db in
            try db.alter(table: "users") { t in t.add(column: "unpublished", .boolean).notNull().defaults(to: false) }
            try db.execute(sql: "CREATE INDEX users_unpublished ON users (updated_at) WHERE unpublished")
        }
        return migrator
    }

    static func configuration() -> Configuration {
        var configuration = Configuration()
        // Concurrent writers wait for each other instead of failing with SQLITE_BUSY.
        configuration.busyMode = .timeout(10)
        return configuration
    }

    init(pool: DatabasePool, path: String) throws {
        self.pool = pool
        self.path = path
        reader = try UserReader(path: path)
    }

    /// Creates or migrates the file; moves an unusable one aside (logged) and starts afresh.
    public static func prepare(path: String, logger: Logger) throws -> UserStore {
        try openRecovering(path: path, what: "user cache", logger: logger, open: migrate)
    }

    static func migrate(_ path: String) throws -> UserStore {
        try UserStore(pool: openMigrated(path: path, configuration: configuration(), migrator: migrator()), path: path)
    }

    /// Opens a file the supervisor prepared.
    public static func open(path: String) throws -> UserStore {
        let pool = try DatabasePool(path: path, configuration: configuration())
        restrictToOwner(path)
        let complete = try pool.read { db in try migrator().hasCompletedMigrations(db) }
        guard complete else { throw DatabaseError(message: "\(path) is not a prepared user cache (the supervisor prepares it at launch)") }
        return try UserStore(pool: pool, path: path)
    }

    /// One user by id (a point read on the dedicated read connection).
    public func user(_ id: String) throws -> CachedUser? {
        try reader.user(id)
    }

    /// What one batch write did.
    public struct UpsertResult: Sendable, Equatable {
        /// Users that existed with other fields and were overwritten (the ones other workers may hold stale).
        public var changed: [String] = []
        /// Users the file already knew from a later observation: not written; the writer's copy is the stale one.
        public var superseded: [String] = []
        /// Users the file did not hold (another host of the cluster may hold them stale).
        public var added: [String] = []
    }

    /// Writes users in one transaction. An observation never replaces a later one (`updatedAt`): two workers
    /// that saw a user on either side of a rename agree on the newer name whatever order their batches land in.
    ///
    /// With `outbox` (a worker of a host of several), the users written with changed fields or new to the file are
    /// marked until `markPublished`: the supervisor publishes what is marked to the other hosts (`unpublished`), and
    /// one that starts after a crash finds what its predecessor had not. Without it (one host, or another host's
    /// observation applied here) a user written is unmarked: a newer observation from elsewhere supersedes what
    /// this host had not published yet.
    public func upsert(_ users: [CachedUser], outbox: Bool = false) async throws -> UpsertResult {
        try await pool.write { db in
            let select = try db.cachedStatement(sql: "SELECT username, avatar, bot, updated_at FROM users WHERE id = ?")
            let write = try db.cachedStatement(sql: """
                INSERT INTO users (id, username, avatar, bot, updated_at, shard, unpublished) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET username = excluded.username, avatar = excluded.avatar, bot = excluded.bot,
                updated_at = excluded.updated_at, shard = excluded.shard,
                unpublished = CASE WHEN ? THEN excluded.unpublished OR users.unpublished ELSE excluded.unpublished END
                """)
            var result = UpsertResult()
            for user in users {
                var news = true
                if let row = try Row.fetchOne(select, arguments: [user.id]) {
                    let username: String = row[0]
                    let avatar: String? = row[1]
                    let bot: Bool = row[2]
                    let updatedAt: Double = row[3]
                    let differs = username != user.username || avatar != user.avatar || bot != user.bot
                    // Two observations of one moment with other fields (two hosts' clocks agree to the microsecond):
                    // the same one wins in every file, whichever lands first.
                    let tieLost = updatedAt == user.updatedAt && differs
                        && (username, avatar == nil ? 0 : 1, avatar ?? "", bot ? 1 : 0) > (user.username, user.avatar == nil ? 0 : 1, user.avatar ?? "", user.bot ? 1 : 0)
                    if updatedAt > user.updatedAt || tieLost {
                        if differs { result.superseded.append(user.id) }
                        continue
                    }
                    if differs { result.changed.append(user.id) }
                    news = differs
                } else {
                    result.added.append(user.id)
                }
                try write.execute(arguments: [user.id, user.username, user.avatar, user.bot, user.updatedAt, user.shard, outbox && news, outbox])
            }
            return result
        }
    }

    /// Users written with `outbox` and not published since, oldest first, at most `limit`.
    public func unpublished(limit: Int) async throws -> [CachedUser] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT id, username, avatar, bot, updated_at, shard FROM users WHERE unpublished ORDER BY updated_at LIMIT ?
                """, arguments: [limit]).map { row in
                CachedUser(id: row[0], username: row[1], avatar: row[2], bot: row[3], updatedAt: row[4], shard: row[5])
            }
        }
    }

    /// These observations are published: unmarked where the file still holds exactly them. A user written again
    /// meanwhile stays marked, and goes in the next publication (once more when only its time moved).
    public func markPublished(_ users: [CachedUser]) async throws {
        guard !users.isEmpty else { return }
        try await pool.write { db in
            let mark = try db.cachedStatement(sql: """
                UPDATE users SET unpublished = 0
                WHERE id = ? AND updated_at = ? AND username = ? AND avatar IS ? AND bot = ? AND unpublished
                """)
            for user in users { try mark.execute(arguments: [user.id, user.updatedAt, user.username, user.avatar, user.bot]) }
        }
    }

    /// Marks these users for publication again (another host published an older observation of them: it must
    /// learn this file's newer one).
    public func markUnpublished(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        try await pool.write { db in
            let mark = try db.cachedStatement(sql: "UPDATE users SET unpublished = 1 WHERE id = ?")
            for id in ids { try mark.execute(arguments: [id]) }
        }
    }

    /// How many users the file holds.
    public func count() throws -> Int {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM users") ?? 0 }
    }
}
