import ArgumentParser
import BenchSupport
import ClusterCore
import ClusterProtocol
import Foundation

/// Kills a worker of a running cluster `count` times and times each kill to the emulator's RESUMED.
struct KillResumeBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill-resume", abstract: "Time from kill -9 of a worker to its shard RESUMED.")
    @Option var url: String
    @Option var socket: String
    @Option var count = 20

    func run() async throws {
        var samples: [Double] = []
        for round in 0..<count {
            let workers = try await controlStatus(socket).workers
            guard !workers.isEmpty else { throw BenchError("no workers") }
            let worker = workers[round % workers.count]
            guard let pid = worker.pid, worker.state == "ready" else {
                throw BenchError("worker \(worker.ordinal) is not ready: \(worker.state)")
            }
            let before = try await get(url + "/emulator/stats")
            let resumes = before["resumes"]?.intValue ?? 0
            // The emulator's stats clock, mapped onto ours.
            let sampledAt = MonotonicInstant.now()
            guard case .number(let clockMs) = before["clockMs"] ?? .null else { throw BenchError("no clock") }
            let offsetMs = Double(sampledAt.nanoseconds) / 1e6 - clockMs
            let killedAt = MonotonicInstant.now()
            kill(pid, SIGKILL)
            while true {
                let stats = try await get(url + "/emulator/stats")
                if (stats["resumes"]?.intValue ?? 0) > resumes, case .number(let resumedMs) = stats["lastResumeAtMs"] ?? .null {
                    samples.append(resumedMs + offsetMs - Double(killedAt.nanoseconds) / 1e6)
                    break
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            // Let the replacement report ready, and stay ready past restart.resetAfter, before the next kill: each
            // kill is then a worker's first crash (restarted at once), not a crash loop (backed off).
            while true {
                if try await controlStatus(socket).workers.allSatisfy({ $0.state == "ready" }) { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            try await Task.sleep(for: .milliseconds(300))
        }
        samples.sort()
        print("kill.resumed.p50 \(String(format: "%.1f", samples[samples.count / 2])) ms (\(count) kills)")
        print("kill.resumed.max \(String(format: "%.1f", samples.last!)) ms")
    }
}
