import ArgumentParser
import BenchSupport
import ClusterCore
import Foundation

/// Times `botcluster scale` of a running cluster under steady traffic, and reads from the emulator how long the
/// messages generated before and during the rescale waited for their reply.
struct RescaleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rescale", abstract: "Time a live rescale and the reply latency around it.")
    @Option(help: "Emulator base URL, http://127.0.0.1:PORT.") var url: String
    @Option(help: "The botcluster executable.") var botcluster: String
    @Option(help: "The running cluster's cluster.json.") var config: String
    @Option(help: "The cluster's shard count now.") var from = 4
    @Option(help: "The shard count to scale to (and back from after each round).") var to = 8
    @Option(help: "Rounds; the median is reported.") var rounds = 3
    @Option(help: "Seconds of steady traffic measured before each rescale.") var before = 3

    func run() async throws {
        var took: [Double] = [], switchAt: [Double] = []
        var beforeP99: [Double] = [], duringP99: [Double] = [], beforeP50: [Double] = [], duringP50: [Double] = []
        var unreplied = 0, during = 0
        for round in 1...rounds {
            let steadyFrom = try await clockMs()
            try await Task.sleep(for: .seconds(before))
            let started = MonotonicInstant.now()
            let startMs = try await clockMs()
            let scale = try ChildProcess(botcluster, ["scale", "--shards", "\(to)", "--config", config], directory: (config as NSString).deletingLastPathComponent)
            guard await scale.waitForLine(containing: "switched:") != nil else { throw BenchError("scale \(from) -> \(to) did not switch") }
            let switched = MonotonicInstant.now()
            guard await scale.waitForExit() == 0 else { throw BenchError("scale \(from) -> \(to) failed") }
            let ended = MonotonicInstant.now()
            let endMs = try await clockMs()
            took.append((ended - started).seconds)
            switchAt.append((switched - started).seconds)
            let steady = try await settledLatency(steadyFrom, startMs)
            let rescale = try await settledLatency(startMs, endMs)
            beforeP50.append(steady.p50); beforeP99.append(steady.p99)
            duringP50.append(rescale.p50); duringP99.append(rescale.p99)
            unreplied += steady.unreplied + rescale.unreplied
            during += rescale.messages
            print("round \(round): \(from) -> \(to) in \(String(format: "%.2f", took.last!)) s (switch at \(String(format: "%.2f", switchAt.last!)) s); "
                + "reply p50/p99 before \(ms(steady.p50))/\(ms(steady.p99)) ms, during \(ms(rescale.p50))/\(ms(rescale.p99)) ms over \(rescale.messages) messages")
            // Back to where the round started (not measured).
            let back = try ChildProcess(botcluster, ["scale", "--shards", "\(from)", "--config", config], directory: (config as NSString).deletingLastPathComponent)
            guard await back.waitForExit() == 0 else { throw BenchError("scale \(to) -> \(from) failed") }
        }
        print("rescale.took \(String(format: "%.2f", median(took))) s")
        print("rescale.switch \(String(format: "%.2f", median(switchAt))) s")
        print("rescale.before.p50 \(String(format: "%.1f", median(beforeP50))) ms")
        print("rescale.before.p99 \(String(format: "%.1f", median(beforeP99))) ms")
        print("rescale.during.p50 \(String(format: "%.1f", median(duringP50))) ms")
        print("rescale.during.p99 \(String(format: "%.1f", median(duringP99))) ms")
        print("rescale.during.messages \(during) messages")
        print("rescale.unreplied \(unreplied) messages")
    }

    func ms(_ value: Double) -> String { String(format: "%.1f", value) }

    func clockMs() async throws -> Double {
        guard case .number(let ms) = try await get(url + "/emulator/stats")["clockMs"] ?? .null else { throw BenchError("no clockMs in the emulator's stats") }
        return ms
    }

    /// The latency of a window once its last messages have their replies (or after 10 s, unreplied counted).
    func settledLatency(_ fromMs: Double, _ untilMs: Double) async throws -> (messages: Int, unreplied: Int, p50: Double, p99: Double) {
        let deadline = MonotonicInstant.now() + .seconds(10)
        while true {
            let window = try await latency(fromMs, untilMs)
            if window.unreplied == 0 || MonotonicInstant.now() >= deadline { return window }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func latency(_ fromMs: Double, _ untilMs: Double) async throws -> (messages: Int, unreplied: Int, p50: Double, p99: Double) {
        let reply = try await get(url + "/emulator/latency?fromMs=\(fromMs)&untilMs=\(untilMs)")
        func number(_ key: String) throws -> Double {
            guard case .number(let n) = reply[key] ?? .null else { throw BenchError("no \(key) in \(reply.serialized())") }
            return n
        }
        return (Int(try number("messages")), Int(try number("unreplied")), try number("p50Ms"), try number("p99Ms"))
    }
}
