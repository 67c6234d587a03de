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
                    let layout = try await leases.authority.prepare(shards: setup.shards)
                    if layout.shards != setup.shards {
                        logger.warning("the cluster runs \(layout.shards) shards (it was rescaled while hosts ran) and this host is configured for \(setup.shards): it runs \(layout.shards); set shards.count to \(layout.shards) to say so")
                    }
                    leases.joined(layout)
                    // The platform's count now (the join may have waited). Without an answer nothing is stored: the
                    // launch's count would end the stored day late; the first Identify asks the platform then.
                    if let info = try? await platform.api.gatewayBot() {
                        try await leases.authority.setSessionStarts(remaining: info.remaining, resetAfter: info.resetAfter)
                    }
                    logger.info("joined the cluster of hosts", metadata: ["host": "\(leases.host)", "store": "\(leases.authority.displayURL)"])
                    break
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
                    workers: .init(stopped: stoppedShards, ready: readyShards, fenced: fencedShards, session: storedSession, runs: runsLayout),
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
                    layoutSeen: { [self] layout in
                        handle(.storeLayout(
                            serving: layout.shards, next: layout.next, nextReady: layout.nextReady, seed: UInt64(truncatingIfNeeded: MonotonicInstant.now().nanoseconds)
                        ))
                    },
                    apply: { [self] total, version, held in
                        // The REST budget is the cluster's: each host spends the share of the serving layout's shards
                        // whose leases it holds (leases never overlap, so the shares never add up to more than the whole).
                        budget.setShare(leases.share)
                        handle(.leases(total: total, version: version, held: held))
                    }
                )
                group.cancelAll()
            }
        }
    }

    /// The shards of the layout of `total` shards that run nothing here and will not again without a new lease: in
    /// every layout of that count the slot is `elsewhere` (handed over, fenced) or the layout is stopping (a
    /// rescale retired or gave it up: nothing restarts there), no process runs, and the last worker's connection has
    /// closed, so that everything it sent (its last session, its last handled events) was read first. A slot that
    /// waits to restart (backing off, queued) does not count. With no such layout (gone), every shard.
    @Sendable func stoppedShards(_ total: Int) -> Set<Int> {
        state.withLock { state in
            let layouts = state.core.layouts.layouts(total: total)
            return Set((0..<total).filter { shard in
                layouts.allSatisfy { layout in
                    guard let worker = layout.machine.worker(ordinal: shard) else { return true }
                    return !worker.state.isLive && (worker.state == .elsewhere || layout.machine.stopping)
                        && state.connections[layout.id]?[shard] == nil
                }
            })
        }
    }

    /// The shards of the incoming or serving layout of `total` shards whose workers are ready here.
    @Sendable func readyShards(_ total: Int) -> Set<Int> {
        state.withLock { state in
            Set(state.core.layouts.running(total: total)?.machine.workers.filter { $0.state == .ready }.map(\.ordinal) ?? [])
        }
    }

    /// The shards of the serving layout of `total` shards whose workers here passed the fence before a rescale's
    /// switch (see `SupervisorCore.LayoutChange.fence`).
    @Sendable func fencedShards(_ total: Int) -> Set<Int> {
        state.withLock { $0.core.fencedShards(total: total) }
    }

    /// Whether a serving or incoming layout of `total` shards runs here (a lease of it taken starts a worker).
    @Sendable func runsLayout(_ total: Int) -> Bool {
        state.withLock { $0.core.layouts.running(total: total) != nil }
    }

    /// The last committed session the supervisor knows of shard `shard` of the layout of `total` shards.
    @Sendable func storedSession(_ total: Int, _ shard: Int) -> (id: String, seq: Int)? {
        state.withLock { $0.core.layouts.layout(total: total)?.machine.worker(ordinal: shard)?.session }
    }
}
