import BenchSupport
import ClusterCore
import ClusterProtocol
import Foundation
import Synchronization

/// scripts/chaos.sh --hosts N: several supervisors sharing one PostgreSQL store, each in a network namespace of its
/// own (run as an unprivileged user), against one emulator that counts; at seeded random moments a worker is killed
/// or stopped, the platform drops or ends a session, a supervisor is killed with SIGKILL (and started again later),
/// a host's link to the database is cut (and mended later), or the database restarts; and one user is renamed. At the
/// end the emulator's ground truth decides, as in the one-host run, no two sessions of one shard may ever have been
/// live at once, and every worker of every host serves the user's last name.
struct HostsChaos {
    let hosts: Int
    let shards: Int
    let duration: Int
    let seed: Int
    let botcluster: String
    /// The server, on loopback, as its owner may reach it (`postgres://USER@127.0.0.1:PORT/DB`).
    let postgres: String
    /// The server's directory (scripts/postgres.sh's), for restarts; without it the database is not restarted.
    let postgresDirectory: String?
    let user: RunAs

    enum Action: String, CaseIterable {
        case kill9, sigstop, reconnect, invalidSession, drop, stopAcks, close4009, killHost, cutStore, restartStore, rescale

        /// Faults that take a whole host (or the store) away: one at a time, so the cluster always has hosts left.
        var isHostFault: Bool { [.killHost, .cutStore, .restartStore].contains(self) }
    }

    /// A host that is away (killed or cut off), and when it comes back.
    struct Away {
        var action: Action
        var until: MonotonicInstant
    }

    /// The state of a run: the hosts, what is away, and what was done.
    final class Run {
        var supervisors: [Int: ChildProcess] = [:]
        var away: [Int: Away] = [:]
        var seenPIDs = Set<Int32>()
        var workerKills = 0
        var killedWithSupervisor = 0
        var counts: [Action: Int] = [:]
        var supervisorExits: [String] = []
        /// The watched user's name after its last rename.
        var lastName: String?
        /// The rescale under way (`botcluster scale` on one host, as the hosts' user): it runs beside the faults.
        var rescale: AsyncSignal<Bool>?
        /// Rescales that did what was asked, and that were given up (a fault in the way is a fair reason).
        var rescalesDone = 0
        /// The shard count of the last rescale done (nil: the launch's), and the target of the one under way.
        var serving: Int?
        var rescaleTarget = 0
        var rescalesGivenUp = 0
    }

    /// A user renamed at every fault: at the end every worker of every host must serve its last name (each host
    /// keeps its own cache; the renames cross through the store while hosts are killed, cut off and the database
    /// restarts).
    static let watchedUser = "144115188075855042"

    func log(_ line: String) { chaosLog(line) }

    func run() async throws -> Int32 {
        let dir = NSTemporaryDirectory() + "botcluster-chaos-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let network = HostNetwork(hosts: hosts)
        await network.remove()
        let database = "chaos_\(getpid())"
        // Interrupted (Ctrl-C, a timeout's SIGTERM), the run still removes what it made outside its namespaces: the
        // emulator, the database, the directory.
        let emulatorPID = Mutex<Int32?>(nil)
        let interrupts = [SIGINT, SIGTERM].map { signo in
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { [postgres] in
                say("chaos: interrupted: removing the network namespaces, the emulator and the database")
                network.removeNow()
                if let pid = emulatorPID.withLock({ $0 }) { kill(pid, SIGKILL) }
                _ = HostNetwork.runNow(["psql", "-q", postgres, "-c", "DROP DATABASE IF EXISTS \(database) WITH (FORCE)"])
                try? FileManager.default.removeItem(atPath: dir)
                exit(1)
            }
            source.resume()
            return source
        }
        defer { interrupts.forEach { $0.cancel() } }
        var emulator: ChildProcess?
        let state = Run()
        do {
            try await network.create()
            _ = try await runCommand(["psql", "-q", "-v", "ON_ERROR_STOP=1", postgres, "-c", "CREATE DATABASE \(database)"])
            let (child, url) = try await startEmulator(dir, network)
            await EmulatorClock.sync(url)
            emulator = child
            emulatorPID.withLock { $0 = child.process.processIdentifier }
            let result = try await faults(dir, network, url, database, state)
            await stopEverything(state, emulator, network)
            _ = try? await runCommand(["psql", "-q", postgres, "-c", "DROP DATABASE \(database) WITH (FORCE)"])
            return result
        } catch {
            for host in 0..<hosts { printLogTail(dir, host) }
            await stopEverything(state, emulator, network)
            _ = try? await runCommand(["psql", "-q", postgres, "-c", "DROP DATABASE IF EXISTS \(database) WITH (FORCE)"])
            throw error
        }
    }

