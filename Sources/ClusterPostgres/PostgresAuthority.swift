import ClusterCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// PostgreSQL as the authority of a cluster that spans hosts: the hosts' heartbeats, the shard leases with their
/// fencing tokens and sessions, the identify slots and the day's session starts. Every supervisor started with
/// the same database and app id is one cluster.
///
/// Every expiry is on the database's clock (`now()`, the transaction's start, or `clock_timestamp()`); a host
/// turns the answers into deadlines of its own clock conservatively (see `LeaseKeeper`). Every operation has a
/// deadline (`timeout`); a failed one changes nothing, and the pool reconnects on its own after the server
/// restarts.
public final class PostgresAuthority: Sendable {
    /// One lease round: what this host renews, releases and writes, and what the store answered.
    public struct Round: Sendable {
        /// Shards renewed (their tokens matched and the leases had not expired).
        public var renewed: Set<Int>
        /// Leases granted in this round: token and stored session, by shard.
        public var acquired: [Int: (token: Int64, session: (id: String, seq: Int)?)]
        /// Leases released in this round.
        public var released: Set<Int>
        /// Live hosts: id and the status address each registered.
        public var hosts: [Int: String]
        /// The holder of every unexpired lease.
        public var holders: [Int: Int]
        /// When each unexpired lease expires, in seconds after the round's database time.
        public var expiresIn: [Int: Double]
        /// The routes paused by a 429 on another host, with the seconds left of each pause.
        public var pauses: [String: Double] = [:]
        /// The cluster's layout after the round: the shard count that serves, and the one a rescale gets ready.
        public var layout: Layout
    }

    /// The cluster's layout in the store: the shard count that serves, and a rescale's target while one runs.
    public struct Layout: Sendable, Equatable {
        /// The shard count whose layout serves.
        public var shards: Int
        /// The shard count a rescale gets ready (nil when none runs).
        public var next: Int?
        /// Every lease of the rescale's new layout is held and its worker ready: the serving layout's workers are to
        /// handle what they received (the fence) and say so in their leases, which the switch waits for.
        public var nextReady: Bool

        /// `shards` serving, `next` getting ready (nil: no rescale), `nextReady` when all of it is.
        public init(shards: Int, next: Int?, nextReady: Bool = false) {
            self.shards = shards
            self.next = next
            self.nextReady = nextReady
        }

        /// Counts a cluster can run (1...`ShardsConfig.maxCount`), a target other than the serving count.
        public var isValid: Bool {
            let counts = 1...ShardsConfig.maxCount
            return counts.contains(shards) && next.map { counts.contains($0) && $0 != shards } ?? true
        }
    }

    /// The cluster's row in the store is gone, or names a layout no cluster can run.
    public struct DamagedLayout: Error, CustomStringConvertible {
        /// What the row said (nil: no row).
        public var stored: Layout?
        public var description: String {
            guard let stored else { return "the cluster's row in botcluster_clusters is gone (restart a host to make it again)" }
            return "the cluster's row in botcluster_clusters is damaged: shards \(stored.shards), next_shards \(stored.next.map(String.init) ?? "null") (1...\(ShardsConfig.maxCount), the target other than the serving count)"
        }
    }

    /// A route paused by a 429 on this host, `seconds` from now: every host pauses it.
    public struct RoutePause: Sendable, Equatable {
        public var route: String
        public var seconds: Double

        /// `route` paused for `seconds` from now.
        public init(route: String, seconds: Double) {
            self.route = route
            self.seconds = seconds
        }
    }

    /// The most routes a round reads paused (the hosts' budgets keep at most 256 routes each).
    public static let maxPausesRead = 1024

    /// A session to store for a shard held under `token` (an empty id forgets the session).
    public struct SessionWrite: Sendable, Equatable {
        public var shard: Int
        public var token: Int64
        public var id: String
        public var seq: Int

        /// The session `id` at `seq` of `shard`, written only while `token` is the shard's current token.
        public init(shard: Int, token: Int64, id: String, seq: Int) {
            self.shard = shard
            self.token = token
            self.id = id
            self.seq = seq
        }
    }

    /// The answer to an identify slot request.
    public enum IdentifySlot: Sendable, Equatable {
        /// The slot is this holder's: the Identify may leave now.
        case granted
        /// Another Identify of the bucket is due or in flight: ask again after this long.
        case wait(Duration)
        /// The day's session starts are spent.
        case spent
    }

    let client: PostgresClient
    let cluster: String
    let logger: Logger
    let timeout: Duration
    let connectFailures: ConnectFailures
    /// What the status shows of the database (never the password).
    public let displayURL: String

