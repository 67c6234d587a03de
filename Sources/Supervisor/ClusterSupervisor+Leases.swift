import ClusterCore
import Foundation
import ClusterPostgres
import ClusterProtocol
import Logging
import QQGateway
import RateBudget
import Synchronization
import UserCache

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
                    // The platform's count now (the join may have waited). Without an answer nothing is stored: the
                    // launch's count would end the stored day late; the first Identify asks the platform then.
                    if let info = try? await platform.api.gatewayBot() {
                        try await leases.authority.setSessionStarts(remaining: info.remaining, resetAfter: info.resetAfter)
                    }
                    logger.info("joined the cluster of hosts", metadata: ["host": "\(leases.host)", "store": "\(leases.authority.displayURL)"])
                    break
                } catch let mismatch as PostgresAuthority.LayoutMismatch {
                    // Nothing runs yet (no lease was taken): the host cannot join this cluster as configured.
                    printError("store: \(mismatch)")
                    exit(1)
                } catch {
                    attempt += 1
                    leases.failures.log(logger, .error, "cannot reach the store to join the cluster; trying again", metadata: [
                        "store": "\(leases.authority.displayURL)", "error": "\(String(describing: error).prefix(300))",
                    ])
                    try? await Task.sleep(for: .backoff(.milliseconds(400), attempts: attempt, cap: .seconds(5)))
                }
            }
            guard !Task.isCancelled else { return }
            await withDiscardingTaskGroup { group in
                // The tables exist now: the user cache's publications go both ways while the leases run.
                if let userFeed {
                    group.addTask { await userFeed.run { [self] ids in broadcast(.usersInvalidate(ids: ids), except: nil) } }
                }
                await leases.run(
                    // Stopped for a release: the slot runs nothing, and its last worker's connection has closed, so
                    // that everything the worker sent (its last session, its last handled events) was read first.
                    stoppedShards: { [self] in
                        state.withLock { state in
                            let active = state.core.layouts.active
                            return Set(active.machine.workers.filter { $0.state == .elsewhere && state.connections[active.id]?[$0.ordinal] == nil }.map(\.ordinal))
                        }
                    },
                    sessionOf: storedSession,
                    beforeRelease: { [self] in
                        if await !claims.completionsRecorded(within: leases.config.timeout) {
                            logger.warning("handing a shard over before the store took every handled event: the next host may handle some of them again")
                        }
                    },
                    paused: { [self] pauses in
                        // A 429 on another host: the route waits here too, and the workers are told.
                        for (route, remaining) in pauses {
                            guard let pause = budget.pauseFromElsewhere(route: route, remaining: remaining) else { continue }
                            let name = route.prefix(BudgetAuthority.maxRouteLength)
                            events.post("429", "\(name) paused for \(DurationFormat.human(pause)) (a 429 on another host)")
                            logger.warning("429 on another host: route paused here too", metadata: ["route": "\(name)", "pause": "\(DurationFormat.human(pause))"])
                            broadcast(.budgetPause(route: route, forMillis: Int32(clamping: pause.nanoseconds / 1_000_000)), except: nil)
                        }
                    },
                    apply: { [self] version, held in
                        // The REST budget is the cluster's: each host spends the share of the shards whose leases it
                        // holds (leases never overlap, so the shares never add up to more than the whole).
                        budget.setShare(Double(held.count) / Double(max(1, setup.shards)))
                        dispatch(.leases(version: version, held: held))
                    }
                )
                group.cancelAll()
            }
        }
    }

    /// The last committed session the supervisor knows of shard `shard` (worker `shard` of the serving layout).
    @Sendable func storedSession(_ shard: Int) -> (id: String, seq: Int)? {
        state.withLock { $0.core.layouts.active.machine.worker(ordinal: shard)?.session }
    }
}
