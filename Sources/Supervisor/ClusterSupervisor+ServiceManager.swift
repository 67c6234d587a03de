import ClusterCore
import ClusterProtocol
import Foundation
import Logging
import Synchronization

extension ClusterSupervisor {
    /// Speaks to systemd (`Type=notify`) while the supervisor runs: `STATUS=` lines with `EXTEND_TIMEOUT_USEC` every
    /// five seconds of the launch, `READY=1` once no shard is still starting (every one ready, or failed for good:
    /// a shard the platform refuses must not make systemd kill the others at its start timeout), `WATCHDOG=1` at half
    /// the manager's watchdog interval only while the supervisor's own machinery answers (`isResponsive`), and
    /// `STOPPING=1` when it begins to drain. Returns once it sent `STOPPING=1` or is cancelled.
    public func notifyServiceManager(_ notifier: SystemdNotifier) async {
        guard notifier.isActive else { return }
        notifier.notify(["STATUS=starting \(setup.shards) shards"])
        await withDiscardingTaskGroup { group in
            if let interval = notifier.watchdogInterval {
                group.addTask {
                    while !Task.isCancelled {
                        if await self.isResponsive(within: interval / 4) {
                            notifier.notify(["WATCHDOG=1"])
                        } else {
                            self.logger.error("the supervisor's state or event loops did not answer within \(DurationFormat.human(interval / 4)); not feeding the watchdog")
                        }
                        try? await Task.sleep(for: interval / 2)
                    }
                }
            }
            group.addTask { await self.reportLaunch(to: notifier) }
            _ = try? await stopping.wait()
            notifier.notify(["STOPPING=1", "STATUS=draining every worker"])
            group.cancelAll()
        }
    }

    /// The launch as the service manager sees it, until `READY=1`: every shard ready, or some ready and every
    /// other one failed for good (a close code the platform will not take back; a crash loop waiting for its next
    /// try is still starting). With no shard ready there is no READY: systemd's start timeout and restart policy
    /// deal with a bot that cannot serve at all.
    func reportLaunch(to notifier: SystemdNotifier) async {
        while !Task.isCancelled {
            if ready.current != nil {
                notifier.notify(["READY=1", "STATUS=ready: \(shardCount) shards"])
                return
            }
            let (ready, failedForGood, total) = state.withLock { state in
                let workers = state.core.layouts.active.machine.workers
                return (
                    workers.filter { $0.state == .ready }.count,
                    workers.filter { $0.state == .failed && $0.respawnAt == nil }.count,
                    workers.count
                )
            }
            if ready > 0, ready + failedForGood == total {
                notifier.notify(["READY=1", "STATUS=ready: \(ready) of \(total) shards; \(failedForGood) failed for good (botcluster status says why)"])
                return
            }
            // The start timeout moves along with the launch: the identify ledger's estimate and two minutes.
            let startup = startup(now: .now())
            var line = startup?.line ?? "ready \(ready)/\(total)"
            if failedForGood > 0 { line += " · \(failedForGood) failed for good" }
            notifier.notify(["STATUS=launch: " + line, "EXTEND_TIMEOUT_USEC=\(Int64(((startup?.secondsLeft ?? 0) + 120) * 1_000_000))"])
            // Woken at once when the cluster is ready; otherwise every five seconds.
            _ = try? await withTimeout(.seconds(5), "the next launch line") { try await self.ready.wait() }
        }
    }
}
