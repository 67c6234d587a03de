import AsyncHTTPClient
import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

extension RealProcesses {
    /// The supervisor as a service: its HTTP endpoint scraped by a real Prometheus and checked by promtool, the
    /// status page in a real headless Chromium, sd_notify on a real datagram socket, `status --watch` on a pty.
    @Suite("metrics, status page and service manager (real processes)", .serialized, .timeLimit(.minutes(4)))
    struct ObservabilityTests {
        @Test func aScrapeSeesTheWholeClusterAndPrometheusAndPromtoolAcceptIt() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 4)
                let base = try #require(cluster.httpURL)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                // Traffic flows (the emulator sends 60 messages a second): wait for replies before scraping.
                try await cluster.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 20 }

                #expect(try await httpGet(base + "/healthz") == (200, "ok\n"))
                let (readyStatus, readyBody) = try await httpGet(base + "/readyz")
                #expect(readyStatus == 200)
                #expect(try JSONValue.parse(readyBody)["ready"] == .bool(true))
                let status = try JSONValue.parse(try await httpGet(base + "/status").body)
                guard case .array(let workers) = status["workers"] ?? .null else { Issue.record("no workers in /status"); return }
                #expect(workers.count == 4)
                // Session ids are cut to a prefix on the HTTP port.
                #expect(workers.allSatisfy { $0["session"]?["id"]?.stringValue?.hasSuffix("…") ?? false })

                let scrape = try await httpGet(base + "/metrics").body
                #expect(scrape.contains("botcluster_shards{state=\"ready\"} 4"))
                #expect(sample(scrape, "botcluster_events_received_total{type=\"AT_MESSAGE_CREATE\"}") ?? 0 > 0)
                #expect(sample(scrape, "botcluster_rest_requests_total{route=\"POST /channels/{channel_id}/messages\",status=\"200\"}") ?? 0 > 0)
                #expect(sample(scrape, "botcluster_handler_duration_seconds_count") ?? 0 > 0)
                #expect(sample(scrape, "botcluster_ipc_round_trip_seconds_count") ?? 0 > 0)
                #expect(scrape.contains("botcluster_sessions_total{kind=\"identify\"} 4"))
                #expect(!scrape.contains("emulator-development-secret"))

                // promtool lints a live scrape.
                let lint = try runTool("/usr/bin/promtool", ["check", "metrics"], input: scrape, in: dir)
                #expect(lint.status == 0, "promtool check metrics: \(lint.output)")
                // The alert rules parse, and every metric the dashboard's queries use exists in a live scrape.
                let rules = try runTool("/usr/bin/promtool", ["check", "rules", repositoryFile("deploy/prometheus/alerts.yml")], in: dir)
                #expect(rules.status == 0, "promtool check rules: \(rules.output)")
                let dashboard = try String(contentsOfFile: repositoryFile("deploy/grafana/botcluster.json"), encoding: .utf8)
                let used = Set(dashboard.matches(of: /botcluster_[a-z_]+/).map { String($0.output) })
                #expect(used.count >= 10)
                let exported = Set(scrape.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { $0.split(whereSeparator: { $0 == "{" || $0 == " " }).first.map(String.init) })
                #expect(used.subtracting(exported).isEmpty, "the dashboard queries metrics no scrape has: \(used.subtracting(exported).sorted())")

                // A real Prometheus scrapes it (with the alert rules loaded) and answers PromQL over its API.
                let port = try freeTCPPort()
                let target = try #require(base.split(separator: "/").last)
                try """
                    global: {scrape_interval: 1s, evaluation_interval: 1s}
                    rule_files: ["\(repositoryFile("deploy/prometheus/alerts.yml"))"]
                    scrape_configs:
                      - job_name: botcluster
                        static_configs: [{targets: ["\(target)"]}]
                    """.write(toFile: dir + "/prometheus.yml", atomically: true, encoding: .utf8)
                let prometheus = try BotclusterProcess(
                    ["--config.file=prometheus.yml", "--storage.tsdb.path=tsdb", "--web.listen-address=127.0.0.1:\(port)"],
                    directory: dir, executable: "/usr/bin/prometheus"
                )
                var lines = prometheus.lines.makeAsyncIterator()
                try #require(await prometheus.waitForLine(containing: "Server is ready to receive web requests", iterator: &lines) != nil)
                let query = "http://127.0.0.1:\(port)/api/v1/query?query=" + "sum(botcluster_shards{state=\"ready\"})".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
                try await poll("Prometheus to answer 4 ready shards", timeout: .seconds(30), read: { try await httpGet(query).body }) { body in
                    body.contains("\"status\":\"success\"") && body.contains(",\"4\"]")
                }
                let ruleState = try await httpGet("http://127.0.0.1:\(port)/api/v1/rules").body
                #expect(ruleState.contains("BotclusterShardNotReady") && !ruleState.contains("\"health\":\"err\""))
                prometheus.signal(SIGTERM)
                #expect(await prometheus.waitForExit() == 0)
                try await cluster.stop(workerPIDs: pids)
            }
        }

        @Test func theStatusPageShowsEveryShardAndARestartWithoutAReload() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 4)
                let base = try #require(cluster.httpURL)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                let page = try BotclusterProcess(
                    [repositoryFile("scripts/page_driver.py"), base + "/", "--wait-ready", "4", "--timeout", "60"],
                    directory: dir, executable: "/usr/bin/python3", withInput: true
                )
                var lines = page.lines.makeAsyncIterator()
                let ready = try #require(await page.waitForLine(containing: "ready ", iterator: &lines))
                let shown = try JSONValue.parse(String(ready.dropFirst("ready ".count)))
                guard case .array(let rows) = shown["rows"] ?? .null else { Issue.record("no rows: \(ready)"); return }
                #expect(rows.count == 4 && rows.allSatisfy { $0["state"] == .string("ready") })

                // kill -9 a worker while the page stays open: its row shows the restart, and the feed the crash.
                kill(pids[1], SIGKILL)
                page.send("restarted 1")
                let restarted = await page.waitForLine(containing: "restarted ", iterator: &lines)
                #expect(restarted != nil, "the page did not show the restart: \(page.output.suffix(3))")
                page.send("quit")
                #expect(await page.waitForExit(within: .seconds(30)) == 0)
                try await cluster.stop(workerPIDs: pids.filter { $0 != pids[1] } + [try await cluster.pid(of: 1)])
            }
        }

        @Test func theServiceManagerHearsReadyWatchdogAndStopping() async throws {
            try await withTemporaryDirectory { dir in
                let listener = try DatagramListener(path: dir + "/notify.sock")
                defer { listener.close() }
                let emulator = try await EmulatorProcess.start(config: TestCluster.emulatorConfig, directory: dir)
                try TestCluster.clusterConfig(emulator, shards: 2).write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                var environment = EmulatorProcess.secretEnvironment
                environment["NOTIFY_SOCKET"] = dir + "/notify.sock"
                environment["WATCHDOG_USEC"] = "400000"
                let supervisor = try BotclusterProcess(["launch"], directory: dir, environment: environment)
                var lines = supervisor.lines.makeAsyncIterator()
                try #require(await supervisor.waitForLine(containing: "cluster ready: 2 shards", iterator: &lines) != nil)
                // Fed every 200 ms (half of WATCHDOG_USEC) while the supervisor's loops answer.
                try await poll("READY=1 and then three watchdog pings", timeout: .seconds(20), read: { listener.messages }) { messages in
                    guard let ready = messages.firstIndex(where: { $0.contains("READY=1") }) else { return false }
                    return messages[ready...].filter { $0 == "WATCHDOG=1" }.count >= 3
                }
                supervisor.signal(SIGTERM)
                #expect(await supervisor.waitForExit() == 0)
                let messages = listener.messages
                #expect(messages.first?.hasPrefix("STATUS=starting 2 shards") ?? false, "\(messages)")
                let ready = messages.firstIndex { $0.hasPrefix("READY=1\nSTATUS=ready: 2 shards") }
                let stopping = messages.firstIndex { $0.hasPrefix("STOPPING=1") }
                #expect(ready != nil && stopping != nil && ready! < stopping!, "\(messages)")
                emulator.process.signal(SIGTERM)
                _ = await emulator.process.waitForExit()
            }
        }

        /// A shard the platform refuses for good (its identify closed with 4914: delisted) does not hold the service in
        /// "activating" until systemd's start timeout kills the others: READY=1 comes once every other shard is
        /// ready, and says how many failed.
        @Test func aShardThatFailsForGoodStillLetsTheServiceBecomeReady() async throws {
            try await withTemporaryDirectory { dir in
                let listener = try DatagramListener(path: dir + "/notify.sock")
                defer { listener.close() }
                let emulator = try await EmulatorProcess.start(config: TestCluster.emulatorConfig, directory: dir)
                _ = try await emulator.admin("/emulator/faults", #"{"kind": "refuseIdentify", "shard": 1, "total": 3, "code": 4914}"#)
                try TestCluster.clusterConfig(emulator, shards: 3).write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                var environment = EmulatorProcess.secretEnvironment
                environment["NOTIFY_SOCKET"] = dir + "/notify.sock"
                let supervisor = try BotclusterProcess(["launch"], directory: dir, environment: environment)
                try await poll("READY=1 with the failed shard counted", timeout: .seconds(30), read: { listener.messages }) { messages in
                    messages.contains { $0.hasPrefix("READY=1\nSTATUS=ready: 2 of 3 shards; 1 failed for good") }
                }
                #expect(!supervisor.output.contains { $0.contains("cluster ready") })
                supervisor.signal(SIGTERM)
                #expect(await supervisor.waitForExit() == 0)
                emulator.process.signal(SIGTERM)
                _ = await emulator.process.waitForExit()
            }
        }

        @Test func statusWatchRedrawsTheTableInPlaceOnATerminal() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                // script(1) gives it a pty, as an operator's terminal would.
                let watch = try BotclusterProcess(
                    ["-qfec", "'\(botclusterBinary())' status --watch --interval 200ms", "/dev/null"], directory: dir, executable: "/usr/bin/script"
                )
                try await poll("three frames drawn in place", timeout: .seconds(20), read: { watch.output.joined(separator: "\n") }) { text in
                    text.components(separatedBy: "\u{1B}[H").count > 3 && text.contains("ORD") && text.contains("ctrl-c to quit")
                }
                let text = watch.output.joined(separator: "\n")
                #expect(text.contains("\u{1B}[J"))
                #expect(text.contains("ready"))
                watch.signal(SIGTERM)
                _ = await watch.waitForExit(within: .seconds(10))
                try await cluster.stop(workerPIDs: pids)
            }
        }
    }
}

