import ClusterCore
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOPosix
import NIOSSL
import Synchronization
import Testing

/// An executable built beside `botcluster` (`botcluster-bench`, `botcluster-chaos`).
func siblingBinary(_ name: String) -> String {
    URL(fileURLWithPath: botclusterBinary()).deletingLastPathComponent().appendingPathComponent(name).path
}

/// The built `botcluster` executable, next to the test bundle.
func botclusterBinary() -> String {
    let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundleDirectory, bundleDirectory.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("botcluster").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return bundleDirectory.appendingPathComponent("botcluster").path
}

/// A file of this repository the tests read (deploy/, scripts/): beside the test bundle when the suites run staged
/// as another user (scripts/test.sh copies them there), else in the checkout.
func repositoryFile(_ path: String, source: String = #filePath) -> String {
    let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let staged = bundleDirectory.appendingPathComponent(path).path
    if FileManager.default.fileExists(atPath: staged) { return staged }
    return URL(fileURLWithPath: source).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(path).path
}

/// A scratch directory for one test, removed at the end.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async rethrows -> T {
    let path = NSTemporaryDirectory() + "botcluster-test-" + UUID().uuidString.prefix(8)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// A running `botcluster` process whose output is read line by line, so tests wait for what it says.
final class BotclusterProcess: Sendable {
    let process: Process
    let lines: AsyncStream<String>
    private let collected = LineCollector()
    /// The process's standard input, when asked for (`send`); otherwise it reads from the test's.
    private let input: Pipe?

    init(_ arguments: [String], directory: String, environment: [String: String] = [:], executable: String = botclusterBinary(), withInput: Bool = false) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        process.environment = env
        input = withInput ? Pipe() : nil
        if let input { process.standardInput = input }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let (lines, continuation) = AsyncStream<String>.makeStream()
        self.lines = lines
        let collected = collected
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                let tail = collected.pending.withLock { $0.rest() }
                if let tail {
                    collected.lines.withLock { $0.append(tail) }
                    continuation.yield(tail)
                }
                continuation.finish()
                collected.ended.leave()
                return
            }
            let complete = collected.pending.withLock { $0.feed(data) }
            for line in complete {
                collected.lines.withLock { $0.append(line) }
                continuation.yield(line)
            }
        }
        collected.ended.enter()
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Writes `line` and a newline to the process's standard input (started `withInput`).
    func send(_ line: String) {
        input?.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Everything printed so far.
    var output: [String] { collected.lines.withLock { $0 } }

    /// Waits for a line containing `text` (the output so far counts); fails the test if the process ends first.
    @discardableResult
    func waitForLine(containing text: String, iterator: inout AsyncStream<String>.Iterator) async -> String? {
        while let line = await iterator.next() {
            if line.contains(text) { return line }
        }
        Issue.record("the process ended before printing \"\(text)\"; output:\n\(output.suffix(30).joined(separator: "\n"))")
        return nil
    }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits for the process to end and returns its exit status (or 128 + signal); by then `output` holds all it
    /// printed (unless a child it left behind still holds the pipe, which is waited for at most 5 s). A process
    /// still running after `limit` is killed (its workers follow it: PDEATHSIG) and the test fails: an exit that
    /// never comes ends the test, not the suite, and leaves nothing behind.
    func waitForExit(within limit: Duration = .seconds(120)) async -> Int32 {
        let pid = process.processIdentifier
        let killed = AsyncSignal<Void>()
        let overdue = DispatchWorkItem { [process] in
            guard process.isRunning else { return }
            killed.set(())
            kill(pid, SIGKILL)
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(limit.components.seconds) * 1_000_000_000), execute: overdue)
        defer {
            overdue.cancel()
            if killed.current != nil { Issue.record("pid \(pid) did not exit within \(limit); killed") }
        }
        return await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                self.process.waitUntilExit()
                _ = self.collected.ended.wait(timeout: .now() + 5)
                let status = self.process.terminationReason == .uncaughtSignal ? 128 + self.process.terminationStatus : self.process.terminationStatus
                continuation.resume(returning: status)
            }
        }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// What a process printed: whole lines, and the unfinished tail.
final class LineCollector: Sendable {
    let lines = Mutex<[String]>([])
    let pending = Mutex(LineSplitter(maxLine: 1 << 20))
    /// Left when the output reaches its end.
    let ended = DispatchGroup()
}

