import ArgumentParser
import BenchSupport
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation

/// Several hosts sharing PostgreSQL on this machine (processes with run directories of their own, on loopback): the
/// startup of the whole cluster against what the identify limits allow, the store's transactions per event under
/// steady traffic, a rename's way to every worker of every host beside its way to the workers of its own host, and
/// the takeover after kill -9 of a supervisor against its bound (`leaseTTL` plus one `renewInterval`), and a rescale
/// across the hosts against the identify limits.
struct HostsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hosts", abstract: "Startup, store transactions per event, takeover time and a rescale of several hosts.")
    @Option(help: "The botcluster executable.") var botcluster: String
    @Option(help: "The PostgreSQL server, postgres://USER@HOST:PORT/DATABASE (a database of the bench's own is made there).") var postgres: String
    @Option var hosts = 3
    @Option var shards = 12
    @Option(help: "Supervisors killed with -9, one at a time.") var kills = 5
    @Option(help: "store.leaseTTL of the hosts.") var leaseTTL = "3s"
    @Option(help: "store.renewInterval of the hosts.") var renewInterval = "300ms"
    @Option(help: "store.fenceMargin of the hosts.") var fenceMargin = "600ms"
    @Option(help: "store.timeout of the hosts.") var storeTimeout = "700ms"

    func run() async throws {
        let dir = NSTemporaryDirectory() + "botcluster-bench-hosts-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let database = "bench_hosts_\(getpid())"
        _ = try await runCommand(["psql", "-q", "-v", "ON_ERROR_STOP=1", postgres, "-c", "CREATE DATABASE \(database)"])
        do {
            try await measure(in: dir, database: database)
        } catch {
            _ = try? await runCommand(["psql", "-q", postgres, "-c", "DROP DATABASE IF EXISTS \(database) WITH (FORCE)"])
            throw error
        }
    }

    /// Renames one user `count` times, each seen in one guild's message; per rename, the milliseconds until every
    /// worker of one host serves the new name and until every worker of every host does (sorted).
    func renames(url: String, sockets: [String], count: Int = 20) async throws -> (local: [Double], across: [Double]) {
        let user = "144115188075855042"
        func served() async throws -> [[String: String?]] {
            var all: [[String: String?]] = []
            for socket in sockets { all.append(try await controlUserNames(socket, user: user)) }
            return all
        }
        // Seen once in every guild (16 in the emulator's traffic), so that every worker caches it.
        for guild in 0..<16 { _ = try await postAdmin(url + "/emulator/message", #"{"user": "\#(user)", "guild": \#(guild)}"#) }
        let filled = MonotonicInstant.now() + .seconds(30)
        while try await served().contains(where: { $0.isEmpty || $0.values.contains(where: { $0 == nil }) }) {
            guard MonotonicInstant.now() < filled else { throw BenchError("the workers never cached user \(user): \(try await served())") }
            try await Task.sleep(for: .milliseconds(10))
        }
        var local: [Double] = []
        var across: [Double] = []
        for round in 0..<count {
            guard let name = try await postAdmin(url + "/emulator/rename", #"{"user": "\#(user)"}"#)["username"]?.stringValue else {
                throw BenchError("the emulator did not rename \(user)")
            }
            let seen = MonotonicInstant.now()
            _ = try await postAdmin(url + "/emulator/message", #"{"user": "\#(user)", "guild": \#(round % 16)}"#)
            var onOne: Double?
            while true {
                let hosts = try await served()
                let elapsed = (MonotonicInstant.now() - seen).seconds * 1000
                let serving = hosts.map { $0.values.allSatisfy { $0 == name } }
                if onOne == nil, serving.contains(true) { onOne = elapsed }
                if serving.allSatisfy({ $0 }) {
                    across.append(elapsed)
                    break
                }
                guard elapsed < 10_000 else { throw BenchError("rename \(round): not served everywhere within 10 s: \(hosts)") }
                try await Task.sleep(for: .milliseconds(1))
            }
            local.append(onOne ?? across.last!)
        }
        return (local.sorted(), across.sorted())
    }

    /// The measurements, in `dir`, with the hosts' store in `database` (dropped at the end).
    func measure(in dir: String, database: String) async throws {
        guard let slash = postgres.lastIndex(of: "/"), postgres.hasPrefix("postgres") else {
            throw ValidationError("--postgres: a postgres://USER@HOST:PORT/DATABASE URL")
        }
        let store = postgres[..<slash] + "/" + database
        var supervisors: [Int: ChildProcess] = [:]
        let emulatorConfig = #"{"emulator": {"adminToken": "env:BOTCLUSTER_BENCH_ADMIN_TOKEN", "identifyWindow": "500ms", "restRate": 2000, "sessionStartLimit": {"maxConcurrency": 2}, "traffic": {"rate": 60, "groupRate": 2, "c2cRate": 2}}, "log": {"level": "warning"}}"#
        try emulatorConfig.write(toFile: dir + "/emulator.json", atomically: true, encoding: .utf8)
        let emulator = try ChildProcess(botcluster, ["emulator", "--config", "emulator.json", "--port", "0"], directory: dir, environment: ["BOTCLUSTER_BENCH_ADMIN_TOKEN": benchAdminToken])
        defer {
            for supervisor in supervisors.values { supervisor.kill() }
            emulator.terminate()
        }
        guard let line = await within(.seconds(30), { await emulator.waitForLine(containing: "emulator listening on ") }) else {
            throw BenchError("the emulator did not start within 30 s")
        }
        let url = String(line.split(separator: " ").last!)
        guard let ttl = DurationFormat.parse(leaseTTL), let renew = DurationFormat.parse(renewInterval) else {
            throw ValidationError("--lease-ttl and --renew-interval take durations such as 3s and 300ms")
        }

        func home(_ host: Int) -> String { dir + "/host\(host)" }
        func launch(_ host: Int) throws {
            try FileManager.default.createDirectory(atPath: home(host), withIntermediateDirectories: true)
            let config = #"""
                {"gateway": {"embedded": false, "url": "\#(url)", "tokenURL": "\#(url)/app/getAppAccessToken"},
                 "app": {"id": "102000001", "secret": "env:BENCH_APP_SECRET"}, "shards": {"count": \#(shards)},
                 "identify": {"window": "500ms", "margin": "20ms"}, "rateBudget": {"global": {"rate": 2000, "burst": 200}},
                 "store": {"postgres": "\#(store)", "leaseTTL": "\#(leaseTTL)", "renewInterval": "\#(renewInterval)", "fenceMargin": "\#(fenceMargin)", "timeout": "\#(storeTimeout)"},
                 "http": {"listen": "off"}, "log": {"level": "warning"}}
                """#
            try config.write(toFile: home(host) + "/cluster.json", atomically: true, encoding: .utf8)
            supervisors[host] = try ChildProcess(
                botcluster, ["launch", "--host-id", String(host)], directory: home(host),
                environment: ["BENCH_APP_SECRET": "emulator-development-secret"], errorLog: home(host) + "/supervisor.log"
            )
        }
        /// The ready shards of each live host.
        func ready() async -> [Int: Set<Int>] {
            var seen: [Int: Set<Int>] = [:]
            for host in supervisors.keys.sorted() where supervisors[host]!.process.isRunning {
                let workers = (try? await controlStatus(home(host) + "/run/botcluster.sock").workers) ?? []
                seen[host] = Set(workers.filter { $0.state == "ready" }.map(\.ordinal))
            }
            return seen
        }
        func waitUntil(_ what: String, within limit: Duration = .seconds(120), _ done: ([Int: Set<Int>]) -> Bool) async throws {
            let deadline = MonotonicInstant.now() + limit
            while MonotonicInstant.now() < deadline {
                if done(await ready()) { return }
                if supervisors.values.allSatisfy({ !$0.process.isRunning }) { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            let logs = supervisors.keys.sorted().map { host in
                "host \(host): " + (((try? String(contentsOfFile: home(host) + "/supervisor.log", encoding: .utf8)) ?? "").split(separator: "\n").suffix(3).joined(separator: " | "))
            }
            throw BenchError("\(what): not within \(limit); seen \(await ready()); \(logs.joined(separator: "; "))")
        }
        let everyShard = Set(0..<shards)
        let allReady = { (seen: [Int: Set<Int>]) in seen.values.reduce(Set<Int>()) { $0.union($1) } == everyShard }

        // Startup: every host at once, until every shard is ready somewhere. The limits: one Identify per bucket
        // per window (max_concurrency 2, 500 ms), plus the first round in which hosts that start together only look.
        let started = MonotonicInstant.now()
        for host in 0..<hosts { try launch(host) }
        try await waitUntil("every shard ready", within: .seconds(60), allReady)
        let startup = MonotonicInstant.now() - started
        let least = Double((shards + 1) / 2 - 1) * 0.5 + renew.seconds
        print("hosts.startup \(String(format: "%.2f", startup.seconds)) s (\(shards) shards on \(hosts) hosts; identify limits and the first round: \(String(format: "%.2f", least)) s)")
        print("hosts.startup.limit \(String(format: "%.2f", least))")

        // Store transactions per event: the database's commits over 10 s of steady traffic, per reply.
        func commits() async throws -> Double {
            let out = try await runCommand(["psql", "-qtA", postgres, "-c", "SELECT xact_commit FROM pg_stat_database WHERE datname = '\(database)'"])
            return Double(out.first ?? "") ?? 0
        }
        // The user caches' publications among them (a row each; a transaction holds one or a few).
        func publications() async throws -> Double {
            let out = try await runCommand(["psql", "-qtA", String(store), "-c", "SELECT count(*) FROM botcluster_user_publications"])
            return Double(out.first ?? "") ?? 0
        }
        try await Task.sleep(for: .seconds(2))
        let (c0, r0, p0) = (try await commits(), (try await get(url + "/emulator/stats"))["messagesReplied"]?.intValue ?? 0, try await publications())
        try await Task.sleep(for: .seconds(10))
        let (c1, r1, p1) = (try await commits(), (try await get(url + "/emulator/stats"))["messagesReplied"]?.intValue ?? 0, try await publications())
        let rounds = Double(hosts) * 10 / renew.seconds
        print("hosts.store.transactions_per_event \(String(format: "%.2f", (c1 - c0) / Double(max(1, r1 - r0)))) (\(Int(c1 - c0)) commits, \(r1 - r0) replies in 10 s; lease rounds alone: \(Int(rounds)); user cache publications: \(Int(p1 - p0)))")

        // A rename seen on one shard: until every worker of its host serves it (the workers' batch and the
        // supervisor's broadcast), and until every worker of every host does (published through the store, applied
        // to each host's file, broadcast there): the second beside the first, in the same run.
        let (local, across) = try await renames(url: url, sockets: (0..<hosts).map { home($0) + "/run/botcluster.sock" })
        print("hosts.users.local.p50 \(String(format: "%.1f", local[local.count / 2])) ms (\(local.count) renames; max \(String(format: "%.1f", local.last!)) ms)")
        print("hosts.users.across.p50 \(String(format: "%.1f", across[across.count / 2])) ms (max \(String(format: "%.1f", across.last!)) ms)")

        // Takeover: kill -9 a supervisor; until every shard it ran is ready on another host.
        var samples: [Double] = []
        for round in 0..<kills {
            let placed = await ready()
            let victim = round % hosts
            let orphaned = placed[victim] ?? []
            guard !orphaned.isEmpty else { throw BenchError("host \(victim) runs no shard") }
            let killedAt = MonotonicInstant.now()
            supervisors[victim]!.kill()
            guard await supervisors[victim]!.exitStatus(within: .seconds(10)) != nil else { throw BenchError("host \(victim) outlived SIGKILL") }
            try await waitUntil("host \(victim)'s shards taken over") { seen in
                let elsewhere = seen.filter { $0.key != victim }.values.reduce(Set<Int>()) { $0.union($1) }
                return orphaned.isSubset(of: elsewhere)
            }
            samples.append((MonotonicInstant.now() - killedAt).seconds * 1000)
            // Back: the host rejoins and gets its range back by handover; then the next kill.
            try launch(victim)
            try await waitUntil("host \(victim) back") { seen in allReady(seen) && (seen[victim] ?? []) == orphaned }
        }
        samples.sort()
        let bound = (ttl + renew).seconds * 1000
        print("hosts.takeover.p50 \(String(format: "%.0f", samples[samples.count / 2])) ms (\(kills) kills; bound leaseTTL + renewInterval \(String(format: "%.0f", bound)) ms)")
        print("hosts.takeover.max \(String(format: "%.0f", samples.last!)) ms")
        print("hosts.takeover.bound \(String(format: "%.0f", bound))")
        // A rescale across the hosts under the same traffic, asked of one host: until it answers (every host's new
        // shards ready, the store's switch, the old layout drained there). The limits: the new layout's identifies
        // (one per bucket per window), a round to see the target and one to report the last ready shard.
        let target = shards + shards / 3
        let before = try await get(url + "/emulator/stats")
        let asked = MonotonicInstant.now()
        let (scaled, answer) = try await IPCClient.control(path: home(0) + "/run/botcluster.sock", .scale(.count(target), planOnly: false), timeout: .seconds(120))
        guard scaled else { throw BenchError("the rescale across hosts failed: \(answer)") }
        let took = MonotonicInstant.now() - asked
        let rescaleLimit = Double((target + 1) / 2 - 1) * 0.5 + 2 * renew.seconds
        print("hosts.rescale.took \(String(format: "%.2f", took.seconds)) s (\(shards) -> \(target) shards on \(hosts) hosts; identify limits and two rounds: \(String(format: "%.2f", rescaleLimit)) s)")
        print("hosts.rescale.limit \(String(format: "%.2f", rescaleLimit))")
        try await Task.sleep(for: .seconds(2))
        let stats = try await get(url + "/emulator/stats")
        let twice = (stats["messagesRepliedMoreThanOnce"]?.intValue ?? -1) - (before["messagesRepliedMoreThanOnce"]?.intValue ?? 0)
        print("hosts.rescale.replied_twice \(twice) (since the rescale began)")
        print("hosts.identifies \(stats["identifies"]?.intValue ?? -1) (shards \(shards), then \(target)), overlaps \(stats["sessionOverlaps"]?.intValue ?? -1), violations \(stats["identifyViolations"]?.intValue ?? -1)")

        for (_, supervisor) in supervisors { _ = await supervisor.stop(grace: .seconds(30)) }
        supervisors = [:]
        _ = try? await runCommand(["psql", "-q", postgres, "-c", "DROP DATABASE \(database) WITH (FORCE)"])
    }
}