/// The value of the sample line starting with `name` (labels included), if the scrape has one.
func sample(_ scrape: String, _ name: String) -> Double? {
    scrape.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
}

/// GET `url`: the status and the body.
func httpGet(_ url: String) async throws -> (status: Int, body: String) {
    let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
    return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 16 << 20)))
}

/// Runs a tool to its end (with `input` on its standard input): its exit status and output.
func runTool(_ executable: String, _ arguments: [String], input: String? = nil, in directory: String) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    let stdin = Pipe()
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    try stdin.fileHandleForWriting.close()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, text)
}

/// A TCP port free now on loopback (for a tool that cannot pick its own and say which).
func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw POSIXError(.EADDRINUSE) }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A Unix datagram socket listening as systemd's notify socket does: every datagram, in order.
final class DatagramListener: Sendable {
    let fd: Int32
    let received = Mutex<[String]>([])
    let stopped = Atomic<Bool>(false)

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !stopped.load(ordering: .relaxed) {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count > 0 {
                    let message = String(decoding: buffer[0..<count], as: UTF8.self)
                    received.withLock { $0.append(message) }
                }
            }
            Glibc.close(fd)
        }
        thread.start()
    }

    var messages: [String] { received.withLock { $0 } }

    func close() {
        stopped.store(true, ordering: .relaxed)
        // The reading thread wakes within its 100 ms receive timeout, closes the socket and ends.
    }
}
