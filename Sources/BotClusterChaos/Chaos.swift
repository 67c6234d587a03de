import ArgumentParser
import BenchSupport
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation

/// scripts/chaos.sh: a cluster on the emulator with steady traffic, hit at seeded random moments by every fault
/// it must survive; at the end, the emulator's ground truth decides.
extension GatewayMode: ExpressibleByArgument {}

@main
struct Chaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "botcluster-chaos", abstract: "Faults at random against a live cluster; the emulator's counters judge.")
    @Option(help: "Seconds of faults.") var duration = 60
    @Option(help: "Seed of the random choices.") var seed = 1
    @Option(help: "The botcluster executable.") var botcluster = "botcluster"
    @Option(help: "Shards at launch (4; with --hosts, two per host).") var shards: Int?
    @Option(help: "How events arrive: websocket or webhook.") var mode: GatewayMode = .websocket
    @Option(help: "Supervisors sharing a PostgreSQL store, each in a network namespace of its own (run as root).") var hosts = 1
    @Option(help: "With --hosts: the PostgreSQL server, postgres://USER@127.0.0.1:PORT/DATABASE.") var postgres: String?
    @Option(help: "With --hosts: the server's directory (scripts/postgres.sh), so that it can be restarted.") var postgresDirectory: String?
    @Option(help: "With --hosts: the user the supervisors run as.") var user = "botcluster-test"

    enum Action: String, CaseIterable {
        case kill9, sigstop, reconnect, invalidSession, drop, stopAcks, close4009, scaleUp, scaleDown, rolling

        /// The faults of a mode: the gateway's (op 7, op 9, drops, lost ACKs, 4009) only where there are sessions. In
        /// webhook mode the platform's redeliveries come instead (the emulator pushes a share of events twice, and
        /// delivers again what is not acknowledged).
        static func of(_ mode: GatewayMode) -> [Action] {
            mode == .websocket ? allCases : [.kill9, .sigstop, .scaleUp, .scaleDown, .rolling]
        }
    }

    func run() async throws {
        if hosts > 1 {
            guard geteuid() == 0 else { throw ValidationError("--hosts puts each host in a network namespace of its own: run it as root (the hosts run as --user)") }
            guard mode == .websocket else { throw ValidationError("--hosts runs the websocket mode: several hosts do not take webhook delivery") }
            guard let postgres else { throw ValidationError("--hosts needs --postgres (scripts/chaos.sh starts a server when it is not given)") }
            // The hosts start in directories of their own: a relative path would not be found from there.
            let executable = botcluster.hasPrefix("/") ? botcluster : FileManager.default.currentDirectoryPath + "/" + botcluster
            let chaos = HostsChaos(
                hosts: hosts, shards: shards ?? 2 * hosts, duration: duration, seed: seed, botcluster: executable,
                postgres: postgres, postgresDirectory: postgresDirectory, user: try RunAs(user)
            )
            throw ExitCode(try await chaos.run())
        }
        let shards = self.shards ?? 4
        let dir = NSTemporaryDirectory() + "botcluster-chaos-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SplitMix64(seed: UInt64(seed))
        let log = chaosLog

        let delivery = mode == .webhook
            ? #""delivery": "webhook", "webhook": {"retryBase": "100ms", "retryMax": "2s", "retryLimit": 30}, "#
            : ""
        let redeliveries = mode == .webhook ? #", "duplicateShare": 0.02"# : ""
        let emulatorConfig = #"{"emulator": {\#(delivery)"adminToken": "env:BOTCLUSTER_BENCH_ADMIN_TOKEN", "identifyWindow": "200ms", "restRate": 200, "heartbeatInterval": "1s", "heartbeatTimeout": "10s", "unrepliedGrace": "3s", "sessionTTL": "1m", "sessionStartLimit": {"maxConcurrency": 2}, "traffic": {"rate": 20, "groupRate": 2, "c2cRate": 2, "renameShare": 0.1, "renameEvery": "5s"\#(redeliveries)}}, "log": {"level": "warning"}}"#
        try emulatorConfig.write(toFile: dir + "/emulator.json", atomically: true, encoding: .utf8)
        let emulator = try ChildProcess(botcluster, ["emulator", "--config", "emulator.json", "--port", "0"], directory: dir, environment: ["BOTCLUSTER_BENCH_ADMIN_TOKEN": benchAdminToken])
        defer { emulator.terminate() }
        guard let line = await emulator.waitForLine(containing: "emulator listening on ") else { throw BenchError("the emulator did not start") }
        let url = String(line.split(separator: " ").last!)
        await EmulatorClock.sync(url)
        let clusterConfig = #"""
            {"gateway": {"mode": "\#(mode.rawValue)", "embedded": false, "url": "\#(url)", "tokenURL": "\#(url)/app/getAppAccessToken"},
             "app": {"id": "102000001", "secret": "env:CHAOS_APP_SECRET"},
             "shards": {"count": \#(shards)},
             "identify": {"window": "200ms", "margin": "20ms"},
             "supervisor": {"heartbeat": {"interval": "100ms", "misses": 5}, "abortGrace": "200ms", "stopGrace": "5s"},
             "restart": {"baseDelay": "100ms", "maxDelay": "2s", "resetAfter": "1s", "maxCrashes": 50, "crashWindow": "1m"},
             "rateBudget": {"global": {"rate": 150, "burst": 20}},
             "webhook": {"listen": "127.0.0.1:0", "streamLimit": 5}, "http": {"listen": "off"},
             "log": {"level": "warning"}}
            """#
        try clusterConfig.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
        let supervisor = try ChildProcess(botcluster, ["launch"], directory: dir, environment: ["CHAOS_APP_SECRET": "emulator-development-secret"])
        defer { supervisor.kill() }
        let expected = mode == .webhook ? ["cluster ready", "webhook listening on "] : ["cluster ready"]
        guard let started = await supervisor.waitForLines(containing: expected) else { throw BenchError("the cluster did not start") }
        if let line = started["webhook listening on "] {
            // The platform's console would be told the callback URL; the emulator is told through its admin API.
            let base = String(line.split(separator: " ").last!)
            _ = try await postAdmin(url + "/emulator/webhook", #"{"url": "\#(base)/qqbot/callback"}"#)
        }
        let socket = dir + "/run/botcluster.sock"
        log("cluster of \(shards) up (\(mode.rawValue)); faults for \(duration) s, seed \(seed)")
        let actions = Action.of(mode)

        var seenPIDs = Set<Int32>()
        var hardKills = 0
        var counts: [Action: Int] = [:]
        var current = shards
        let end = MonotonicInstant.now() + .seconds(duration)
        while MonotonicInstant.now() < end {
            try await Task.sleep(for: .milliseconds(500 + Int64(rng.next() % 2500)))
            let workers = (try? await statusWorkers(socket)) ?? []
            for worker in workers { if let pid = worker.pid { seenPIDs.insert(pid) } }
            let ready = workers.filter { $0.state == "ready" }
            let action = actions[Int(rng.next() % UInt64(actions.count))]
            counts[action, default: 0] += 1
            let target = ready.isEmpty ? nil : ready[Int(rng.next() % UInt64(ready.count))]
            let shard = target?.ordinal ?? 0
            switch action {
            case .kill9, .sigstop:
                guard let pid = target?.pid else { continue }
                kill(pid, action == .kill9 ? SIGKILL : SIGSTOP)
                hardKills += 1
                log("\(action.rawValue) worker \(shard) (pid \(pid))")
            case .reconnect, .invalidSession, .drop, .stopAcks, .close4009:
                log(try await gatewayFault(action.rawValue, url: url, shard: shard, total: current))
            case .scaleUp, .scaleDown:
                // Around the launch size: from half of it to one and a half (2...8 for the default 4 shards).
                let step = max(1, shards / 8) * (1 + Int(rng.next() % 2))
                let next = action == .scaleUp
                    ? min(max(8, shards * 3 / 2), ShardsConfig.maxCount, current + step) : max(2, shards / 2, current - step)
                guard next != current else { continue }
                let (ok, text) = await controlCommand(socket, .scale(.count(next), planOnly: false), timeout: .seconds(120))
                log("scale \(current) -> \(next): \(text)")
                if ok { current = next }
            case .rolling:
                let (_, text) = await controlCommand(socket, .rollingRestart(maxUnavailable: 1), timeout: .seconds(120))
                log("rolling restart: \(text)")
            }
        }

        // Let the traffic drain: no new messages, every delivered one answered (or the grace ran out).
        let truth = try await GroundTruth.drain(url) {
            for worker in (try? await statusWorkers(socket)) ?? [] { if let pid = worker.pid { seenPIDs.insert(pid) } }
        }
        let status = (try? await statusWorkers(socket)) ?? []
        let restarts = status.map(\.restarts).reduce(0, +)
        for worker in status { if let pid = worker.pid { seenPIDs.insert(pid) } }
        supervisor.signal(SIGTERM)
        let supervisorStatus = await supervisor.waitForExit()
        // Anything left alive of what the cluster ever ran?
        let deadline = MonotonicInstant.now() + .seconds(5)
        var left = seenPIDs.filter(processAlive)
        while !left.isEmpty && MonotonicInstant.now() < deadline {
            try await Task.sleep(for: .milliseconds(50))
            left = seenPIDs.filter(processAlive)
        }

        let n = truth.n
        let rows: [(String, Int)] = truth.messageRows + [
            ("hard kills", hardKills), ("worker restarts (current layout)", restarts), ("processes left behind", left.count),
        ] + (mode == .webhook ? [
            ("webhook POSTs", n("webhookPosts")), ("webhook acknowledged", n("webhookAcked")), ("webhook redelivered (not acknowledged)", n("webhookRetries")),
            ("webhook pushed twice (same id)", n("duplicatePushes")), ("webhook given up", n("webhookGaveUp")),
        ] : [])
        GroundTruth.print("chaos ground truth (\(mode.rawValue), seed \(seed), \(duration) s of faults: \(counts.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", ")))", rows)
        var failures = truth.failures(allowance: hardKills, killed: "hard kills")
        if mode == .webhook && n("identifies") + n("resumes") > 0 { failures.append("webhook mode started \(n("identifies") + n("resumes")) gateway sessions") }
        if n("webhookGaveUp") > 0 { failures.append("\(n("webhookGaveUp")) webhook deliveries given up") }
        if !left.isEmpty { failures.append("processes left behind: \(left.sorted())") }
        if supervisorStatus != 0 { failures.append("the supervisor exited with \(supervisorStatus)") }
        // Where the messages nobody answered (or nobody was delivered) went, on the clock of the lines above.
        for line in await GroundTruth.unrepliedLines(url, limit: failures.isEmpty ? 5 : 20) { say("  \(line)") }
        for failure in failures { say("FAIL: \(failure)") }
        if failures.isEmpty { say("PASS") }
        throw ExitCode(failures.isEmpty ? 0 : 1)
    }

    func statusWorkers(_ socket: String) async throws -> [ClusterStatus.Worker] {
        try await controlStatus(socket).workers
    }

    func controlCommand(_ socket: String, _ command: ControlCommand, timeout: Duration) async -> (Bool, String) {
        do {
            return try await IPCClient.control(path: socket, command, timeout: timeout)
        } catch {
            return (false, "\(error)")
        }
    }
}

/// Writes a line to standard output at once (stdio would hold it in its buffer when the output is a pipe or a file,
/// and a run that hangs or is killed would not show how far it got).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
