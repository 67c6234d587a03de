/// Where the cluster keeps its authority: one host's SQLite file, or a PostgreSQL database that several
/// supervisors (hosts) share as one cluster.
public enum StoreConfig: Sendable {
    /// `run/cluster.sqlite`: one machine (the default).
    case sqlite
    /// A PostgreSQL database: every supervisor started with the same database and app id is one cluster.
    case postgres(PostgresStoreConfig)

    /// The PostgreSQL settings, when the store is PostgreSQL.
    public var postgres: PostgresStoreConfig? {
        if case .postgres(let settings) = self { return settings }
        return nil
    }
}

/// The PostgreSQL store: where it is, how to log in, and the shard leases' timings.
public struct PostgresStoreConfig: Sendable {
    public var host: String
    public var port: Int
    public var user: String
    /// The password (`store.password`, usually `"env:NAME"`); nil for none (trust or peer authentication).
    public var password: Secret?
    public var database: String
    /// Whether the connection must use TLS (verified against the system's roots, or `trustRoots`).
    public var tls: Bool
    /// PEM roots to verify the server with, instead of the system's.
    public var trustRoots: String?
    /// How long a shard lease lasts after each renewal, on the database's clock: the longest a dead host's
    /// shards wait for another host.
    public var leaseTTL: Duration
    /// How often leases are renewed (and free ones taken).
    public var renewInterval: Duration
    /// How long before a lease can expire its host stops the shard's worker when it could not renew.
    public var fenceMargin: Duration
    /// The deadline of one store operation (a round, a claim batch).
    public var timeout: Duration

    /// Settings from their parts (cluster.json's `store` reads them; tests build them directly).
    public init(
        host: String, port: Int, user: String, password: Secret?, database: String, tls: Bool, trustRoots: String?,
        leaseTTL: Duration, renewInterval: Duration, fenceMargin: Duration, timeout: Duration
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tls = tls
        self.trustRoots = trustRoots
        self.leaseTTL = leaseTTL
        self.renewInterval = renewInterval
        self.fenceMargin = fenceMargin
        self.timeout = timeout
    }

    /// `postgres://user@host:port/database`, for logs and status (the password is never part of it).
    public var displayURL: String {
        "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)"
    }

    /// Parses `postgres://USER@HOST[:PORT]/DATABASE` (or `postgresql://`); what is wrong when it does not.
    public static func parseURL(_ text: String) -> Result<(user: String, host: String, port: Int, database: String), ListenAddressError> {
        let lower = text.lowercased()
        guard let scheme = ["postgres://", "postgresql://"].first(where: { lower.hasPrefix($0) }) else {
            return .failure(.init("must start with postgres:// (postgres://USER@HOST:PORT/DATABASE)"))
        }
        let rest = text.dropFirst(scheme.count)
        guard !rest.contains("?") else { return .failure(.init("takes no query parameters: use store.tls and store.password")) }
        guard let slash = rest.firstIndex(of: "/") else { return .failure(.init("names no database (postgres://USER@HOST:PORT/DATABASE)")) }
        let database = String(rest[rest.index(after: slash)...])
        guard !database.isEmpty, !database.contains("/") else { return .failure(.init("names no database (postgres://USER@HOST:PORT/DATABASE)")) }
        let authority = rest[..<slash]
        guard let at = authority.lastIndex(of: "@") else { return .failure(.init("names no user (postgres://USER@HOST:PORT/DATABASE)")) }
        let user = authority[..<at]
        guard !user.contains(":") else {
            return .failure(.init("must not carry the password: set store.password to \"env:NAME\" instead"))
        }
        guard !user.isEmpty else { return .failure(.init("names no user (postgres://USER@HOST:PORT/DATABASE)")) }
        let hostPort = String(authority[authority.index(after: at)...])
        let address = hostPort.hasPrefix("[") || hostPort.contains(":") ? hostPort : hostPort + ":5432"
        switch ListenAddress.parse(address.hasSuffix("]") ? address + ":5432" : address) {
        case .failure(let error): return .failure(error)
        case .success(let parsed):
            guard parsed.port > 0 else { return .failure(.init("port 0 is not a server's port")) }
            return .success((String(user), parsed.host, parsed.port, database))
        }
    }
}

extension StoreConfig {
    /// Reads `store` from `root`: `"sqlite"`, or an object with `postgres` and its settings.
    static func read(_ root: ConfigReader) -> StoreConfig {
        guard let value = root.raw("store") else {
            root.recordNormalized("store", .string("sqlite"))
            return .sqlite
        }
        if case .string(let word) = value {
            if word != "sqlite" {
                root.report("store", "must be \"sqlite\" or an object {\"postgres\": \"postgres://USER@HOST:PORT/DATABASE\", ...}, got \"\(word.prefix(40))\"")
            }
            root.recordNormalized("store", .string("sqlite"))
            return .sqlite
        }
        let reader = root.object("store")
        guard case .object = value else { return .sqlite }
        guard let urlValue = reader.raw("postgres") else {
            reader.report("postgres", "is required: the database's URL, postgres://USER@HOST:PORT/DATABASE")
            reader.finish()
            return .sqlite
        }
        var parsed = (user: "", host: "", port: 5432, database: "")
        if case .string(let text) = urlValue {
            switch PostgresStoreConfig.parseURL(text) {
            case .success(let value): parsed = value
            case .failure(let error): reader.report("postgres", error.description)
            }
        } else {
            reader.report("postgres", "must be a URL string, got \(urlValue.kindDescription)")
        }
        reader.recordNormalized("postgres", .string("postgres://\(parsed.user)@\(parsed.host):\(parsed.port)/\(parsed.database)"))
        let password = reader.optionalSecret("password")
        let tls = reader.choice("tls", default: "off", among: ["off", "require"]) == "require"
        let trustRoots = reader.readableFile("trustRoots")
        let ttl = reader.duration("leaseTTL", default: .seconds(10), min: .seconds(2), max: .seconds(600))
        let renew = reader.duration("renewInterval", default: ttl / 5, min: .milliseconds(100), max: .seconds(300))
        let margin = reader.duration("fenceMargin", default: ttl / 5, min: .milliseconds(100), max: .seconds(300))
        let timeout = reader.duration("timeout", default: .seconds(2), min: .milliseconds(100), max: .seconds(60))
        // A round that fails for its whole timeout must still leave renewals before the fence: at least two rounds
        // (each at most renewInterval + timeout apart) fit in what the lease leaves after the margin.
        if ttl - margin < (renew + timeout) * 2 {
            reader.report(
                "leaseTTL",
                "must leave room for two renewals before the fence: leaseTTL - fenceMargin (\(DurationFormat.format(ttl - margin))) is less than 2 × (renewInterval + timeout) (\(DurationFormat.format((renew + timeout) * 2)))"
            )
        }
        reader.finish()
        return .postgres(PostgresStoreConfig(
            host: parsed.host, port: parsed.port, user: parsed.user, password: password, database: parsed.database, tls: tls,
            trustRoots: trustRoots, leaseTTL: ttl, renewInterval: renew, fenceMargin: margin, timeout: timeout
        ))
    }
}
