import ClusterCore
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

// The user caches of a cluster of hosts. Each host keeps its own SQLite file; what one host writes that the others
// may hold stale (a changed name, or a user new to its file) it publishes here as rows, and every other host reads
// the rows it has not read yet and applies them to its file.
//
// A reader's place is the last row it applied, in the order (transaction id, row id). A row is read only once the
// transaction that wrote it is over for everyone (its id is below the oldest transaction still running), so no row
// can commit behind a reader's place later: a reader never skips a row, however transactions interleave, and needs
// no clock. A NOTIFY on the cluster's name only wakes the readers (a forged one costs a read, nothing more); the
// rows, which only the store's users may write, are the truth.

extension PostgresAuthority {
    /// The channel every cluster's hosts listen on; a notification's payload is the cluster's name.
    public static let userChannel = "botcluster_users"

    /// The most bytes of one publication's text (a row's payload): a reader holds at most a page of them.
    public static let maxUserChangeBytes = 7_900

    /// Where a reader of the publications stands: the last row it applied.
    public struct UserChangeCursor: Sendable, Equatable, Comparable {
        /// The id of the transaction that wrote the row, and the row's own id.
        public var transaction: Int64
        public var row: Int64

        /// Before every row.
        public static let start = UserChangeCursor(transaction: 0, row: 0)

        /// The place after the row `row` of transaction `transaction`.
        public init(transaction: Int64, row: Int64) {
            self.transaction = transaction
            self.row = row
        }

        /// Whether `a` comes before `b` in the order readers read.
        public static func < (a: Self, b: Self) -> Bool { (a.transaction, a.row) < (b.transaction, b.row) }
    }

    /// One publication: where it stands, whether the reader's own host wrote it (then it only moves the reader's
    /// place), and its text (nil for its own, and when it is longer than a publication may be).
    public struct UserChange: Sendable {
        public var cursor: UserChangeCursor
        public var own: Bool
        public var payload: String?
    }

    /// Publishes `payloads` for the other hosts in one transaction: rows, and a notification that wakes the readers.
    public func publishUserChanges(_ payloads: [String], host: Int) async throws {
        guard !payloads.isEmpty else { return }
        let cluster = self.cluster
        try await transaction("publishing changed users") { connection in
            try await connection.query(
                """
                INSERT INTO botcluster_user_publications (cluster, xact, at, host, payload)
                SELECT \(cluster), pg_current_xact_id()::text::bigint, now(), \(Int32(host)), p
                FROM unnest(\(payloads)) WITH ORDINALITY AS u(p, i) ORDER BY i
                """, logger: Self.quiet)
            try await connection.query("SELECT pg_notify(\(Self.userChannel), \(cluster))", logger: Self.quiet)
        }
    }

    /// The most publications one pruning transaction forgets.
    public static let pruneBatch = 10_000

    /// Forgets the publications older than `retention` that every reader could have read (a row held back behind
    /// a long transaction stays), at most `batch` at a time; records the newest transaction forgotten, so that a
    /// reader left behind it knows it missed some. Returns how many rows went.
    @discardableResult
    public func pruneUserChanges(olderThan retention: Duration, batch: Int = pruneBatch) async throws -> Int {
        let cluster = self.cluster
        return try await transaction("forgetting old user publications") { connection in
            let rows = try await connection.query(
                """
                WITH gone AS (
                    DELETE FROM botcluster_user_publications WHERE id IN (
                        SELECT id FROM botcluster_user_publications
                        WHERE cluster = \(cluster) AND at < now() - make_interval(secs => \(retention.seconds))
                            AND xact < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                        LIMIT \(Int32(clamping: batch)))
                    RETURNING xact),
                horizon AS (
                    UPDATE botcluster_clusters SET users_pruned_xact = greatest(users_pruned_xact, (SELECT max(xact) FROM gone))
                    WHERE cluster = \(cluster) AND EXISTS (SELECT 1 FROM gone))
                SELECT count(*)::int4 FROM gone
                """, logger: Self.quiet)
            var count = 0
            for try await gone in rows.decode(Int32.self) { count = Int(gone) }
            return count
        }
    }

    /// A page of the other hosts' publications (see `userChanges`).
    public struct UserChangePage: Sendable {
        /// The publications after the reader's place whose transactions are over for everyone, in order.
        public var changes: [UserChange]
        /// Committed publications wait behind a transaction still running (a write of any kind, a lease round of
        /// another host): a read moments later gets them.
        public var heldBack: Bool
        /// The newest transaction whose publications were forgotten (pruned): a reader whose place is before it
        /// missed some.
        public var pruned: Int64
        /// Every transaction id so far is below this: a place at or past it belongs to another database (one
        /// restored or moved while the hosts ran), and reads from the start again.
        public var horizon: Int64
    }

