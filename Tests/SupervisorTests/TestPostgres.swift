import ClusterCore
import ClusterPostgres
import Foundation
import Logging
import Testing

/// The tests' PostgreSQL (`BOTCLUSTER_TEST_POSTGRES`), as a host of a multi-host cluster reaches it.
enum TestPostgres {
    /// An authority for `cluster` on the tests' server (its own pool, not yet running); a recorded issue when no
    /// server is configured.
    static func authority(cluster: String, logger: Logger) throws -> PostgresAuthority {
        guard let url = ProcessInfo.processInfo.environment["BOTCLUSTER_TEST_POSTGRES"] else {
            Issue.record("BOTCLUSTER_TEST_POSTGRES is not set: start a server with eval \"$(bash scripts/postgres.sh start)\"")
            throw CancellationError()
        }
        let parsed = try PostgresStoreConfig.parseURL(url).get()
        let config = PostgresStoreConfig(
            host: parsed.host, port: parsed.port, user: parsed.user, password: nil, database: parsed.database, tls: false, trustRoots: nil,
            leaseTTL: .seconds(10), renewInterval: .seconds(2), fenceMargin: .seconds(2), timeout: .seconds(10)
        )
        return try PostgresAuthority(config: config, cluster: cluster, logger: logger)
    }
}
