import ClusterCore
import Foundation
import GRDB
import Logging
import SQLiteSupport
import Synchronization

/// The supervisor's SQLite file in the run directory (`cluster.sqlite`, WAL): the sessions replacements resume and
/// the events handled lately, both scoped to the platform identity they came from.
///
/// Disks fail, and this file is only a record the cluster can rebuild, so no failure of it stops the cluster:
/// - damaged (found at open or any time later): moved aside and made anew, and `takeRecovered()` tells the owner
///   to write everything it holds in memory again;
/// - locked by another process: at open, an error naming the file (a healthy file is never moved aside); later,
///   like a full disk:
/// - full (or any other write error): the writes stay pending, are tried again at every flush, and the failure
///   is logged at most every ten seconds.
public final class ClusterStore: Sendable {
    /// What this file's sessions and handled events belong to: the app and the gateway it was given. A session of
    /// another gateway (an emulator since restarted, another environment) would only be refused; an event id of
    /// another platform says nothing about this one.
    public let platform: String
    let path: String
    let logger: Logger
    let state: Mutex<State>
    let writeFailures = RateLimitedLog()

    struct State {
        var pool: DatabasePool
        /// Session updates not yet written: the latest per shard (nil: forget it).
        var sessions: [ShardID: (id: String, seq: Int)?] = [:]
        /// Handled event keys not yet written, oldest first.
        var handled: [(key: String, at: MonotonicInstant)] = []
        var handledTTL: Duration = .seconds(600)
        /// Layouts (shard totals) whose sessions are to be deleted.
        var forgottenLayouts: Set<Int> = []
        /// The file was damaged and made anew since the owner last asked.
        var recovered = false
        /// Webhook events handled, whose inbox rows are to be deleted.
        var webhookDone: [String] = []
    }

    /// The most handled keys kept pending while writes fail (a full disk for a long time): the oldest go first.
    static let maxPendingHandled = 1_000_000

    /// Opens (or creates) the file for `platform` ("app id + gateway URL"). Throws, naming the file, when another
    /// process holds it locked past the busy timeout or it cannot be opened at all; a damaged file is replaced.
    public init(path: String, platform: String, logger: Logger, busyTimeout: Duration = .seconds(5)) throws {
        self.path = path
        self.platform = platform
        self.logger = logger
        let pool = try openRecovering(path: path, what: "cluster database", logger: logger) { try Self.open($0, busyTimeout: busyTimeout) }
        state = Mutex(State(pool: pool))
        // Sessions of other platforms are only refused once they are this old: drop them. (In WAL mode another
        // process's write transaction does not stop reads: the file opens, and writes wait for it.)
        do {
            try pool.write { db in
                try db.execute(sql: "DELETE FROM sessions WHERE platform <> ? AND updated_at < ?", arguments: [platform, Date().timeIntervalSince1970 - 3600])
            }
        } catch where SQLiteFailure(error) == .busy {
            logger.warning("\(path) is locked by another process; the cluster runs, and its writes wait until it lets go", metadata: ["error": "\(error)"])
        } catch {
            logger.warning("cannot clean \(path)", metadata: ["error": "\(error)"])
        }
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
        // Both records scoped to the platform they came from. Rows written before carry no platform: they are
        // dropped (a stored session of an unknown gateway would only be refused).
        migrator.registerMigration("v3-platform-scope") { db in
            try db.drop(table: "sessions")
            try db.create(table: "sessions") { t in
                t.column("platform", .text).notNull()
                t.column("shard", .integer).notNull()
                t.column("total", .integer).notNull()
                t.column("session_id", .text).notNull()
                t.column("seq", .integer).notNull()
                t.column("updated_at", .double).notNull()
                t.primaryKey(["platform", "shard", "total"])
            }
            try db.drop(table: "handled_events")
            try db.create(table: "handled_events") { t in
                t.column("platform", .text).notNull()
                t.column("key", .text).notNull()
                t.column("handled_at", .double).notNull()
                t.primaryKey(["platform", "key"])
            }
            try db.create(index: "handled_events_by_time", on: "handled_events", columns: ["handled_at"])
        }
        // Webhook events acknowledged to the platform and not yet handled: written before the acknowledgement, deleted
        // once handled, read back at start (a supervisor that died keeps them).
        migrator.registerMigration("v4-webhook-inbox") { db in
            try db.create(table: "webhook_inbox") { t in
                t.column("platform", .text).notNull()
                t.column("event_id", .text).notNull()
                t.column("name", .text).notNull()
                t.column("payload", .text).notNull()
                t.column("received_at", .double).notNull()
                t.primaryKey(["platform", "event_id"])
            }
        }
        return migrator
    }

