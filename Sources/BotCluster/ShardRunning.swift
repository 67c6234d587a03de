import ClusterCore
import QQGateway
import ServiceLifecycle
import Worker

/// Runs a shard's runtime until it ends by itself or graceful shutdown (SIGTERM/SIGINT) stops it, with `beside`
/// running alongside (cancelled when the runtime ends); `onStop` runs as shutdown begins.
func runShard(_ runtime: ShardRuntime, onStop: @escaping @Sendable () -> Void = {}, beside: [@Sendable () async -> Void]) async -> RuntimeOutcome {
    await withTaskGroup(of: RuntimeOutcome?.self) { group in
        for work in beside {
            group.addTask {
                await work()
                return nil
            }
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
