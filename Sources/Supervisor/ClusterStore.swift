import ClusterCore
import Foundation
import GRDB
import Logging
import Synchronization
import UserCache

/// The supervisor's SQLite file in the run directory (`cluster.sqlite`, WAL): the sessions replacements resume.
/// Versioned migrations; a file that is corrupt or of an unknown schema is moved aside and recreated.
public final class ClusterStore: Sendable {
    let pool: DatabasePool
    let logger: Logger
    /// Session updates not yet written: the latest per shard, written together by `flush()`.
    let pending = Mutex<[ShardID: (id: String, seq: Int)?]>([:])

    public init(path: String, logger: Logger) throws {
        self.logger = logger
        pool = try openRecovering(path: path, what: "cluster database", logger: logger, open: Self.open)
    }

    static func migrator() -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-sessions") { db in
            try db.create(table: "sessions") { t in
                t.column("shard", .integer).notNull()
                t.column("total", .integer).notNull()
                t.column("session_id", .text).notNull()
                t.column("seq", .integer).notNull()
                t.column("updated_at", .double).notNull()
                t.primaryKey(["shard", "total"])
            }
        }
        migrator.registerMigration("v2-handled-events") { db in
            try db.create(table: "handled_events") { t in
                t.primaryKey("key", .text)
                t.column("handled_at", .double).notNull()
            }
            try db.create(index: "handled_events_by_time", on: "handled_events", columns: ["handled_at"])
        }
        return migrator
    }

    static func open(_ path: String) throws -> DatabasePool {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        return try openMigrated(path: path, configuration: configuration, migrator: migrator())
    }

    /// The stored sessions of the layout with `total` shards, by shard id.
    public func sessions(total: Int) throws -> [Int: (id: String, seq: Int)] {
        try pool.read { db in
            var result: [Int: (id: String, seq: Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT shard, session_id, seq FROM sessions WHERE total = ?", arguments: [total]) {
                result[row["shard"]] = (row["session_id"], row["seq"])
            }
            return result
        }
    }

    public func save(shard: ShardID, id: String, seq: Int) {
        pending.withLock { $0[shard] = (id, seq) }
    }

    public func forget(shard: ShardID) {
        pending.withLock { $0[shard] = .some(nil) }
    }

    /// Event keys handled within `ttl` (wall clock), mapped onto the monotonic clock for the claim ledger.
    public func handledEvents(within ttl: Duration) throws -> [(key: String, at: MonotonicInstant)] {
        let now = Date().timeIntervalSince1970
        let monotonicNow = MonotonicInstant.now()
        return try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT key, handled_at FROM handled_events WHERE handled_at > ? ORDER BY handled_at", arguments: [now - ttl.seconds]).map { row in
                let age = now - (row["handled_at"] as Double)
                return (row["key"], monotonicNow - .milliseconds(Int64(age * 1000)))
            }
        }
    }

    /// Records handled event keys, and forgets those older than the time to live, in one transaction.
    public func saveHandled(_ keys: [(key: String, at: MonotonicInstant)], ttl: Duration = .seconds(600)) {
        guard !keys.isEmpty else { return }
        let now = Date().timeIntervalSince1970
        let monotonicNow = MonotonicInstant.now()
        do {
            try pool.write { db in
                let insert = try db.cachedStatement(sql: "INSERT OR REPLACE INTO handled_events (key, handled_at) VALUES (?, ?)")
                for (key, at) in keys {
                    try insert.execute(arguments: [key, now - (monotonicNow - at).seconds])
                }
                try db.execute(sql: "DELETE FROM handled_events WHERE handled_at < ?", arguments: [now - ttl.seconds])
            }
        } catch {
            logger.error("cannot record handled events", metadata: ["error": "\(error)"])
        }
    }

    /// Forgets every stored session of a layout (it was replaced by a rescale).
    public func forgetLayout(total: Int) {
        flush()
        do {
            try pool.write { db in try db.execute(sql: "DELETE FROM sessions WHERE total = ?", arguments: [total]) }
        } catch {
            logger.error("cannot forget the sessions of the old layout", metadata: ["error": "\(error)"])
        }
    }

    /// Writes what changed since the last flush, in one transaction.
    public func flush() {
        let changes = pending.withLock { pending -> [ShardID: (id: String, seq: Int)?] in
            defer { pending = [:] }
            return pending
        }
        guard !changes.isEmpty else { return }
        do {
            try pool.write { db in
                let now = Date().timeIntervalSince1970
                for (shard, session) in changes {
                    if let session {
                        try db.execute(
                            sql: "INSERT INTO sessions (shard, total, session_id, seq, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(shard, total) DO UPDATE SET session_id = excluded.session_id, seq = excluded.seq, updated_at = excluded.updated_at",
                            arguments: [shard.id, shard.total, session.id, session.seq, now]
                        )
                    } else {
                        try db.execute(sql: "DELETE FROM sessions WHERE shard = ? AND total = ?", arguments: [shard.id, shard.total])
                    }
                }
            }
        } catch {
            logger.error("cannot write sessions", metadata: ["error": "\(error)"])
        }
    }
}
