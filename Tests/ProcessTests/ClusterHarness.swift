import AsyncHTTPClient
import ClusterCore
import NIOCore
import NIOHTTP1
import ClusterIPC
import ClusterProtocol
import Foundation
import Testing

/// A cluster under test: an emulator process (the ground truth) and `botcluster launch` pointed at it.
struct TestCluster {
    let directory: String
    let emulator: EmulatorProcess
    let supervisor: BotclusterProcess
    var socket: String { directory + "/run/botcluster.sock" }

    static let emulatorConfig = #"{"emulator": {"adminToken": "env:TEST_ADMIN_TOKEN", "identifyWindow": "100ms", "restRate": 2000, "unrepliedGrace": "1s", "heartbeatInterval": "10s", "heartbeatTimeout": "30s", "traffic": {"rate": 60, "groupRate": 2, "c2cRate": 2}}}"#

    /// Settings short enough for tests: hangs found in 0.5 s, backoff from 100 ms, failed after 3 quick crashes.
    /// `rateBudget` replaces the generous default; `extra` adds keys (each key once: duplicates are errors).
    /// `heartbeat` sets how long a hang takes to be found (`interval` x `misses`: 0.5 s).
    static func clusterConfig(
        _ emulator: EmulatorProcess, shards: Int, extra: String = "", rateBudget: String = #"{"global": {"rate": 2000, "burst": 200}}"#,
        heartbeat: String = #"{"interval": "100ms", "misses": 5}"#
    ) -> String {
        emulator.clusterConfig(#"""
            "shards": {"count": \#(shards)},
            "identify": {"window": "100ms", "margin": "10ms"},
            "supervisor": {"heartbeat": \#(heartbeat), "abortGrace": "200ms", "stopGrace": "5s", "helloTimeout": "5s", "controlIdleTimeout": "1s"},
            "restart": {"baseDelay": "100ms", "maxDelay": "1s", "maxCrashes": 3, "crashWindow": "30s"},
            "http": {"listen": "127.0.0.1:0"},
            "rateBudget": \#(rateBudget)\#(extra)
            """#)
    }

    /// Starts both and waits for "cluster ready".
    static func start(in directory: String, shards: Int = 4, extra: String = "") async throws -> TestCluster {
        let emulator = try await EmulatorProcess.start(config: emulatorConfig, directory: directory)
        try clusterConfig(emulator, shards: shards, extra: extra).write(toFile: directory + "/cluster.json", atomically: true, encoding: .utf8)
        return try await launch(in: directory, emulator: emulator, shards: shards)
    }

    /// `botcluster launch` with the cluster.json already in `directory`, waited for until "cluster ready".
    static func launch(in directory: String, emulator: EmulatorProcess, shards: Int) async throws -> TestCluster {
        let supervisor = try BotclusterProcess(["launch"], directory: directory, environment: EmulatorProcess.secretEnvironment)
        var lines = supervisor.lines.makeAsyncIterator()
        try #require(await supervisor.waitForLine(containing: "cluster ready: \(shards) shards", iterator: &lines) != nil)
        return TestCluster(directory: directory, emulator: emulator, supervisor: supervisor)
    }

    /// The supervisor's HTTP endpoint (`http listening on URL`), e.g. `http://127.0.0.1:40123`.
    var httpURL: String? {
        supervisor.output.first { $0.hasPrefix("http listening on ") }.map { String($0.dropFirst("http listening on ".count)) }
    }

    /// `botcluster status --json`, over the control socket.
    func status() async throws -> JSONValue {
        let (ok, body) = try await IPCClient.control(path: socket, .status)
        guard ok else { throw IPCRequestError("status failed: \(body)") }
        return try JSONValue.parse(body)
    }

    func workers() async throws -> [JSONValue] {
        guard case .array(let workers) = try await status()["workers"] ?? .null else { return [] }
        return workers
    }

    func pid(of ordinal: Int) async throws -> Int32 {
        let worker = try await workers()[ordinal]
        return Int32(try #require(worker["pid"]?.intValue))
    }

    /// Waits until the cluster's status satisfies `condition`.
    func waitForStatus(_ what: String, timeout: Duration = .seconds(30), _ condition: @escaping ([JSONValue]) -> Bool) async throws {
        try await poll(what, timeout: timeout, read: workers, until: condition)
    }

    /// Stops traffic and waits until every delivered message has its reply.
    func drainTraffic() async throws {
        _ = try await emulator.admin("/emulator/traffic", #"{"rate": 0, "groupRate": 0, "c2cRate": 0}"#)
        try await emulator.waitFor("every delivered message replied") { s in
            s["messagesPending"] == 0 && s["messagesReplied"] == s["messagesDelivered"]
        }
    }

    /// Stops the supervisor with SIGTERM and checks that it and every worker are gone.
    func stop(workerPIDs: [Int32]) async throws {
        supervisor.signal(SIGTERM)
        #expect(await supervisor.waitForExit() == 0)
        try await waitUntilGone(workerPIDs, within: .seconds(5))
        emulator.process.signal(SIGTERM)
        _ = await emulator.process.waitForExit()
    }
}

/// Whether a process exists and is not a zombie (read from /proc).
func isAlive(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
    // The state follows the parenthesised command name.
    guard let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state != "Z" && state != "X"
}

/// Waits for every process in `pids` to be gone; records an issue naming the survivors otherwise.
func waitUntilGone(_ pids: [Int32], within limit: Duration) async throws {
    let deadline = ContinuousClock.now + limit
    while pids.contains(where: isAlive) {
        if ContinuousClock.now > deadline {
            Issue.record("processes left behind: \(pids.filter(isAlive))")
            return
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}

func postAdmin(_ url: String, _ body: String, token: String = EmulatorProcess.adminToken, client: HTTPClient = .shared) async throws -> String {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.headers.add(name: "Authorization", value: "Bearer \(token)")
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await client.execute(request, timeout: .seconds(10))
    return String(buffer: try await response.body.collect(upTo: 1 << 20))
}

extension JSONValue {
    var workerState: String? { self["state"]?.stringValue }
}
