import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import GRDB
import Testing

/// The cluster's view of one user over the control socket: worker ordinal -> the name its cache serves.
func servedNames(_ cluster: TestCluster, user: String) async throws -> [String: String?] {
    try await servedNames(socket: cluster.socket, user: user)
}

/// What each worker of the supervisor at `socket` serves for `user` (`botcluster user`), by ordinal.
func servedNames(socket: String, user: String) async throws -> [String: String?] {
    let client = try await IPCClient.connect(path: socket, hello: Hello(role: .control, pid: getpid()))
    defer { client.close() }
    let reply = try await client.request(timeout: .seconds(10)) { .controlRequest(id: $0, command: .user(id: user)) }
    guard case .controlReply(_, true, let body) = reply, case .object(let workers) = try JSONValue.parse(body)["workers"] ?? .null else {
        throw IPCRequestError("user query failed: \(reply)")
    }
    var names: [String: String?] = [:]
    for (ordinal, name) in workers { names[ordinal] = name.stringValue }
    return names
}

extension RealProcesses {
    @Suite("shared state across workers (real processes)", .serialized, .timeLimit(.minutes(3)))
    struct SharedStateTests {
        @Test func demandAtFourTimesTheBudgetGetsNo429AndFairShares() async throws {
            try await withTemporaryDirectory { dir in
                // 200 messages/s against a REST limit of 50/s: every worker wants far more than its share.
                let emulator = try await EmulatorProcess.start(
                    config: #"{"emulator": {"identifyWindow": "100ms", "restRate": 50, "heartbeatInterval": "10s", "heartbeatTimeout": "30s", "guildsPerShard": 4, "traffic": {"rate": 200, "groupRate": 0, "c2cRate": 0}}}"#,
                    directory: dir
                )
                try TestCluster.clusterConfig(emulator, shards: 4, rateBudget: #"{"global": {"rate": 50, "burst": 10}, "lease": {"size": 4, "ttl": "250ms"}}"#)
                    .write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let cluster = try await TestCluster.launch(in: dir, emulator: emulator, shards: 4)
                // Saturated for a second first, then measured over ten.
                try await emulator.waitFor("saturation") { $0["restRequests"] ?? 0 >= 50 }
                let before = try await emulator.stats()
                let tokensBefore = try await cluster.workers().map { $0["restTokens"]?.intValue ?? 0 }
                let start = before["clockMs"] ?? 0
                try await emulator.waitFor("ten seconds") { ($0["clockMs"] ?? 0) >= start + 10_000 }
                let after = try await emulator.stats()
                let tokensAfter = try await cluster.workers().map { $0["restTokens"]?.intValue ?? 0 }
                let seconds = ((after["clockMs"] ?? 0) - start) / 1000
                let accepted = ((after["restRequests"] ?? 0) - (after["rateLimited"] ?? 0)) - ((before["restRequests"] ?? 0) - (before["rateLimited"] ?? 0))
                #expect(after["rateLimited"] == 0, "the emulator answered 429")
                #expect(accepted / seconds >= 0.95 * 50, "used \(accepted / seconds) requests/s of 50")
                let shares = zip(tokensAfter, tokensBefore).map { Double($0 - $1) }
                let mean = shares.reduce(0, +) / Double(shares.count)
                #expect(shares.allSatisfy { abs($0 - mean) <= 0.2 * mean }, "shares \(shares)")
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                try await cluster.stop(workerPIDs: pids)
            }
        }

        @Test func aRenameSeenOnOneShardIsServedByEveryWorkerWithinASecond() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 4, extra: #", "cache": {"flushInterval": "50ms"}"#)
                _ = try await postAdmin(cluster.emulator.url + "/emulator/traffic", #"{"rate": 0, "groupRate": 0, "c2cRate": 0}"#)
                let user = "144115188075855042"
                // Guild g goes to shard (base + g) % 4: one message in each of four guilds reaches every shard.
                for guild in 0..<4 {
                    _ = try await postAdmin(cluster.emulator.url + "/emulator/message", #"{"user": "\#(user)", "guild": \#(guild)}"#)
                }
                let deadline = ContinuousClock.now + .seconds(10)
                var names = try await servedNames(cluster, user: user)
                while names.count < 4 || names.values.contains(where: { $0 == nil }) {
                    #expect(ContinuousClock.now < deadline, "caches never filled: \(names)")
                    try await Task.sleep(for: .milliseconds(10))
                    names = try await servedNames(cluster, user: user)
                }
                let renamed = try JSONValue.parse(try await postAdmin(cluster.emulator.url + "/emulator/rename", #"{"user": "\#(user)"}"#))
                let newName = try #require(renamed["username"]?.stringValue)
                // The new name is seen on one shard only.
                _ = try await postAdmin(cluster.emulator.url + "/emulator/message", #"{"user": "\#(user)", "guild": 1}"#)
                let seen = ContinuousClock.now
                while Set(try await servedNames(cluster, user: user).values.map { $0 ?? "" }) != [newName] {
                    if ContinuousClock.now - seen > .seconds(1) {
                        Issue.record("after 1 s the workers serve \(try await servedNames(cluster, user: user)), not \(newName)")
                        break
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                try await cluster.stop(workerPIDs: pids)
            }
        }

        @Test func aWorkerKilledMidBatchLeavesTheCacheConsistent() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2, extra: #", "cache": {"flushSize": 20, "flushInterval": "5ms"}"#)
                _ = try await postAdmin(cluster.emulator.url + "/emulator/burst", #"{"count": 2000}"#)
                let victim = try await cluster.pid(of: 0)
                kill(victim, SIGKILL)
                try await cluster.waitForStatus("worker 0 replaced") { $0[0]["pid"]?.intValue != Int(victim) && $0[0].workerState == "ready" }
                try await cluster.drainTraffic()
                let pool = try DatabaseQueue(path: dir + "/run/users.sqlite", configuration: { var c = Configuration(); c.readonly = true; return c }())
                let check = try await pool.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") }
                #expect(check == "ok")
                let count = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM users") } ?? 0
                #expect(count > 0)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                try await cluster.stop(workerPIDs: pids)
            }
        }

        @Test func twoProcessesHammeringOneFileSeeNoBusyError() async throws {
            try await withTemporaryDirectory { dir in
                let bench = siblingBinary("botcluster-bench")
                // The file is made first, as the supervisor makes it before any worker opens it (SQLite may refuse
                // the switch to WAL outright, without waiting, to two processes creating one file at once).
                let first = try BotclusterProcess(["cache-hammer", "--path", dir + "/users.sqlite", "--batches", "1"], directory: dir, executable: bench)
                #expect(await first.waitForExit() == 0)
                var runs: [BotclusterProcess] = []
                for _ in 0..<2 {
                    runs.append(try BotclusterProcess(["cache-hammer", "--path", dir + "/users.sqlite", "--batches", "150"], directory: dir, executable: bench))
                }
                for run in runs {
                    #expect(await run.waitForExit() == 0)
                    #expect(run.output.contains("cache.hammer.errors 0"), "\(run.output)")
                }
            }
        }

        @Test func aCorruptCacheFileIsMovedAsideAndTheClusterComesUp() async throws {
            try await withTemporaryDirectory { dir in
                try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
                try Data(repeating: 0x5A, count: 16384).write(to: URL(fileURLWithPath: dir + "/run/users.sqlite"))
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/run")
                #expect(files.contains { $0.hasPrefix("users.sqlite.corrupt-") })
                #expect(cluster.supervisor.output.contains { $0.contains("user cache is damaged: moved aside and made anew") })
                try await cluster.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 20 }
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                try await cluster.stop(workerPIDs: pids)
            }
        }
    }
}
