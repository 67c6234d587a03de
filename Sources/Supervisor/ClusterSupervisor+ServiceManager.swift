import ClusterCore
import ClusterProtocol
import Logging
import Foundation

extension ClusterSupervisor {
    /// Speaks to systemd (`Type=notify`) while the supervisor runs: `STATUS=` lines as the launch comes up,
    /// `READY=1` once every shard is ready, `WATCHDOG=1` at half the manager's watchdog interval only while the
    /// supervisor's own machinery answers (`isResponsive`), and `STOPPING=1` when it begins to drain. Returns
    /// once it sent `STOPPING=1` or is cancelled.
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
                            self.logger.error("the supervisor's event loops did not answer within \(DurationFormat.human(interval / 4)); not feeding the watchdog")
                        }
                        try? await Task.sleep(for: interval / 2)
                    }
                }
            }
            group.addTask {
                // A long launch (five seconds a shard at max_concurrency 1) moves the start timeout along as it goes.
                await self.followStartup(every: .seconds(5), incomingOnly: false) { line in
                    let left = self.startup(now: .now())?.secondsLeft ?? 0
                    notifier.notify(["STATUS=launch: " + line, "EXTEND_TIMEOUT_USEC=\(Int64((left + 120) * 1_000_000))"])
                }
            }
            group.addTask {
                guard let elapsed = try? await self.ready.wait() else { return }
                notifier.notify(["READY=1", "STATUS=ready: \(self.setup.shards) shards (up in \(DurationFormat.human(elapsed)))"])
            }
            _ = try? await stopping.wait()
            notifier.notify(["STOPPING=1", "STATUS=draining every worker"])
            group.cancelAll()
        }
    }
}