    func startEmulator(_ dir: String, _ network: HostNetwork) async throws -> (ChildProcess, String) {
        let emulatorConfig = #"{"emulator": {"host": "\#(network.platformAddress)", "adminToken": "env:BOTCLUSTER_BENCH_ADMIN_TOKEN", "identifyWindow": "200ms", "restRate": 200, "heartbeatInterval": "1s", "heartbeatTimeout": "10s", "unrepliedGrace": "3s", "sessionTTL": "1m", "sessionStartLimit": {"maxConcurrency": 2}, "traffic": {"rate": 20, "groupRate": 2, "c2cRate": 2, "renameShare": 0.1, "renameEvery": "5s"}}, "log": {"level": "warning"}}"#
        try emulatorConfig.write(toFile: dir + "/emulator.json", atomically: true, encoding: .utf8)
        let emulator = try ChildProcess(botcluster, ["emulator", "--config", "emulator.json", "--port", "0"], directory: dir, environment: ["BOTCLUSTER_BENCH_ADMIN_TOKEN": benchAdminToken], errorLog: dir + "/emulator.log")
        guard let line = await within(.seconds(30), { await emulator.waitForLine(containing: "emulator listening on ") }) else {
            _ = await emulator.stop()
            throw BenchError("the emulator did not start within 30 s (emulator.log)")
        }
        return (emulator, String(line.split(separator: " ").last!))
    }

    func hostDirectory(_ dir: String, _ host: Int) -> String { dir + "/host\(host)" }

