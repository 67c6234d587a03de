import ClusterCore
import ClusterPostgres
import Logging
import QQGateway
import Synchronization

extension ClusterSupervisor {
    /// Joins the cluster of hosts (tables made, the day's session starts recorded), then runs lease rounds until
    /// the supervisor ends. Until the store answers, this host runs nothing. (The store's connection pool runs
    /// beside `run()` as a whole: the leases are released after this ends.)
    func runLeases() async {
        guard let leases else { return }
        do {
            var attempt = 0
            while !Task.isCancelled {
                do {
                    try await leases.authority.prepare(shards: setup.shards)
                    try await leases.authority.setSessionStarts(remaining: setup.gateway.remaining)
                    logger.info("joined the cluster of hosts", metadata: ["host": "\(leases.host)", "store": "\(leases.authority.displayURL)"])
                    break
                } catch {
                    attempt += 1
                    leases.failures.log(logger, .error, "cannot reach the store to join the cluster; trying again", metadata: [
                        "store": "\(leases.authority.displayURL)", "error": "\(String(describing: error).prefix(300))",
                    ])
                    try? await Task.sleep(for: min(.seconds(5), .milliseconds(200) * (1 << min(attempt, 5))))
                }
            }
            if !Task.isCancelled {
                await leases.run(
                    stoppedShards: { [self] in
                        state.withLock { state in
                            Set(state.core.layouts.active.machine.workers.filter { $0.state == .elsewhere }.map(\.ordinal))
                        }
                    },
                    sessionOf: storedSession,
                    apply: { [self] changes, sessions in
                        for change in changes {
                            switch change {
                            case .gained(let shard, _): dispatch(.leaseGained(ordinal: shard, session: sessions[shard]))
                            case .lost(let shard, let reason): dispatch(.leaseLost(ordinal: shard, reason: reason))
                            case .handOver(let shard): dispatch(.handOver(ordinal: shard))
                            }
                        }
                    }
                )
            }
        }
    }

    /// The last committed session the supervisor knows of shard `shard` (worker `shard` of the serving layout).
    @Sendable func storedSession(_ shard: Int) -> (id: String, seq: Int)? {
        state.withLock { $0.core.layouts.active.machine.worker(ordinal: shard)?.session }
    }
}
