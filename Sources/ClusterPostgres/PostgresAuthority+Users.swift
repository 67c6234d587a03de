import ClusterCore
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

// The user caches of a cluster of hosts. Each host keeps its own SQLite file; what one host writes that the others
// may hold stale (a changed name, or a user new to its file) it publishes here, and every other host applies it to
// its file. A publication is a row (kept for a while) and a NOTIFY with the same text, in one transaction: the
// notification reaches the listening hosts at once, and the row is what a host that was not listening (a restart,
// a cut link, the database restarted) reads when it listens again. Applying a publication twice does nothing more
// (the newer observation wins), so a host reads again from a margin before where it knows it heard everything.

extension PostgresAuthority {
    /// The channel every cluster's hosts listen on (a notification names its cluster and host).
    public static let userChannel = "botcluster_users"

    /// The most bytes of one publication's text: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more, and the
    /// notification's header (host and cluster) goes in the same payload.
    public var maxUserChangeBytes: Int { 7_900 - cluster.utf8.count }

    /// Publishes `payloads` (each at most `maxUserChangeBytes`) for the other hosts, in one transaction: kept as rows
    /// and notified. With `pruneOlderThan`, rows older than that go in the same transaction.
    public func publishUserChanges(_ payloads: [String], host: Int, pruneOlderThan retention: Duration? = nil) async throws {
        guard !payloads.isEmpty || retention != nil else { return }
        let cluster = self.cluster
        let header = "\(host) \(cluster)\n"
        try await transaction("publishing changed users") { connection in
            if !payloads.isEmpty {
                try await connection.query(
                    """
                    INSERT INTO botcluster_user_changes (cluster, at, host, payload)
                    SELECT \(cluster), clock_timestamp(), \(Int32(host)), p FROM unnest(\(payloads)) WITH ORDINALITY AS u(p, i) ORDER BY i
                    """, logger: Self.quiet)
                try await connection.query(
                    "SELECT pg_notify(\(Self.userChannel), \(header) || p) FROM unnest(\(payloads)) WITH ORDINALITY AS u(p, i) ORDER BY i",
                    logger: Self.quiet)
            }
            if let retention {
                try await connection.query(
                    "DELETE FROM botcluster_user_changes WHERE cluster = \(cluster) AND at < clock_timestamp() - make_interval(secs => \(retention.seconds))",
                    logger: Self.quiet)
            }
        }
    }

    /// The publications of the other hosts from `since` on (the database's clock), oldest first, at most `limit`.
    public func userChanges(from since: Date, host: Int, limit: Int) async throws -> [(at: Date, payload: String)] {
        let cluster = self.cluster
        return try await transaction("reading changed users") { connection in
            let rows = try await connection.query(
                """
                SELECT at, payload FROM botcluster_user_changes
                WHERE cluster = \(cluster) AND host <> \(Int32(host)) AND at >= \(since) ORDER BY at LIMIT \(Int32(clamping: limit))
                """, logger: Self.quiet)
            var changes: [(at: Date, payload: String)] = []
            for try await (at, payload) in rows.decode((Date, String).self) { changes.append((at, payload)) }
            return changes
        }
    }

    /// The text of a notification another host of this cluster published, or nil (this host's own, another
    /// cluster's, or not a publication at all).
    func publication(_ payload: String, host: Int) -> String? {
        guard let newline = payload.firstIndex(of: "\n") else { return nil }
        let header = payload[..<newline].split(separator: " ", maxSplits: 1)
        guard header.count == 2, let from = Int(header[0]), from != host, header[1] == cluster else { return nil }
        return String(payload[payload.index(after: newline)...])
    }

    /// Listens for the other hosts' publications on a connection of its own until that fails or the task is
    /// cancelled (it never returns otherwise).
    ///
    /// - `subscribed` runs once the connection listens, with the database's time then: everything published from
    ///   then on is received, so what came before is the caller's to read (`userChanges`). If it throws, the
    ///   listening ends with its error.
    /// - `receive` gets each publication of another host of this cluster, in the order they were committed.
    /// - `alive` gets the database's time every `keepalive`, read on the listening connection: every publication
    ///   committed before it was read has been received. A read that takes longer than the store's timeout closes
    ///   the connection (a silent link is not waited on); so does one not listening within the timeout.
    public func listenUserChanges(
        host: Int, keepalive: Duration,
        subscribed: @escaping @Sendable (Date) async throws -> Void,
        alive: @escaping @Sendable (Date) -> Void,
        receive: @escaping @Sendable (String) async -> Void
    ) async throws {
        let timeout = self.timeout
        let progress = ListenProgress()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [client] in
                try await client.withConnection { held in
                    progress.connection.withLock { $0 = held }
                    try await held.listen(on: Self.userChannel) { notifications in
                        let now = try await Self.clock(of: held, within: timeout)
                        progress.listening.withLock { $0 = true }
                        try await subscribed(now)
                        try await withThrowingTaskGroup(of: Void.self) { inner in
                            inner.addTask {
                                for try await notification in notifications {
                                    if let text = self.publication(notification.payload, host: host) { await receive(text) }
                                }
                                throw ListenEnded()
                            }
                            inner.addTask {
                                while true {
                                    try await Task.sleep(for: keepalive)
                                    alive(try await Self.clock(of: held, within: timeout))
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

    /// The database's clock, read on `connection` within `limit` (closed under the query when it takes longer).
    static func clock(of connection: PostgresConnection, within limit: Duration) async throws -> Date {
        try await withDeadline(limit, "reading the store's clock") {
            try await withTaskCancellationHandler {
                let rows = try await connection.query("SELECT clock_timestamp()", logger: quiet)
                for try await at in rows.decode(Date.self) { return at }
                throw ListenEnded()
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
