import ArgumentParser
import BenchSupport
import ClusterCore
import Foundation

/// A burst through a bot connected to the emulator, timed from the burst's start to the last reply the emulator
/// recorded: for botcluster's worker and for botpy alike.
struct EndToEnd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "e2e", abstract: "Time a burst through a connected bot.")
    @Option var url: String
    @Option var count = 20_000
    @Option(help: "Replies that mark the end (count for a replying bot, 1 for a counting one).") var replies: Int?
    @Option var sessions = 1
    @Option var label = "bot"

    func run() async throws {
        let deadline = MonotonicInstant.now() + .seconds(120)
        while try await get(url + "/emulator/stats")["activeSessions"]?.intValue ?? 0 < sessions {
            guard MonotonicInstant.now() < deadline else { throw BenchError("no session connected to \(url)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        let before = try await get(url + "/emulator/stats")["messagesReplied"]?.intValue ?? 0
        let target = before + (replies ?? count)
        let burst = try await postAdmin(url + "/emulator/burst", #"{"count":\#(count)}"#)
        guard let startedAt = burst["startedAtMs"].flatMap({ if case .number(let n) = $0 { return n } else { return nil } }) else {
            throw BenchError("burst failed: \(burst.serialized())")
        }
        while true {
            let stats = try await get(url + "/emulator/stats")
            if (stats["messagesReplied"]?.intValue ?? 0) >= target, case .number(let end) = stats["lastReplyAtMs"] ?? .null {
                let seconds = (end - startedAt) / 1000
                print("e2e.\(label).rate \(Int(Double(count) / seconds)) events/s (\(count) in \(String(format: "%.3f", seconds)) s)")
                return
            }
            guard MonotonicInstant.now() < deadline else { throw BenchError("\(label): only \(stats["messagesReplied"]?.intValue ?? 0) of \(target) replies") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