    static func open(_ path: String, busyTimeout: Duration) throws -> DatabasePool {
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout.seconds)
        return try openMigrated(path: path, configuration: configuration, migrator: migrator())
    }

    // MARK: reads (at start)

    /// The stored sessions of the layout with `total` shards, by shard id.
    public func sessions(total: Int) -> [Int: (id: String, seq: Int)] {
        read("the stored sessions", empty: [:]) { db in
            var result: [Int: (id: String, seq: Int)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT shard, session_id, seq FROM sessions WHERE platform = ? AND total = ?", arguments: [platform, total]) {
                result[row["shard"]] = (row["session_id"], row["seq"])
            }
            return result
        }
    }

    /// Event keys handled within `ttl` (wall clock), mapped onto the monotonic clock for the claim ledger.
    public func handledEvents(within ttl: Duration) -> [(key: String, at: MonotonicInstant)] {
        let now = Date().timeIntervalSince1970
        let monotonicNow = MonotonicInstant.now()
        return read("the handled events", empty: []) { db in
            try Row.fetchAll(
                db, sql: "SELECT key, handled_at FROM handled_events WHERE platform = ? AND handled_at > ? ORDER BY handled_at",
                arguments: [platform, now - ttl.seconds]
            ).map { row in
                let age = now - (row["handled_at"] as Double)
                return (row["key"], monotonicNow - .milliseconds(Int64(age * 1000)))
            }
        }
    }

    /// The webhook events acknowledged and not handled when the last supervisor stopped, in the order they were
    /// written. Throws, naming the file, when it cannot be read (locked past the busy timeout): acknowledged events
    /// must not be forgotten by starting without them. A damaged file is moved aside (and read as empty, logged).
    public func webhookInbox() throws -> [(id: String, name: String, payload: String)] {
        let pool = state.withLock { $0.pool }
        do {
            return try pool.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT event_id, name, payload FROM webhook_inbox WHERE platform = ? ORDER BY rowid", arguments: [platform]
                ).map { ($0["event_id"], $0["name"], $0["payload"]) }
            }
        } catch where SQLiteFailure(error) == .damaged {
            logger.error("\(path) is damaged: the webhook events it held (acknowledged, not handled) cannot be read; moving it aside", metadata: ["error": "\(error)"])
            recover(error)
            return []
        } catch {
            throw ClusterStoreError(description: "cannot read the webhook events acknowledged before the last stop from \(path): \(error)")
        }
    }

    /// Writes webhook events before they are acknowledged, in one transaction (the ingress batches them: one commit
    /// for every request that came while the last one ran). Throws when they are not on disk; nothing is
    /// acknowledged then.
    public func recordWebhook(_ events: [(id: String, name: String, payload: String)]) async throws {
        let pool = state.withLock { $0.pool }
        let platform = platform
        do {
            try await pool.write { db in
                let now = Date().timeIntervalSince1970
                let insert = try db.cachedStatement(sql: "INSERT OR IGNORE INTO webhook_inbox (platform, event_id, name, payload, received_at) VALUES (?, ?, ?, ?, ?)")
                for event in events { try insert.execute(arguments: [platform, event.id, event.name, event.payload, now]) }
            }
        } catch {
            if SQLiteFailure(error) == .damaged { recover(error) }
            throw error
        }
    }

    /// Queues the deletion of handled webhook events' rows for the next flush.
    public func webhookHandled(_ ids: [String]) {
        guard !ids.isEmpty else { return }
        state.withLock { state in
            state.webhookDone += ids
            // While writes fail for long: the oldest deletions go (their rows only come back at a restart, where
            // the claims skip what was handled).
            if state.webhookDone.count > Self.maxPendingHandled { state.webhookDone.removeFirst(state.webhookDone.count - Self.maxPendingHandled) }
        }
    }

    /// Reads with the file's failures handled: a damaged file is replaced (and reads as empty); a locked or
    /// unreadable one reads as empty for now, logged.
    func read<T>(_ what: String, empty: T, _ body: (Database) throws -> T) -> T {
        let pool = state.withLock { $0.pool }
        do {
            return try pool.read(body)
        } catch {
            if SQLiteFailure(error) == .damaged {
                recover(error)
            } else {
                logger.error("cannot read \(what) from \(path); starting without them", metadata: ["error": "\(error)"])
            }
            return empty
        }
    }

    // MARK: writes (batched)

    /// Queues `shard`'s session (its id and committed seq) for the next flush; the latest per shard wins.
    public func save(shard: ShardID, id: String, seq: Int) {
        state.withLock { $0.sessions[shard] = (id, seq) }
    }

    /// Queues the deletion of `shard`'s stored session for the next flush.
    public func forget(shard: ShardID) {
        state.withLock { $0.sessions[shard] = .some(nil) }
    }

    /// Forgets every stored session of a layout (it was replaced by a rescale), with the next flush.
    public func forgetLayout(total: Int) {
        state.withLock { state in
            state.forgottenLayouts.insert(total)
            for shard in state.sessions.keys where shard.total == total { state.sessions[shard] = nil }
        }
    }

    /// Queues handled event keys (remembered for `ttl`).
    public func saveHandled(_ keys: [(key: String, at: MonotonicInstant)], ttl: Duration = .seconds(600)) {
        guard !keys.isEmpty else { return }
        state.withLock { state in
            state.handledTTL = ttl
            state.handled += keys
            if state.handled.count > Self.maxPendingHandled {
                state.handled.removeFirst(state.handled.count - Self.maxPendingHandled)
            }
        }
    }

    /// Whether the file was damaged and made anew since the last call: the owner then saves everything it holds
    /// (every session, every handled key within the time to live) again.
    public func takeRecovered() -> Bool {
        state.withLock { state in
            defer { state.recovered = false }
            return state.recovered
        }
    }

    /// Whether writes are waiting (a full disk, a lock held by another process).
    public var hasPending: Bool {
        state.withLock { !$0.sessions.isEmpty || !$0.handled.isEmpty || !$0.forgottenLayouts.isEmpty || !$0.webhookDone.isEmpty }
    }

    /// Writes what is pending in one transaction (on the database's own queue: a lock held elsewhere makes this
    /// wait up to the busy timeout, suspended, never blocking a thread the cluster needs). On failure it all stays
    /// pending for the next flush.
    public func flush() async {
        let (pool, sessions, handled, layouts, ttl, webhookDone) = state.withLock { state in
            (state.pool, state.sessions, state.handled, state.forgottenLayouts, state.handledTTL, state.webhookDone)
        }
        guard !sessions.isEmpty || !handled.isEmpty || !layouts.isEmpty || !webhookDone.isEmpty else { return }
        let platform = platform
        do {
            try await pool.write { db in
                let now = Date().timeIntervalSince1970
                let monotonicNow = MonotonicInstant.now()
                for total in layouts {
                    try db.execute(sql: "DELETE FROM sessions WHERE platform = ? AND total = ?", arguments: [platform, total])
                }
                let upsert = try db.cachedStatement(sql: """
                    INSERT INTO sessions (platform, shard, total, session_id, seq, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(platform, shard, total) DO UPDATE SET session_id = excluded.session_id, seq = excluded.seq, updated_at = excluded.updated_at
                    """)
                for (shard, session) in sessions {
                    if let session {
                        try upsert.execute(arguments: [platform, shard.id, shard.total, session.id, session.seq, now])
                    } else {
                        try db.execute(sql: "DELETE FROM sessions WHERE platform = ? AND shard = ? AND total = ?", arguments: [platform, shard.id, shard.total])
                    }
                }
                if !handled.isEmpty {
                    let insert = try db.cachedStatement(sql: "INSERT OR REPLACE INTO handled_events (platform, key, handled_at) VALUES (?, ?, ?)")
                    for (key, at) in handled {
                        try insert.execute(arguments: [platform, key, now - (monotonicNow - at).seconds])
                    }
                    try db.execute(sql: "DELETE FROM handled_events WHERE handled_at < ?", arguments: [now - ttl.seconds])
                }
                // In the same transaction as the handled keys: a row still here after a crash is an event not
                // handled, or one whose key says so (the claims skip it).
                let delete = try db.cachedStatement(sql: "DELETE FROM webhook_inbox WHERE platform = ? AND event_id = ?")
                for id in webhookDone { try delete.execute(arguments: [platform, id]) }
            }
        } catch is CancellationError {
            // The flusher stops; what is pending stays for the last flush.
            return
        } catch {
            switch SQLiteFailure(error) {
            case .damaged:
                // What was pending is part of what the owner writes again after the recovery.
                recover(error)
            case .busy, .full, .other:
                writeFailures.log(
                    logger, .error, "cannot write \(path); keeping the writes and trying again",
                    metadata: ["error": "\(error)", "pending.sessions": "\(sessions.count)", "pending.handled": "\(handled.count)"]
                )
            }
            return
        }
        writeFailures.reset()
        state.withLock { state in
            // Only what was written leaves: updates made meanwhile stay.
            for (shard, session) in sessions where state.sessions[shard].map({ $0?.id == session?.id && $0?.seq == session?.seq }) == true {
                state.sessions[shard] = nil
            }
            state.handled.removeFirst(min(handled.count, state.handled.count))
            state.forgottenLayouts.subtract(layouts)
            state.webhookDone.removeFirst(min(webhookDone.count, state.webhookDone.count))
        }
    }

    /// The file is damaged: move it aside, open a fresh one, and have the owner write everything again.
    func recover(_ error: any Error) {
        state.withLock { state in
            moveAside(path: path, what: "cluster database", logger: logger, reason: "\(error)")
            do {
                state.pool = try Self.open(path, busyTimeout: .seconds(5))
                state.recovered = true
            } catch {
                logger.error("cannot make \(path) anew; the cluster goes on without a record", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// Why the cluster database cannot be used as the cluster needs.
public struct ClusterStoreError: Error, CustomStringConvertible {
    public var description: String

    /// An error that says `description`.
    public init(description: String) {
        self.description = description
    }
}