    /// A client for `config`, scoped to the cluster `cluster` (the app id). Nothing connects before `run()`.
    public init(config: PostgresStoreConfig, cluster: String, logger: Logger) throws {
        var tls = PostgresClient.Configuration.TLS.disable
        if config.tls {
            var tlsConfig = TLSConfiguration.makeClientConfiguration()
            if let roots = config.trustRoots {
                tlsConfig.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(roots))
            }
            tls = .require(tlsConfig)
        }
        var configuration = PostgresClient.Configuration(
            host: config.host, port: config.port, username: config.user, password: config.password?.reveal(),
            database: config.database, tls: tls
        )
        configuration.options.connectTimeout = config.timeout
        configuration.options.minimumConnections = 1
        configuration.options.maximumConnections = 8
        configuration.options.keepAliveBehavior = .init(frequency: .seconds(10))
        // A host cut off in the middle of a transaction leaves its session on the server "idle in transaction",
        // holding the row locks it took (a claim, a lease) until TCP gives up, hours later: every other host's
        // claim of the same events then waits on it, and times out, round after round (seen in the cut-link test:
        // the cluster stopped replying for good). The server ends such a session once it has waited longer than a
        // call may take anyway, and a statement waits that long at most for a lock.
        let limit = "\(max(1, Int(config.timeout.seconds * 1000)))ms"
        configuration.options.additionalStartupParameters = [
            ("idle_in_transaction_session_timeout", limit), ("lock_timeout", limit),
        ]
        // The pool logs every failed connection attempt; while the server is away, the lease rounds say so once,
        // naming the last attempt's failure (kept by `PoolLogHandler`).
        let failures = ConnectFailures(password: config.password?.reveal())
        let pass = max(logger.logLevel, .warning)
        let background = Logger(label: logger.label) { [handler = logger.handler] _ in PoolLogHandler(next: handler, passLevel: pass, failures: failures) }
        client = PostgresClient(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, backgroundLogger: background)
        connectFailures = failures
        self.cluster = cluster
        self.logger = logger
        timeout = config.timeout
        displayURL = config.displayURL
    }

    /// Runs the connection pool until the task is cancelled.
    public func run() async {
        await client.run()
    }

    /// Runs `body` in a transaction, within the deadline. A query in flight does not end when its task is
    /// cancelled (a connection whose peer went silent would hold it until TCP gives up), so the deadline closes the
    /// connection under it: the query fails at once, and the pool opens a new connection.
    ///
    /// A call that found no connection within its deadline says why the last connection attempt failed (refused,
    /// authentication, no such database), when one failed within the last minute.
    @discardableResult
    func transaction<T: Sendable>(_ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let connected = Mutex(false)
        do {
            return try await withDeadline(timeout, what) { [client, logger] in
                try await client.withConnection { connection in
                    connected.withLock { $0 = true }
                    return try await withTaskCancellationHandler {
                        do {
                            return try await connection.withTransaction(logger: logger) { connection in try await body(connection) }
                        } catch let failed as PostgresTransactionError {
                            // Rolled back: what went wrong is the body's own error (the message names it, not the
                            // driver's wrapper around it).
                            if let cause = failed.closureError, failed.rollbackError == nil { throw cause }
                            throw failed
                        }
                    } onCancel: {
                        let closed: EventLoopFuture<Void> = connection.close()
                        _ = closed
                    }
                }
            }
        } catch let error as TimeoutError {
            // A query that ran out of time on a working connection is not a connection failure.
            guard !connected.withLock({ $0 }), let reason = connectFailures.recent(within: .seconds(60)) else { throw error }
            throw StoreUnreachable(timeout: error, lastConnectFailure: reason)
        }
    }

    /// A store call that got no connection in time, and why the last attempt to connect failed.
    public struct StoreUnreachable: Error, CustomStringConvertible {
        public var timeout: TimeoutError
        public var lastConnectFailure: String
        public var description: String { "\(timeout) (the last connection attempt failed: \(lastConnectFailure))" }
    }

    // MARK: schema

    /// Creates the tables when missing (one host at a time, under an advisory lock), and joins the cluster's
    /// layout: with no host of the cluster live, the layout is this host's `shards` (any rescale left half-done is
    /// forgotten); with one live, it is the cluster's as stored (a rescale moves it while hosts run, so a host's
    /// configured count may be behind). Returns the layout joined; its lease rows exist.
    @discardableResult
    public func prepare(shards: Int) async throws -> Layout {
        let cluster = self.cluster
        return try await transaction("creating the store's tables") { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(7710420)", logger: Self.quiet)
            for statement in Self.schema {
                // A column already there is not added again: ALTER TABLE takes its table's exclusive lock before it
                // looks, which stalls every other host's rounds and claims on that table (and deadlocked a host
                // joining beside busy ones).
                if let (table, column) = Self.addedColumn(statement) {
                    let rows = try await connection.query(
                        """
                        SELECT count(*) FROM information_schema.columns
                        WHERE table_schema = current_schema() AND table_name = \(table) AND column_name = \(column)
                        """, logger: Self.quiet)
                    var present = false
                    for try await count in rows.decode(Int64.self) { present = count > 0 }
                    if present { continue }
                }
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: Self.quiet)
            }
            try await connection.query(
                """
                INSERT INTO botcluster_clusters AS c (cluster, shards) VALUES (\(cluster), \(Int32(shards)))
                ON CONFLICT (cluster) DO UPDATE SET shards = EXCLUDED.shards, next_shards = NULL, change_until = NULL
                WHERE NOT EXISTS (SELECT 1 FROM botcluster_hosts WHERE cluster = \(cluster) AND expires_at > now())
                """, logger: Self.quiet)
            var layout = Layout(shards: shards, next: nil)
            let rows = try await connection.query("SELECT shards, next_shards FROM botcluster_clusters WHERE cluster = \(cluster)", logger: Self.quiet)
            for try await (stored, next) in rows.decode((Int32, Int32?).self) { layout = Layout(shards: Int(stored), next: next.map(Int.init)) }
            guard layout.isValid else { throw DamagedLayout(stored: layout) }
            try await connection.query(
                """
                INSERT INTO botcluster_leases (cluster, shards, shard)
                SELECT \(cluster), \(Int32(layout.shards)), g FROM generate_series(0, \(Int32(layout.shards)) - 1) AS g
                ON CONFLICT DO NOTHING
                """, logger: Self.quiet)
            return layout
        }
    }

    static let schema = [
        "CREATE TABLE IF NOT EXISTS botcluster_clusters (cluster text PRIMARY KEY, shards integer NOT NULL)",
        """
        CREATE TABLE IF NOT EXISTS botcluster_hosts (
            cluster text NOT NULL, host integer NOT NULL, address text NOT NULL DEFAULT '',
            expires_at timestamptz NOT NULL, PRIMARY KEY (cluster, host))
        """,
        """
        CREATE TABLE IF NOT EXISTS botcluster_leases (
            cluster text NOT NULL, shards integer NOT NULL, shard integer NOT NULL,
            owner integer, token bigint NOT NULL DEFAULT 0, expires_at timestamptz NOT NULL DEFAULT 'epoch',
            session_id text NOT NULL DEFAULT '', seq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (cluster, shards, shard))
        """,
        """
        CREATE TABLE IF NOT EXISTS botcluster_identify (
            cluster text NOT NULL, bucket integer NOT NULL, next_free timestamptz NOT NULL DEFAULT 'epoch',
            holder text, held_until timestamptz NOT NULL DEFAULT 'epoch', PRIMARY KEY (cluster, bucket))
        """,
        """
        CREATE TABLE IF NOT EXISTS botcluster_session_starts (
            cluster text PRIMARY KEY, remaining integer NOT NULL, reset_at timestamptz NOT NULL)
        """,
        """
        CREATE TABLE IF NOT EXISTS botcluster_claims (
            cluster text NOT NULL, key text NOT NULL, shard integer NOT NULL, token bigint NOT NULL,
            done boolean NOT NULL DEFAULT false, at timestamptz NOT NULL, PRIMARY KEY (cluster, key))
        """,
        "CREATE INDEX IF NOT EXISTS botcluster_claims_at ON botcluster_claims (cluster, at)",
        """
        CREATE TABLE IF NOT EXISTS botcluster_pauses (
            cluster text NOT NULL, route text NOT NULL, until timestamptz NOT NULL, host integer NOT NULL,
            PRIMARY KEY (cluster, route))
        """,
        """
        CREATE TABLE IF NOT EXISTS botcluster_user_publications (
            id bigserial PRIMARY KEY, cluster text NOT NULL, xact bigint NOT NULL, at timestamptz NOT NULL, host integer NOT NULL,
            payload text NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS botcluster_user_publications_order ON botcluster_user_publications (cluster, xact, id)",
        "CREATE INDEX IF NOT EXISTS botcluster_user_publications_at ON botcluster_user_publications (cluster, at)",
        "ALTER TABLE botcluster_clusters ADD COLUMN IF NOT EXISTS users_pruned_xact bigint NOT NULL DEFAULT 0",
        // A rescale across hosts: its target and deadline, each new lease's readiness, and a claim's layout.
        "ALTER TABLE botcluster_clusters ADD COLUMN IF NOT EXISTS next_shards integer",
        "ALTER TABLE botcluster_clusters ADD COLUMN IF NOT EXISTS change_until timestamptz",
        "ALTER TABLE botcluster_leases ADD COLUMN IF NOT EXISTS ready boolean NOT NULL DEFAULT false",
        "ALTER TABLE botcluster_claims ADD COLUMN IF NOT EXISTS shards integer NOT NULL DEFAULT 0",
        // A rescale across hosts: each serving lease's worker has handled everything it received since every new
        // shard was ready (the fence before the switch).
        "ALTER TABLE botcluster_leases ADD COLUMN IF NOT EXISTS fenced boolean NOT NULL DEFAULT false",
    ]

    /// The table and column of a schema statement that adds a column (`ALTER TABLE t ADD COLUMN IF NOT EXISTS c`).
    static func addedColumn(_ statement: String) -> (table: String, column: String)? {
        guard let match = statement.firstMatch(of: #/^ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+) /#) else { return nil }
        return (String(match.1), String(match.2))
    }

    static let quiet = Logger(label: "botcluster.postgres.quiet", factory: { _ in SwiftLogNoOpLogHandler() })

    // MARK: leases

    /// One lease round for `host` in a `shards`-shard layout, in one transaction: the host's heartbeat, its
    /// sessions written (fenced by token), its leases renewed and released, its routes paused by a 429 written, the
    /// view read (with every host's pauses), and the free shards `wanted` picks from that view taken.
    ///
    /// During a rescale, `ready` (the new layout's round) says which of the host's new leases have ready workers,
    /// and `fenced` (the serving layout's round) which of its serving leases have workers past the fence. The
    /// round that finds every new lease held and ready, and every serving lease held and fenced, switches the
    /// cluster to the new layout.
    public func round(
        host: Int, address: String, shards: Int, ttl: Duration, renew: [Int: Int64], release: [SessionWrite], sessions: [SessionWrite],
        pauses: [RoutePause] = [], ready: Set<Int>? = nil, fenced: Set<Int>? = nil,
        wanted: @escaping @Sendable (_ live: Set<Int>, _ holders: [Int: Int]) -> [Int]
    ) async throws -> Round {
        let cluster = self.cluster
        let ttlSeconds = ttl.seconds
        let n = Int32(shards)
        let me = Int32(host)
        return try await transaction("a lease round") { connection in
            if ready != nil || fenced != nil {
                // During a rescale the rounds that write readiness or fences, and decide the switch from them, go one
                // at a time, each seeing what the one before committed: a switch never comes from a view that
                // misses another host's worker no longer ready, or its fences cleared. The cluster's row first,
                // as `beginRescale` and `forgetLayout` lock it, before any lease row.
                try await connection.query("SELECT 1 FROM botcluster_clusters WHERE cluster = \(cluster) FOR UPDATE", logger: Self.quiet)
            }
            try await connection.query(
                """
                INSERT INTO botcluster_hosts (cluster, host, address, expires_at)
                VALUES (\(cluster), \(me), \(address), now() + make_interval(secs => \(ttlSeconds)))
                ON CONFLICT (cluster, host) DO UPDATE SET address = EXCLUDED.address, expires_at = EXCLUDED.expires_at
                """, logger: Self.quiet)
            if !sessions.isEmpty {
                try await connection.query(
                    """
                    UPDATE botcluster_leases AS l SET session_id = u.id, seq = u.seq
                    FROM unnest(\(sessions.map { Int32($0.shard) }), \(sessions.map(\.token)), \(sessions.map(\.id)), \(sessions.map { Int64($0.seq) }))
                        AS u(shard, token, id, seq)
                    WHERE l.cluster = \(cluster) AND l.shards = \(n) AND l.shard = u.shard AND l.owner = \(me) AND l.token = u.token
                    """, logger: Self.quiet)
            }
            var renewed: Set<Int> = []
            if !renew.isEmpty {
                let rows = try await connection.query(
                    """
                    UPDATE botcluster_leases AS l SET expires_at = now() + make_interval(secs => \(ttlSeconds))
                    FROM unnest(\(renew.keys.map { Int32($0) }), \(renew.keys.map { renew[$0]! })) AS u(shard, token)
                    WHERE l.cluster = \(cluster) AND l.shards = \(n) AND l.shard = u.shard AND l.owner = \(me)
                        AND l.token = u.token AND l.expires_at > now()
                    RETURNING l.shard
                    """, logger: Self.quiet)
                for try await shard in rows.decode(Int32.self) { renewed.insert(Int(shard)) }
            }
            var released: Set<Int> = []
            if !release.isEmpty {
                let rows = try await connection.query(
                    """
                    UPDATE botcluster_leases AS l SET owner = NULL, expires_at = 'epoch', session_id = u.id, seq = u.seq
                    FROM unnest(\(release.map { Int32($0.shard) }), \(release.map(\.token)), \(release.map(\.id)), \(release.map { Int64($0.seq) }))
                        AS u(shard, token, id, seq)
                    WHERE l.cluster = \(cluster) AND l.shards = \(n) AND l.shard = u.shard AND l.owner = \(me) AND l.token = u.token
                    RETURNING l.shard
                    """, logger: Self.quiet)
                for try await shard in rows.decode(Int32.self) { released.insert(Int(shard)) }
            }
            if !pauses.isEmpty {
                // In the routes' order, so that hosts writing the same routes at once lock them in the same order.
                let sorted = pauses.sorted { $0.route < $1.route }
                try await connection.query(
                    """
                    INSERT INTO botcluster_pauses AS p (cluster, route, until, host)
                    SELECT \(cluster), u.route, clock_timestamp() + make_interval(secs => u.seconds), \(me)
                    FROM unnest(\(sorted.map(\.route)), \(sorted.map(\.seconds))) WITH ORDINALITY AS u(route, seconds, n) ORDER BY u.n
                    ON CONFLICT (cluster, route) DO UPDATE SET until = greatest(p.until, EXCLUDED.until),
                        host = CASE WHEN EXCLUDED.until > p.until THEN EXCLUDED.host ELSE p.host END
                    """, logger: Self.quiet)
                try await connection.query(
                    """
                    DELETE FROM botcluster_pauses WHERE ctid IN (SELECT ctid FROM botcluster_pauses
                        WHERE cluster = \(cluster) AND until < now() - interval '1 minute' FOR UPDATE SKIP LOCKED)
                    """, logger: Self.quiet)
            }
            // The pauses of the other hosts (this host's own it knows), the longest first, as seconds left now.
            var paused: [String: Double] = [:]
            let pauseRows = try await connection.query(
                """
                SELECT route, extract(epoch FROM until - clock_timestamp())::float8 FROM botcluster_pauses
                WHERE cluster = \(cluster) AND host <> \(me) AND until > clock_timestamp()
                ORDER BY until DESC LIMIT \(Int32(Self.maxPausesRead))
                """, logger: Self.quiet)
            for try await (route, left) in pauseRows.decode((String, Double).self) { paused[route] = left }
            var hosts: [Int: String] = [:]
            let hostRows = try await connection.query(
                "SELECT host, address FROM botcluster_hosts WHERE cluster = \(cluster) AND expires_at > now()", logger: Self.quiet)
            for try await (id, address) in hostRows.decode((Int32, String).self) { hosts[Int(id)] = address }
            var holders: [Int: Int] = [:]
            var expiresIn: [Int: Double] = [:]
            let leaseRows = try await connection.query(
                """
                SELECT shard, owner, extract(epoch FROM expires_at - now())::float8 FROM botcluster_leases
                WHERE cluster = \(cluster) AND shards = \(n) AND owner IS NOT NULL AND expires_at > now()
                """, logger: Self.quiet)
            for try await (shard, owner, left) in leaseRows.decode((Int32, Int32, Double).self) {
                holders[Int(shard)] = Int(owner)
                expiresIn[Int(shard)] = left
            }
            var acquired: [Int: (token: Int64, session: (id: String, seq: Int)?)] = [:]
            let take = wanted(Set(hosts.keys), holders)
            if !take.isEmpty {
                let rows = try await connection.query(
                    """
                    UPDATE botcluster_leases SET owner = \(me), token = token + 1, expires_at = now() + make_interval(secs => \(ttlSeconds)), ready = false,
                        fenced = false
                    WHERE cluster = \(cluster) AND shards = \(n) AND shard = ANY(\(take.map { Int32($0) })) AND expires_at <= now()
                    RETURNING shard, token, session_id, seq
                    """, logger: Self.quiet)
                for try await (shard, token, id, seq) in rows.decode((Int32, Int64, String, Int64).self) {
                    acquired[Int(shard)] = (token, id.isEmpty ? nil : (id, Int(seq)))
                    holders[Int(shard)] = host
                    expiresIn[Int(shard)] = ttlSeconds
                }
            }
            // A rescale: the serving layout's leases held here say whether their workers are past the fence.
            if let fenced {
                try await connection.query(
                    """
                    UPDATE botcluster_leases SET fenced = (shard = ANY(\(fenced.map { Int32($0) })))
                    WHERE cluster = \(cluster) AND shards = \(n) AND owner = \(me)
                    """, logger: Self.quiet)
            }
            // A rescale: the new layout's leases held here say whether their workers are ready; when every one of
            // them is, held and unexpired, and every serving lease is held, unexpired and past the fence, the new
            // layout serves from now on. (A serving lease whose host died before its fence is not: it expires, is
            // taken over and resumed, and its new worker passes the fence before the switch, so that nothing the old
            // layout alone received is left unhandled.) One past its deadline is given up.
            if let ready {
                try await connection.query(
                    """
                    UPDATE botcluster_leases SET ready = (shard = ANY(\(ready.map { Int32($0) })))
                    WHERE cluster = \(cluster) AND shards = \(n) AND owner = \(me)
                    """, logger: Self.quiet)
                // Not every new lease ready (a new worker restarted, identifying anew; a host died): what the serving
                // layout receives meanwhile reaches it alone, so every serving fence is to be passed again, that of a
                // host that died too.
                try await connection.query(
                    """
                    UPDATE botcluster_leases AS o SET fenced = false
                    FROM botcluster_clusters AS c
                    WHERE c.cluster = \(cluster) AND c.next_shards = \(n) AND o.cluster = c.cluster AND o.shards = c.shards AND o.fenced
                    AND (SELECT count(*) FROM botcluster_leases
                        WHERE cluster = \(cluster) AND shards = \(n) AND ready AND owner IS NOT NULL AND expires_at > now()) < \(n)
                    """, logger: Self.quiet)
                try await connection.query(
                    """
                    UPDATE botcluster_clusters AS c SET shards = next_shards, next_shards = NULL, change_until = NULL
                    WHERE cluster = \(cluster) AND next_shards = \(n) AND change_until > now() AND (
                        SELECT count(*) FROM botcluster_leases
                        WHERE cluster = \(cluster) AND shards = \(n) AND ready AND owner IS NOT NULL AND expires_at > now()) = \(n)
                    AND (
                        SELECT count(*) FROM botcluster_leases AS o
                        WHERE o.cluster = \(cluster) AND o.shards = c.shards AND o.fenced AND o.owner IS NOT NULL AND o.expires_at > now()) = c.shards
                    """, logger: Self.quiet)
            }
            // The layout, and a rescale past its deadline given up, in one statement (every round of every host runs
            // it; the SELECT reads the row as it was before the UPDATE, hence the CASE).
            var layout: Layout?
            let layoutRows = try await connection.query(
                """
                WITH given_up AS (
                    UPDATE botcluster_clusters SET next_shards = NULL, change_until = NULL
                    WHERE cluster = \(cluster) AND change_until <= now() RETURNING cluster)
                SELECT c.shards, CASE WHEN c.change_until <= now() THEN NULL ELSE c.next_shards END,
                    c.change_until > now() AND (SELECT count(*) FROM botcluster_leases AS l
                        WHERE l.cluster = c.cluster AND l.shards = c.next_shards AND l.ready AND l.owner IS NOT NULL AND l.expires_at > now()) = c.next_shards
                FROM botcluster_clusters AS c WHERE c.cluster = \(cluster)
                """, logger: Self.quiet)
            for try await (count, next, nextReady) in layoutRows.decode((Int32, Int32?, Bool?).self) {
                layout = Layout(shards: Int(count), next: next.map(Int.init), nextReady: next != nil && nextReady == true)
            }
            // Every host follows this row: one that is gone or out of range fails the round (the leases are fenced
            // in time) rather than making every host run what it says.
            guard let layout, layout.isValid else { throw DamagedLayout(stored: layout) }
            return Round(
                renewed: renewed, acquired: acquired, released: released, hosts: hosts, holders: holders, expiresIn: expiresIn, pauses: paused,
                layout: layout
            )
        }
    }

    /// Begins a rescale of the cluster from `from` to `to` shards, to be ready within `within`. Returns nil when
    /// begun (every host's next round sees it), else why not: the cluster does not run `from` shards, a rescale is
    /// under way, or a layout of `to` shards still drains from an earlier change.
    public func beginRescale(from: Int, to: Int, within: Duration) async throws -> String? {
        let cluster = self.cluster
        return try await transaction("beginning a rescale") { connection in
            let rows = try await connection.query(
                """
                SELECT c.shards, c.next_shards, (SELECT count(*) FROM botcluster_leases AS l
                    WHERE l.cluster = c.cluster AND l.shards = \(Int32(to)) AND l.owner IS NOT NULL AND l.expires_at > now())
                FROM botcluster_clusters AS c WHERE c.cluster = \(cluster) FOR UPDATE
                """, logger: Self.quiet)
            var refusal: String? = "the cluster is not in the store"
            for try await (shards, next, held) in rows.decode((Int32, Int32?, Int64).self) {
                if let next {
                    refusal = "a rescale to \(next) shards is under way"
                } else if Int(shards) != from {
                    refusal = "the cluster runs \(shards) shards now, not \(from)"
                } else if held > 0 {
                    refusal = "a layout of \(to) shards still drains on some host (\(held) leases held); try again when it is gone"
                } else {
                    refusal = nil
                }
            }
            if let refusal { return refusal }
            try await connection.query(
                """
                UPDATE botcluster_clusters SET next_shards = \(Int32(to)), change_until = now() + make_interval(secs => \(within.seconds))
                WHERE cluster = \(cluster)
                """, logger: Self.quiet)
            // No serving lease is past a fence yet (an earlier rescale given up may have left some marked).
            try await connection.query(
                "UPDATE botcluster_leases SET fenced = false WHERE cluster = \(cluster) AND shards = \(Int32(from)) AND fenced", logger: Self.quiet)
            // The new layout's leases, free, not ready, and without sessions (an earlier layout of the same count
            // may have left some).
            try await connection.query(
                """
                INSERT INTO botcluster_leases (cluster, shards, shard)
                SELECT \(cluster), \(Int32(to)), g FROM generate_series(0, \(Int32(to)) - 1) AS g
                ON CONFLICT (cluster, shards, shard) DO UPDATE SET ready = false, session_id = '', seq = 0, owner = NULL
                """, logger: Self.quiet)
            return nil
        }
    }

    /// Gives up the rescale to `to` shards (the host that began it could not carry it through).
    public func cancelRescale(to: Int) async throws {
        let cluster = self.cluster
        try await transaction("giving up a rescale") { connection in
            try await connection.query(
                "UPDATE botcluster_clusters SET next_shards = NULL, change_until = NULL WHERE cluster = \(cluster) AND next_shards = \(Int32(to))",
                logger: Self.quiet)
        }
    }

    /// Forgets the lease rows of a layout that neither serves nor is a rescale's target (after a rescale, once no
    /// host holds one of them).
    public func forgetLayout(shards: Int) async throws {
        let cluster = self.cluster
        try await transaction("forgetting an old layout") { connection in
            // The cluster's row first, locked: a rescale to this count that begins meanwhile (it locks the row too)
            // comes before or after this, never beside it.
            try await connection.query("SELECT 1 FROM botcluster_clusters WHERE cluster = \(cluster) FOR UPDATE", logger: Self.quiet)
            try await connection.query(
                """
                DELETE FROM botcluster_leases WHERE cluster = \(cluster) AND shards = \(Int32(shards))
                AND NOT EXISTS (SELECT 1 FROM botcluster_clusters AS c WHERE c.cluster = \(cluster)
                    AND (c.shards = \(Int32(shards)) OR c.next_shards = \(Int32(shards))))
                AND NOT EXISTS (SELECT 1 FROM botcluster_leases WHERE cluster = \(cluster) AND shards = \(Int32(shards)) AND owner IS NOT NULL AND expires_at > now())
                """, logger: Self.quiet)
        }
    }

    /// Leaves the cluster: the host's heartbeat is removed, so the others place its shards at once (its leases
    /// must be released first, with `round`).
    public func leave(host: Int) async throws {
        let cluster = self.cluster
        try await transaction("leaving the cluster") { connection in
            try await connection.query("DELETE FROM botcluster_hosts WHERE cluster = \(cluster) AND host = \(Int32(host))", logger: Self.quiet)
        }
    }

    // MARK: claims

    /// An event claimed for a shard (of a `shards`-shard layout) held under `token`.
    public struct Claim: Sendable, Equatable {
        public var key: String
        public var shard: Int
        public var shards: Int
        public var token: Int64

        /// `key` claimed by the holder of the lease `token` of `shard` of `shards`.
        public init(key: String, shard: Int, shards: Int, token: Int64) {
            self.key = key
            self.shard = shard
            self.shards = shards
            self.token = token
        }
    }

    /// What the store says to a batch of claims.
    public struct ClaimAnswers: Sendable, Equatable {
        /// The keys to handle.
        public var granted: Set<String>
        /// The keys that the other layout of a rescale holds unfinished while this host holds the claim's lease:
        /// ask again. The other worker completes the event (skip it then), or its lease ends (a host that died, a
        /// retired layout that released its shard) and the claim is taken over.
        public var heldElsewhere: Set<String>

        /// `granted`, and `heldElsewhere` to ask again.
        public init(granted: Set<String> = [], heldElsewhere: Set<String> = []) {
            self.granted = granted
            self.heldElsewhere = heldElsewhere
        }
    }

    /// Claims events for handlers on `host`, and records the events `completing` as handled, in one transaction
    /// (one round trip for a batch of each, a second one only when some claim is not granted). A claim is granted
    /// only while its lease is current in the store (the fencing token checked where the record is kept), and only
    /// if no one handled the event and no one else holds a claim of it: a claim of the same shard left by an older
    /// lease (a host that died mid-handler) is taken over, and so is a claim of the other layout of a rescale whose
    /// lease is no longer current (a retired worker's); one whose lease is current is not, and its key is answered
    /// `heldElsewhere`. (Within a layout the tokens decide, not the leases' rows: a statement reads those as of its
    /// start, and a newer grant may have committed since.)
    public func claim(_ claims: [Claim], completing: [String] = [], host: Int) async throws -> ClaimAnswers {
        guard !claims.isEmpty || !completing.isEmpty else { return .init() }
        let cluster = self.cluster
        return try await transaction(claims.isEmpty ? "completing claims" : "claiming events") { connection in
            if !completing.isEmpty {
                try await connection.query(
                    "UPDATE botcluster_claims SET done = true, at = now() WHERE cluster = \(cluster) AND key = ANY(\(completing))", logger: Self.quiet)
            }
            guard !claims.isEmpty else { return .init() }
            let (keys, shards, counts, tokens) = (claims.map(\.key), claims.map { Int32($0.shard) }, claims.map { Int32($0.shards) }, claims.map(\.token))
            // Both statements read the claims whose lease this host holds, current on the database's clock. The
            // INSERT leaves out, unlocked, what its snapshot already shows it cannot take (handled, or the other
            // layout's under a current lease): a conflict locks the row even when its update is refused, and a
            // claim asked again while the other layout's host completes that event and asks again for one this host
            // completes would lock the two rows in opposite orders (a deadlock, aborted after a second).
            let rows = try await connection.query(
                """
                INSERT INTO botcluster_claims AS c (cluster, key, shard, shards, token, at)
                SELECT \(cluster), u.key, u.shard, u.shards, u.token, now()
                FROM unnest(\(keys), \(shards), \(counts), \(tokens)) AS u(key, shard, shards, token)
                JOIN botcluster_leases AS l ON l.cluster = \(cluster) AND l.shards = u.shards AND l.shard = u.shard
                    AND l.owner = \(Int32(host)) AND l.token = u.token AND l.expires_at > now()
                WHERE NOT EXISTS (SELECT 1 FROM botcluster_claims AS seen WHERE seen.cluster = \(cluster) AND seen.key = u.key
                    AND (seen.done OR (seen.shards <> u.shards AND EXISTS (SELECT 1 FROM botcluster_leases AS held
                        WHERE held.cluster = seen.cluster AND held.shards = seen.shards AND held.shard = seen.shard AND held.token = seen.token
                            AND held.owner IS NOT NULL AND held.expires_at > now()))))
                ON CONFLICT (cluster, key) DO UPDATE SET shard = EXCLUDED.shard, shards = EXCLUDED.shards, token = EXCLUDED.token, at = now()
                    WHERE NOT c.done AND (
                        (c.shards = EXCLUDED.shards AND c.shard = EXCLUDED.shard AND c.token <= EXCLUDED.token)
                        OR (c.shards <> EXCLUDED.shards AND NOT EXISTS (SELECT 1 FROM botcluster_leases AS held
                            WHERE held.cluster = c.cluster AND held.shards = c.shards AND held.shard = c.shard AND held.token = c.token
                                AND held.owner IS NOT NULL AND held.expires_at > now())))
                RETURNING c.key
                """, logger: Self.quiet)
            var answers = ClaimAnswers()
            for try await key in rows.decode(String.self) { answers.granted.insert(key) }
            guard answers.granted.count < claims.count else { return answers }
            // A new statement sees what committed meanwhile: a claim the other layout inserted while this one waited
            // on its row is not missed (the two layouts of a rescale receive the same events at nearly one time).
            let held = try await connection.query(
                """
                SELECT c.key FROM unnest(\(keys), \(shards), \(counts), \(tokens)) AS u(key, shard, shards, token)
                JOIN botcluster_leases AS l ON l.cluster = \(cluster) AND l.shards = u.shards AND l.shard = u.shard
                    AND l.owner = \(Int32(host)) AND l.token = u.token AND l.expires_at > now()
                JOIN botcluster_claims AS c ON c.cluster = \(cluster) AND c.key = u.key
                WHERE NOT c.done AND c.shards <> u.shards
                """, logger: Self.quiet)
            for try await key in held.decode(String.self) { answers.heldElsewhere.insert(key) }
            return answers
        }
    }

    /// The events `keys` are handled: no one claims them again while they are remembered.
    public func completeClaims(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        let cluster = self.cluster
        try await transaction("completing claims") { connection in
            try await connection.query(
                "UPDATE botcluster_claims SET done = true, at = now() WHERE cluster = \(cluster) AND key = ANY(\(keys))", logger: Self.quiet)
        }
    }

    /// Forgets handled events (and abandoned claims) older than `ttl`.
    public func expireClaims(olderThan ttl: Duration) async throws {
        let cluster = self.cluster
        try await transaction("forgetting old claims") { connection in
            try await connection.query(
                "DELETE FROM botcluster_claims WHERE cluster = \(cluster) AND at < now() - make_interval(secs => \(ttl.seconds))", logger: Self.quiet)
        }
    }

    // MARK: identify slots

    /// Records the platform's count of session starts left today (`/gateway/bot`: `remaining`, reset after
    /// `resetAfter`). Within the day the lower count stands (a host's older answer never gives back starts the
    /// cluster spent since); once the stored day has reset, the new count replaces it. Returns the count stored now.
    @discardableResult
    public func setSessionStarts(remaining: Int, resetAfter: Duration) async throws -> Int {
        let cluster = self.cluster
        return try await transaction("storing the session starts left") { connection in
            let rows = try await connection.query(
                """
                INSERT INTO botcluster_session_starts AS s (cluster, remaining, reset_at)
                VALUES (\(cluster), \(Int32(clamping: remaining)), now() + make_interval(secs => \(resetAfter.seconds)))
                ON CONFLICT (cluster) DO UPDATE SET
                    remaining = CASE WHEN s.reset_at <= now() THEN EXCLUDED.remaining ELSE least(s.remaining, EXCLUDED.remaining) END,
                    reset_at = CASE WHEN s.reset_at <= now() THEN EXCLUDED.reset_at ELSE s.reset_at END
                RETURNING remaining
                """, logger: Self.quiet)
            var stored = 0
            for try await value in rows.decode(Int32.self) { stored = Int(value) }
            return stored
        }
    }

    /// Asks for bucket `bucket`'s identify slot for `holder`: granted when no Identify of the bucket left within
    /// `spacing` and none is held (a holder that never reports counts as having left at `slotTimeout`); one of the
    /// day's session starts is taken with it.
    public func reserveIdentify(bucket: Int, holder: String, spacing: Duration, slotTimeout: Duration) async throws -> IdentifySlot {
        let cluster = self.cluster
        let space = spacing.seconds
        let hold = slotTimeout.seconds
        return try await transaction("reserving an identify slot") { connection in
            try await connection.query(
                "INSERT INTO botcluster_identify (cluster, bucket) VALUES (\(cluster), \(Int32(bucket))) ON CONFLICT DO NOTHING", logger: Self.quiet)
            let rows = try await connection.query(
                """
                SELECT extract(epoch FROM greatest(next_free,
                    CASE WHEN holder IS NULL THEN 'epoch'::timestamptz ELSE held_until + make_interval(secs => \(space)) END)
                    - clock_timestamp())::float8, coalesce(holder, '')
                FROM botcluster_identify WHERE cluster = \(cluster) AND bucket = \(Int32(bucket)) FOR UPDATE
                """, logger: Self.quiet)
            var wait = 0.0
            for try await (left, current) in rows.decode((Double, String).self) {
                // Already ours (an answer lost after the commit, asked again): the slot and its start are taken.
                if current == holder { return .granted }
                wait = left
            }
            if wait > 0 { return .wait(.milliseconds(Int64(min(wait, 60) * 1000) + 1)) }
            let starts = try await connection.query(
                "UPDATE botcluster_session_starts SET remaining = remaining - 1 WHERE cluster = \(cluster) AND remaining > 0 RETURNING remaining",
                logger: Self.quiet)
            var taken = false
            for try await _ in starts.decode(Int32.self) { taken = true }
            guard taken else { return .spent }
            try await connection.query(
                """
                UPDATE botcluster_identify SET holder = \(holder), held_until = clock_timestamp() + make_interval(secs => \(hold))
                WHERE cluster = \(cluster) AND bucket = \(Int32(bucket))
                """, logger: Self.quiet)
            return .granted
        }
    }

    /// The Identify of `holder` left (or never will): the bucket's next slot is `spacing` from now.
    public func identifyDone(bucket: Int, holder: String, spacing: Duration) async throws {
        let cluster = self.cluster
        let space = spacing.seconds
        try await transaction("reporting an identify") { connection in
            try await connection.query(
                """
                UPDATE botcluster_identify SET holder = NULL,
                    next_free = greatest(next_free, clock_timestamp() + make_interval(secs => \(space)))
                WHERE cluster = \(cluster) AND bucket = \(Int32(bucket)) AND holder = \(holder)
                """, logger: Self.quiet)
        }
    }
}

/// Runs `operation` with a deadline that holds even when the operation does not end on cancellation: at the
/// deadline (or when the caller is cancelled) the caller gets `TimeoutError` (or `CancellationError`) at once, and
/// the operation, cancelled, ends on its own. Seen here: a claims batch cancelled at shutdown never returned, and
/// the supervisor's stop hung with it (the shared `withTimeout` waits for its child by design).
func withDeadline<T: Sendable>(_ limit: Duration, _ what: String, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = DeadlineRace<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            race.start(continuation, work: Task {
                do { race.finish(.success(try await operation())) } catch { race.finish(.failure(error)) }
            }, timer: Task {
                try? await Task.sleep(for: limit)
                race.finish(.failure(TimeoutError(what: what, limit: limit)))
            })
        }
    } onCancel: {
        race.finish(.failure(CancellationError()))
    }
}

/// The first of an operation, its deadline and the caller's cancellation to finish: it resumes the caller, and
/// the others are cancelled.
final class DeadlineRace<T: Sendable>: Sendable {
    struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var early: Result<T, any Error>?
        var tasks: [Task<Void, Never>] = []
        var done = false
    }

    let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<T, any Error>, work: Task<Void, Never>, timer: Task<Void, Never>) {
        let early = state.withLock { state -> Result<T, any Error>? in
            state.tasks = [work, timer]
            if let early = state.early { return early }
            state.continuation = continuation
            return nil
        }
        if let early {
            work.cancel()
            timer.cancel()
            continuation.resume(with: early)
        }
    }

    func finish(_ result: Result<T, any Error>) {
        let (continuation, tasks) = state.withLock { state -> (CheckedContinuation<T, any Error>?, [Task<Void, Never>]) in
            guard !state.done else { return (nil, []) }
            state.done = true
            guard let continuation = state.continuation else {
                state.early = result
                return (nil, [])
            }
            state.continuation = nil
            return (continuation, state.tasks)
        }
        for task in tasks { task.cancel() }
        continuation?.resume(with: result)
    }
}

/// The last failed connection attempt of the pool, for the errors of the calls that waited for a connection.
final class ConnectFailures: Sendable {
    let last = Mutex<(reason: String, at: ContinuousClock.Instant)?>(nil)
    let password: String?

    init(password: String?) { self.password = password }

    /// Keeps `description` (the server's message when it sent one), the password blanked should any part of it
    /// carry it.
    func record(_ description: String) {
        var reason = description
        if let password, !password.isEmpty { reason = reason.replacingOccurrences(of: password, with: "<password>") }
        reason = Self.serverMessage(reason) ?? String(reason.prefix(300))
        last.withLock { $0 = (reason, .now) }
    }

    /// The last failure, if it came within `window`.
    func recent(within window: Duration) -> String? {
        last.withLock { last in last.flatMap { .now - $0.at <= window ? $0.reason : nil } }
    }

    /// The `message` field of a server error in postgres-nio's description of a `PSQLError`
    /// (`serverInfo: [..., message: TEXT, routine: ...]`; the text itself may hold commas).
    static func serverMessage(_ description: String) -> String? {
        guard let start = description.range(of: "serverInfo: ["), let field = description[start.upperBound...].range(of: "message: ") else { return nil }
        let rest = description[field.upperBound...]
        let end = rest.firstRange(of: /, [a-zA-Z]+: |\]/)?.lowerBound ?? rest.endIndex
        let message = rest[..<end].trimmingCharacters(in: .whitespaces)
        return message.isEmpty ? nil : message
    }
}

/// The pool's background log, read for what an operator needs to know. postgres-nio reports a failed connection
/// attempt only as an info line of this log (a client cannot set its observability delegate), and a store call that
/// waits for a connection then ends at its deadline with nothing but "no answer": this handler keeps each failure
/// in `failures`, and passes lines at `passLevel` and above to `next` (the supervisor's log).
struct PoolLogHandler: LogHandler {
    var next: any LogHandler
    let passLevel: Logger.Level
    let failures: ConnectFailures
    var logLevel: Logger.Level = .info

    var metadata: Logger.Metadata {
        get { next.metadata }
        set { next.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { next[metadataKey: key] }
        set { next[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        if event.message.description == "Connection creation failed", let error = event.metadata?["psql_error"] {
            failures.record("\(error)")
        }
        if event.level >= passLevel { next.log(event: event) }
    }
}
