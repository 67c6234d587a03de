import ClusterCore
import ClusterProtocol
import QQGateway
import ServiceLifecycle

/// Runs a shard's runtime until it ends by itself or graceful shutdown (SIGTERM/SIGINT) stops it, with `beside`
/// running alongside (cancelled when the runtime ends); `onStop` runs as shutdown begins.
///
/// A stop has a deadline: the drain timeout, plus `closeGrace` for the close handshake. A handler that ignores
/// cancellation, or anything else that holds the runtime past it, does not hold the process: `onDeadline` gets
/// where the session stands (its committed seq never passes an unfinished event, so a successor's Resume gets
/// those events again) and ends the process.
func runShard(
    _ runtime: ShardRuntime, drainTimeout: Duration, closeGrace: Duration = .seconds(1),
    onStop: @escaping @Sendable () -> Void = {},
    onDeadline: @escaping @Sendable (_ sessionID: String?, _ committedSeq: Int) async -> Never,
    beside: [@Sendable () async -> Void]
) async -> RuntimeOutcome {
    await withTaskGroup(of: RuntimeOutcome?.self) { group in
        for work in beside {
            group.addTask {
                await work()
                return nil
            }
        }
        group.addTask {
            // The watchdog: asleep until a stop is asked for, then until the deadline (cancelled when the runtime ends).
            guard (try? await runtime.stopRequested.wait()) != nil else { return nil }
            guard (try? await Task.sleep(for: drainTimeout + closeGrace)) != nil else { return nil }
            let (sessionID, seq) = runtime.committed
            await onDeadline(sessionID, seq)
        }
        group.addTask {
            await withGracefulShutdownHandler {
                await runtime.run()
            } onGracefulShutdown: {
                onStop()
                runtime.stop()
            }
        }
        var result: RuntimeOutcome?
        for await value in group {
            if let value {
                result = value
                group.cancelAll()
            }
        }
        return result!
    }
}

extension WorkerExitStatus {
    /// The exit status a shard process ends with, after how its gateway session ended.
    static func of(_ outcome: GatewayClientOutcome) -> Int32 {
        switch outcome {
        case .stopped: return stopped
        case .failed(.configuration): return configurationError
        case .failed(.reshardRequired): return reshardRequired
        case .failed(.stopped): return banned
        }
    }
}