    /// The publications after `cursor` whose transactions are over for everyone, in order, at most `limit` (its own
    /// host's too, without their text: they move its place, so that pruning them never looks like a gap), read in
    /// one snapshot with what a reader needs to know about the rest.
    public func userChanges(after cursor: UserChangeCursor, host: Int, limit: Int) async throws -> UserChangePage {
        let cluster = self.cluster
        return try await transaction("reading changed users") { connection in
            // One snapshot for every statement: a transaction that ends between two would otherwise leave its
            // publication neither read (the first saw it running) nor said to be held back (the second, over).
            try await connection.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", logger: Self.quiet)
            let rows = try await connection.query(
                """
                SELECT xact, id, host = \(Int32(host)),
                    CASE WHEN host <> \(Int32(host)) AND octet_length(payload) <= \(Int32(Self.maxUserChangeBytes)) THEN payload END
                FROM botcluster_user_publications
                WHERE cluster = \(cluster) AND (xact, id) > (\(cursor.transaction), \(cursor.row))
                    AND xact < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                ORDER BY xact, id LIMIT \(Int32(clamping: limit))
                """, logger: Self.quiet)
            var changes: [UserChange] = []
            for try await (xact, id, own, payload) in rows.decode((Int64, Int64, Bool, String?).self) {
                changes.append(UserChange(cursor: UserChangeCursor(transaction: xact, row: id), own: own, payload: payload))
            }
            let state = try await connection.query(
                """
                SELECT EXISTS (SELECT 1 FROM botcluster_user_publications WHERE cluster = \(cluster)
                        AND xact >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint AND host <> \(Int32(host))),
                    coalesce((SELECT users_pruned_xact FROM botcluster_clusters WHERE cluster = \(cluster)), 0),
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint
                """, logger: Self.quiet)
            var page = UserChangePage(changes: changes, heldBack: false, pruned: 0, horizon: .max)
            for try await (held, pruned, horizon) in state.decode((Bool, Int64, Int64).self) {
                page.heldBack = held
                page.pruned = pruned
                page.horizon = horizon
            }
            return page
        }
    }

    /// Listens for the cluster's publications on a connection of its own until that fails or the task is cancelled
    /// (it never returns otherwise): `wake` runs once the connection listens, at every notification for this
    /// cluster, and every `keepalive` (a round trip on the listening connection then, within the store's timeout:
    /// a silent link is not waited on). The reader reads at each wake; the notification's only news is "read".
    public func listenUserChanges(keepalive: Duration, wake: @escaping @Sendable () -> Void) async throws {
        let timeout = self.timeout
        let cluster = self.cluster
        let progress = ListenProgress()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [client] in
                try await client.withConnection { held in
                    progress.connection.withLock { $0 = held }
                    try await held.listen(on: Self.userChannel) { notifications in
                        try await Self.ping(held, within: timeout)
                        progress.listening.withLock { $0 = true }
                        wake()
                        try await withThrowingTaskGroup(of: Void.self) { inner in
                            inner.addTask {
                                for try await notification in notifications where notification.payload == cluster { wake() }
                                throw ListenEnded()
                            }
                            inner.addTask {
                                while true {
                                    try await Task.sleep(for: keepalive)
                                    try await Self.ping(held, within: timeout)
                                    wake()
                                }
                            }
                            try await inner.next()
                            inner.cancelAll()
                        }
                    }
                }
            }
            group.addTask {
                // A connection the pool cannot give, or one on which LISTEN gets no answer, is not waited on.
                try await Task.sleep(for: timeout)
                if !progress.listening.withLock({ $0 }) {
                    if let held = progress.connection.withLock({ $0 }) { Self.closeNow(held) }
                    throw TimeoutError(what: "listening for changed users", limit: timeout)
                }
                while true { try await Task.sleep(for: .seconds(3_600)) }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// How far a listening got: its connection (once the pool gave one), and whether it listens.
    final class ListenProgress: Sendable {
        let connection = Mutex<PostgresConnection?>(nil)
        let listening = Mutex(false)
    }

    /// The listening connection ended without an error (the server closed it).
    struct ListenEnded: Error, CustomStringConvertible {
        var description: String { "the listening connection ended" }
    }

    /// One round trip on `connection` within `limit` (closed under the query when it takes longer).
    static func ping(_ connection: PostgresConnection, within limit: Duration) async throws {
        try await withDeadline(limit, "an answer on the listening connection") {
            try await withTaskCancellationHandler {
                try await connection.query("SELECT 1", logger: quiet)
            } onCancel: {
                closeNow(connection)
            }
        }
    }

    /// Closes `connection` without waiting: whatever runs on it fails at once.
    static func closeNow(_ connection: PostgresConnection) {
        let closed: EventLoopFuture<Void> = connection.close()
        _ = closed
    }
}