    func faults(_ dir: String, _ network: HostNetwork, _ url: String, _ database: String, _ state: Run) async throws -> Int32 {
        // The hosts reach the server on the store bridge as the URL's user, with the password the server asks of
        // every connection not on loopback.
        guard let parsed = try? PostgresStoreConfig.parseURL(postgres).get() else { throw BenchError("--postgres: not a postgres://USER@HOST:PORT/DATABASE URL") }
        let store = "postgres://\(parsed.user)@\(network.storeAddress):\(parsed.port)/\(database)"
        let password = ProcessInfo.processInfo.environment["BOTCLUSTER_TEST_POSTGRES_PASSWORD"]
        for host in 0..<hosts {
            let home = hostDirectory(dir, host)
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            let clusterConfig = #"""
                {"gateway": {"embedded": false, "url": "\#(url)", "tokenURL": "\#(url)/app/getAppAccessToken"},
                 "app": {"id": "102000001", "secret": "env:CHAOS_APP_SECRET"},
                 "shards": {"count": \#(shards)},
                 "identify": {"window": "200ms", "margin": "20ms"},
                 "supervisor": {"heartbeat": {"interval": "100ms", "misses": 5}, "abortGrace": "200ms", "stopGrace": "5s"},
                 "restart": {"baseDelay": "100ms", "maxDelay": "2s", "resetAfter": "1s", "maxCrashes": 50, "crashWindow": "1m"},
                 "rateBudget": {"global": {"rate": 150, "burst": 20}},
                 "store": {"postgres": "\#(store)", \#(password == nil ? "" : #""password": "env:CHAOS_STORE_PASSWORD", "#)"leaseTTL": "4s", "renewInterval": "400ms", "fenceMargin": "800ms", "timeout": "1s"},
                 "http": {"listen": "off"},
                 "log": {"level": "warning"}}
                """#
            try clusterConfig.write(toFile: home + "/cluster.json", atomically: true, encoding: .utf8)
            try user.own(home)
            try user.own(home + "/cluster.json")
        }
        for host in 0..<hosts { try launch(dir, network, host, state) }
        try await waitUntilEveryShardIsReady(dir, state, within: .seconds(120))
        log("\(hosts) hosts (network namespaces \(network.namespace(0))...), \(shards) shards, store \(store); faults for \(duration) s, seed \(seed)")

        var rng = SplitMix64(seed: UInt64(seed))
        let end = MonotonicInstant.now() + .seconds(duration)
        while MonotonicInstant.now() < end {
            try await Task.sleep(for: .milliseconds(500 + Int64(rng.next() % 2500)))
            try await bringBack(dir, network, state, all: false)
            var workers: [(host: Int, worker: ClusterStatus.Worker)] = []
            for host in 0..<hosts where state.away[host] == nil {
                for worker in (await status(dir, host))?.workers ?? [] {
                    if let pid = worker.pid { state.seenPIDs.insert(pid) }
                    workers.append((host, worker))
                }
            }
            var action = Action.allCases[Int(rng.next() % UInt64(Action.allCases.count))]
            let possible: [Action] = postgresDirectory == nil ? [.killHost, .cutStore] : [.killHost, .cutStore, .restartStore]
            if action.isHostFault && (!state.away.isEmpty || !possible.contains(action)) { action = .kill9 }
            // One rescale at least, early enough to finish under the faults that follow it.
            if state.counts[.rescale] == nil, state.rescale == nil, end - MonotonicInstant.now() < .seconds(duration * 3 / 4) { action = .rescale }
            if action == .rescale, let running = state.rescale {
                if running.current != nil { await finishRescale(dir, state) } else { action = .kill9 }
            }
            // A short run still has each host fault once: one not yet done comes while there is time to bring the
            // host back before the end.
            let missing = possible.filter { state.counts[$0] == nil }
            if state.away.isEmpty, let first = missing.first, end - MonotonicInstant.now() < .seconds(12 * missing.count) { action = first }
            state.counts[action, default: 0] += 1
            // The watched user is renamed and seen in one guild's message (its shard on some host).
            if let name = try await postAdmin(url + "/emulator/rename", #"{"user": "\#(Self.watchedUser)"}"#)["username"]?.stringValue {
                state.lastName = name
                _ = try await postAdmin(url + "/emulator/message", #"{"user": "\#(Self.watchedUser)", "guild": \#(rng.next() % 16)}"#)
            }
            let ready = workers.filter { $0.worker.state == "ready" }
            let target = ready.isEmpty ? nil : ready[Int(rng.next() % UInt64(ready.count))]
            let shard = target?.worker.ordinal ?? 0
            let total = target?.worker.shard.last ?? shards
            switch action {
            case .kill9, .sigstop:
                guard let pid = target?.worker.pid else { continue }
                kill(pid, action == .kill9 ? SIGKILL : SIGSTOP)
                state.workerKills += 1
                log("\(action.rawValue) worker of shard \(shard) on host \(target!.host) (pid \(pid))")
            case .reconnect, .invalidSession, .drop, .stopAcks, .close4009:
                log(try await gatewayFault(action.rawValue, url: url, shard: shard, total: total))
            case .killHost:
                let host = Int(rng.next() % UInt64(hosts))
                let running = workers.filter { $0.host == host && $0.worker.pid != nil }.count
                state.supervisors[host]?.kill()
                if let supervisor = state.supervisors[host] {
                    guard await supervisor.exitStatus(within: .seconds(10)) != nil else { throw BenchError("host \(host) outlived SIGKILL") }
                }
                state.killedWithSupervisor += running
                state.away[host] = Away(action: action, until: MonotonicInstant.now() + .milliseconds(2000 + Int64(rng.next() % 4000)))
                log("kill -9 the supervisor of host \(host) (\(running) workers with it)")
            case .cutStore:
                let host = Int(rng.next() % UInt64(hosts))
                try await network.setStoreLink(host, up: false)
                state.away[host] = Away(action: action, until: MonotonicInstant.now() + .milliseconds(2000 + Int64(rng.next() % 6000)))
                log("cut host \(host) off from the store")
            case .restartStore:
                let started = MonotonicInstant.now()
                try await restartStore()
                log("restarted PostgreSQL (\(DurationFormat.human(MonotonicInstant.now() - started)))")
            case .rescale:
                // Asked of one host that is here and runs the cluster's layout (one just started again may not yet):
                // between the launch's count and two more, back and forth.
                let now = state.serving ?? shards
                var host = 0
                for candidate in 0..<hosts where state.away[candidate] == nil {
                    host = candidate
                    if await servingCount(dir, candidate) == now { break }
                }
                let to = now == shards ? shards + 2 : shards
                log("scale \(now) -> \(to) shards, asked of host \(host)")
                let argv = user.command([botcluster, "scale", "--shards", String(to)])
                let home = hostDirectory(dir, host)
                let answered = AsyncSignal<Bool>()
                state.rescale = answered
                state.rescaleTarget = to
                Task {
                    do {
                        let lines = try await runCommand(argv, directory: home, timeout: .seconds(180))
                        say("chaos: rescale: \(lines.last ?? "")")
                        answered.set(true)
                    } catch {
                        say("chaos: rescale given up: \(String(describing: error).suffix(300))")
                        answered.set(false)
                    }
                }
            }
        }
        // Every host back first: a rescale under way may need the shards placed on a host that is away.
        try await bringBack(dir, network, state, all: true)
        if state.rescale != nil { await finishRescale(dir, state) }

        // Everything back, every shard of the layout the store serves running again, then the traffic drains.
        try await bringBack(dir, network, state, all: true)
        // A host started again at the launch's count takes up the cluster's at its first round: one layout, on
        // every host, before anything is counted.
        let counts = await waitForOneLayout(dir, within: .seconds(120))
        let serving = Set(counts.values)
        try await waitUntilEveryShardIsReady(dir, state, within: .seconds(120))
        let truth = try await GroundTruth.drain(url)
        let stale = try await staleNames(dir, url, state)
        for host in 0..<hosts {
            for worker in (await status(dir, host))?.workers ?? [] { if let pid = worker.pid { state.seenPIDs.insert(pid) } }
        }
        // Every host leaves with SIGTERM and must exit 0.
        for (host, supervisor) in state.supervisors.sorted(by: { $0.key < $1.key }) {
            supervisor.signal(SIGTERM)
            let status = await supervisor.exitStatus(within: .seconds(30))
            if status != 0 { state.supervisorExits.append("host \(host) exited with \(status.map(String.init) ?? "nothing within 30 s")") }
        }
        let deadline = MonotonicInstant.now() + .seconds(5)
        var left = state.seenPIDs.filter(processAlive)
        while !left.isEmpty && MonotonicInstant.now() < deadline {
            try await Task.sleep(for: .milliseconds(50))
            left = state.seenPIDs.filter(processAlive)
        }
        var inNamespaces: [Int32] = []
        for host in 0..<hosts { inNamespaces += await network.processes(in: host) }

        var fenced = 0
        var taken = 0
        var leaked: [Int] = []
        for host in 0..<hosts {
            let text = (try? String(contentsOfFile: hostDirectory(dir, host) + "/supervisor.log", encoding: .utf8)) ?? ""
            if let password, !password.isEmpty, text.contains(password) { leaked.append(host) }
            for line in text.split(separator: "\n") {
                if line.contains("the lease could not be renewed in time") { fenced += 1 }
                if line.contains("the lease was taken by another host") { taken += 1 }
            }
        }
        let hardKills = state.workerKills + state.killedWithSupervisor + fenced
        let n = truth.n
        let rows: [(String, Int)] = truth.messageRows + [
            ("two live sessions of one shard", n("sessionOverlaps")),
            ("workers killed (-9, SIGSTOP)", state.workerKills), ("workers killed with their supervisor", state.killedWithSupervisor),
            ("workers fenced (lease not renewed in time)", fenced), ("leases found taken by another host", taken),
            ("processes left behind", left.count + inNamespaces.count),
            ("workers serving a renamed user's old name", stale.count),
            ("rescales across the hosts done", state.rescalesDone), ("rescales given up (a fault in the way)", state.rescalesGivenUp),
            ("hosts serving another layout than the others", serving.count > 1 ? hosts : 0),
        ]
        let done = state.counts.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", ")
        GroundTruth.print("chaos ground truth (\(hosts) hosts, seed \(seed), \(duration) s of faults: \(done))", rows)
        var failures = truth.failures(allowance: hardKills, killed: "workers killed, killed with their supervisor or fenced")
        if n("sessionOverlaps") > 0 { failures.append("\(n("sessionOverlaps")) times two sessions of one shard were live at once") }
        if serving.count != 1 || counts.count != hosts {
            failures.append("the hosts do not serve one layout within 120 s: shard counts by host that answered \(counts.sorted { $0.key < $1.key })")
        }
        if state.rescalesDone == 0 { failures.append("no rescale across the hosts was done (\(state.rescalesGivenUp) given up; their reasons are above)") }
        if !left.isEmpty || !inNamespaces.isEmpty { failures.append("processes left behind: \((Set(left).union(inNamespaces)).sorted())") }
        failures += state.supervisorExits
        if !leaked.isEmpty { failures.append("the store's password is in the log of host \(leaked)") }
        if !stale.isEmpty { failures.append("not every worker serves \(state.lastName ?? "?") for user \(Self.watchedUser) 30 s after it was last seen: \(stale.joined(separator: ", "))") }
        // Where the messages nobody answered (or nobody was delivered) went, on the clock of the lines above.
        for line in await GroundTruth.unrepliedLines(url, limit: failures.isEmpty ? 5 : 20) { say("  \(line)") }
        for failure in failures { say("FAIL: \(failure)") }
        if !failures.isEmpty { for host in 0..<hosts { printLogTail(dir, host) } }
        if failures.isEmpty { say("PASS") }
        return failures.isEmpty ? 0 : 1
    }

    /// The workers ("host/ordinal: name") that do not serve the watched user's last name. The user is seen once more
    /// (every host is back: one of them observes the name anew, whatever a killed worker had not written); then
    /// every worker of every host has 30 s to serve it.
    func staleNames(_ dir: String, _ url: String, _ state: Run) async throws -> [String] {
        guard let name = state.lastName else { return [] }
        _ = try await postAdmin(url + "/emulator/message", #"{"user": "\#(Self.watchedUser)", "guild": 0}"#)
        let deadline = MonotonicInstant.now() + .seconds(30)
        while true {
            var stale: [String] = []
            for host in 0..<hosts {
                let lines = (try? await runCommand(user.command([botcluster, "user", Self.watchedUser, "--json"]), directory: hostDirectory(dir, host), timeout: .seconds(10))) ?? []
                guard case .object(let workers) = (try? JSONValue.parse(lines.joined(separator: "\n")))?["workers"] ?? .null, !workers.isEmpty else {
                    stale.append("host \(host): no answer")
                    continue
                }
                for (ordinal, served) in workers where served.stringValue != name {
                    stale.append("\(host)/\(ordinal): \(served.stringValue ?? "nothing")")
                }
            }
            if stale.isEmpty || MonotonicInstant.now() >= deadline { return stale }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Starts host `host`'s supervisor in its namespace, as the run's user; its log goes to supervisor.log.
    func launch(_ dir: String, _ network: HostNetwork, _ host: Int, _ state: Run) throws {
        let home = hostDirectory(dir, host)
        let argv = ["ip", "netns", "exec", network.namespace(host)] + user.command([botcluster, "launch", "--host-id", String(host)])
        let supervisor = try ChildProcess(
            "/usr/bin/env", argv, directory: home,
            environment: [
                "CHAOS_APP_SECRET": "emulator-development-secret", "HOME": home,
                "CHAOS_STORE_PASSWORD": ProcessInfo.processInfo.environment["BOTCLUSTER_TEST_POSTGRES_PASSWORD"] ?? "",
            ],
            errorLog: home + "/supervisor.log"
        )
        state.supervisors[host] = supervisor
        state.seenPIDs.insert(supervisor.process.processIdentifier)
    }

    /// Brings back the hosts whose time away is over (or, with `all`, every one): a killed supervisor is started
    /// again, a cut link mended.
    func bringBack(_ dir: String, _ network: HostNetwork, _ state: Run, all: Bool) async throws {
        let now = MonotonicInstant.now()
        for (host, away) in state.away.sorted(by: { $0.key < $1.key }) where all || now >= away.until {
            if away.action == .killHost {
                try launch(dir, network, host, state)
                log("host \(host) started again")
            } else {
                try await network.setStoreLink(host, up: true)
                log("host \(host)'s store link mended")
            }
            state.away[host] = nil
        }
    }

    /// Waits until every shard has a ready worker on some host.
    func waitUntilEveryShardIsReady(_ dir: String, _ state: Run, within timeout: Duration) async throws {
        let deadline = MonotonicInstant.now() + timeout
        var ready = Set<Int>()
        while MonotonicInstant.now() < deadline {
            for (host, supervisor) in state.supervisors where !supervisor.process.isRunning && state.away[host] == nil {
                throw BenchError("host \(host)'s supervisor exited with \(supervisor.process.terminationStatus)")
            }
            ready = []
            var total = shards
            for host in 0..<hosts {
                let workers = (await status(dir, host))?.workers.filter { $0.layout == nil } ?? []
                if let count = workers.first?.shard.last { total = count }
                for worker in workers where worker.state == "ready" { ready.insert(worker.ordinal) }
            }
            if ready == Set(0..<total) { return }
            try await Task.sleep(for: .milliseconds(300))
        }
        throw BenchError("not every shard ready within \(timeout): ready \(ready.sorted())")
    }

    /// Waits until each of `hosts` (all by default) answers, runs one layout only (no rescale's other layout left),
    /// and all run the same count; returns the counts of the hosts that did so at the last look (a host that did
    /// not answer or still ran two layouts is left out).
    func waitForOneLayout(_ dir: String, hosts chosen: [Int]? = nil, within timeout: Duration) async -> [Int: Int] {
        let chosen = chosen ?? Array(0..<hosts)
        let deadline = MonotonicInstant.now() + timeout
        while true {
            var counts: [Int: Int] = [:]
            for host in chosen {
                guard let workers = (await status(dir, host))?.workers, !workers.contains(where: { $0.layout != nil }) else { continue }
                counts[host] = workers.first?.shard.last
            }
            if (counts.count == chosen.count && Set(counts.values).count == 1) || MonotonicInstant.now() >= deadline { return counts }
            try? await Task.sleep(for: .milliseconds(300))
        }
    }

    /// The shard count of the layout `host` serves (its active layout), nil when it does not answer.
    func servingCount(_ dir: String, _ host: Int) async -> Int? {
        (await status(dir, host))?.workers.first { $0.layout == nil }?.shard.last
    }

    /// Waits for the rescale under way to answer (it has a deadline of its own), and counts how it ended. A scale
    /// that did not answer (its host was killed or cut off under it) may still have been carried through by the
    /// other hosts (the store carries it): the hosts here say which layout the cluster ended with.
    func finishRescale(_ dir: String, _ state: Run) async {
        guard let rescale = state.rescale else { return }
        state.rescale = nil
        if (try? await rescale.wait()) == true {
            state.rescalesDone += 1
            state.serving = state.rescaleTarget
            return
        }
        let present = (0..<hosts).filter { state.away[$0] == nil }
        let counts = await waitForOneLayout(dir, hosts: present, within: .seconds(30))
        let ended = counts.count == present.count && Set(counts.values).count == 1 ? counts.values.first : nil
        if let ended { state.serving = ended }
        if ended == state.rescaleTarget {
            say("chaos: rescale done by the other hosts, though the host asked did not answer")
            state.rescalesDone += 1
        } else {
            state.rescalesGivenUp += 1
        }
    }

    /// `status --json` of a host, asked as the host's user (its control socket admits no other uid); nil when it
    /// does not answer.
    func status(_ dir: String, _ host: Int) async -> ClusterStatus? {
        guard let lines = try? await runCommand(user.command([botcluster, "status", "--json"]), directory: hostDirectory(dir, host), timeout: .seconds(10)) else {
            return nil
        }
        return try? JSONDecoder().decode(ClusterStatus.self, from: Data(lines.joined(separator: "\n").utf8))
    }

    /// Restarts the database (fast shutdown: every connection is cut) as the user who owns it, and waits until it
    /// accepts connections again. The server writes to its log file, not to pg_ctl's output.
    func restartStore() async throws {
        guard let directory = postgresDirectory else { return }
        var info = stat()
        guard stat(directory + "/data", &info) == 0, let owner = getpwuid(info.st_uid) else { throw BenchError("cannot stat \(directory)/data") }
        let runAs = try RunAs(String(cString: owner.pointee.pw_name))
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let bin = versions.sorted(by: { (Int($0) ?? 0) < (Int($1) ?? 0) }).last.map({ "/usr/lib/postgresql/\($0)/bin" }) else {
            throw BenchError("no PostgreSQL server under /usr/lib/postgresql")
        }
        _ = try await runCommand(
            runAs.command([bin + "/pg_ctl", "-D", directory + "/data", "-l", directory + "/server.log", "-m", "fast", "-w", "-t", "60", "restart"]),
            timeout: .seconds(90)
        )
    }

    /// Kills what still runs, removes the namespaces and stops the emulator.
    func stopEverything(_ state: Run, _ emulator: ChildProcess?, _ network: HostNetwork) async {
        for supervisor in state.supervisors.values where supervisor.process.isRunning {
            supervisor.kill()
            _ = await supervisor.exitStatus(within: .seconds(10))
        }
        for host in 0..<hosts { for pid in await network.processes(in: host) { kill(pid, SIGKILL) } }
        await network.remove()
        _ = await emulator?.stop()
    }

    func printLogTail(_ dir: String, _ host: Int) {
        let text = (try? String(contentsOfFile: hostDirectory(dir, host) + "/supervisor.log", encoding: .utf8)) ?? ""
        say("--- host \(host), the end of its log:")
        for line in text.split(separator: "\n").suffix(15) { say("  \(line.prefix(300))") }
    }
}