/// A `botcluster emulator` process on a free port.
struct EmulatorProcess {
    let process: BotclusterProcess
    let url: String
    /// The client the test reaches the emulator's counters and admin API with (trusting its certificate over TLS).
    let http: HTTPClient

    /// Starts `botcluster emulator`; `trustRoots` is the PEM of the certificate it serves TLS with, if it does.
    static func start(config: String, directory: String, port: String = "0", trustRoots: String? = nil) async throws -> EmulatorProcess {
        try config.write(toFile: directory + "/emulator.json", atomically: true, encoding: .utf8)
        let process = try BotclusterProcess(["emulator", "--config", "emulator.json", "--port", port], directory: directory, environment: secretEnvironment)
        var lines = process.lines.makeAsyncIterator()
        let line = try #require(await process.waitForLine(containing: "emulator listening on ", iterator: &lines))
        return EmulatorProcess(process: process, url: String(line.split(separator: " ").last!), http: trustRoots.map(httpClient(trusting:)) ?? .shared)
    }

    /// The emulator's ground-truth counters.
    func stats() async throws -> [String: Double] {
        let request = HTTPClientRequest(url: url + "/emulator/stats")
        let response = try await http.execute(request, timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1 << 20)
        let object = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] ?? [:]
        return object.compactMapValues { ($0 as? NSNumber)?.doubleValue }
    }

    /// The emulator's trace of the messages nobody answered (`GET /emulator/unreplied`).
    func unreplied(limit: Int = 200) async throws -> UnrepliedMessages {
        let response = try await http.execute(HTTPClientRequest(url: url + "/emulator/unreplied?limit=\(limit)"), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1 << 24)
        return try JSONDecoder().decode(UnrepliedMessages.self, from: Data(buffer: body))
    }

    /// Waits until the counters satisfy `condition`.
    func waitFor(_ what: String, timeout: Duration = .seconds(60), _ condition: @escaping ([String: Double]) -> Bool) async throws {
        try await poll(what, timeout: timeout, read: stats, until: condition)
    }

    /// A cluster.json for workers that use this emulator as their platform.
    func clusterConfig(_ extra: String = "") -> String {
        #"{"gateway": {"embedded": false, "url": "\#(url)", "tokenURL": "\#(url)/app/getAppAccessToken"}, "app": {"id": "102000001", "secret": "env:TEST_APP_SECRET"}\#(extra.isEmpty ? "" : ", " + extra)}"#
    }

    /// The app secret (workers read it from `TEST_APP_SECRET`) and the emulator's admin token (`TEST_ADMIN_TOKEN`).
    static let secretEnvironment = ["TEST_APP_SECRET": "emulator-development-secret", "TEST_ADMIN_TOKEN": adminToken]
    static let adminToken = "process-test-admin-token"

    /// POSTs to the emulator's admin API with its token.
    func admin(_ path: String, _ body: String) async throws -> String {
        try await postAdmin(url + path, body, token: Self.adminToken, client: http)
    }
}

/// What the tests read of `GET /emulator/unreplied`: each unreplied message, the shards and seqs it was routed to,
/// and what became of those sessions.
struct UnrepliedMessages: Decodable {
    struct Route: Decodable {
        var shard: String
        var seq: Int
        var state: String
    }

    struct Message: Decodable {
        var id: String
        var routes: [Route]
    }

    var count: Int
    var messages: [Message]
}

/// HTTP clients that trust a test certificate, one per file, kept for the life of the test process (a client must
/// be shut down before it goes away; these never go away).
let trustingClients = Mutex<[String: HTTPClient]>([:])

func httpClient(trusting trustRoots: String) -> HTTPClient {
    trustingClients.withLock { clients in
        if let client = clients[trustRoots] { return client }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.additionalTrustRoots = [.file(trustRoots)]
        let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: .init(tlsConfiguration: tls))
        clients[trustRoots] = client
        return client
    }
}

/// Reads a state every 20 ms until `condition` holds; past `timeout` records an issue showing the last state read
/// and throws. (The processes under test report their state when asked, not when it changes.)
func poll<State>(
    _ what: String, timeout: Duration, read: () async throws -> State, until condition: (State) -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        let state = try await read()
        if condition(state) { return }
        if ContinuousClock.now > deadline {
            Issue.record("timed out waiting for \(what): \(state)")
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}
