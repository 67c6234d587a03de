import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import GRDB
import TestSupport
import Testing

extension RealProcesses {
    /// What an operator's machine does that a fresh directory on a well-behaved loopback does not: TLS, a second
    /// launch in the same directory, a platform that stops answering, a database another process holds, a full disk.
    @Suite("where operators run it (real processes)", .serialized, .timeLimit(.minutes(4)))
    struct OperatorTests {
        /// Workers' pids from the cluster's status.
        func pids(_ cluster: TestCluster) async throws -> [Int32] {
            try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
        }

        @Test func aClusterOverHTTPSAndWSSAnswersEveryMessageAndAWrongRootIsRefused() async throws {
            try await withTemporaryDirectory { dir in
                let server = try TestCertificate.make(in: dir)
                let stranger = try TestCertificate.make(in: dir, name: "stranger")
                let tls = #""tls": {"certificate": "\#(server.certificate)", "key": "\#(server.key)"}"#
                let config = TestCluster.emulatorConfig.replacingOccurrences(of: #"{"emulator": {"#, with: #"{"emulator": {\#(tls), "#)
                let emulator = try await EmulatorProcess.start(config: config, directory: dir, trustRoots: server.certificate)
                #expect(emulator.url.hasPrefix("https://"))

                // A root that did not sign the gateway's certificate: launch says so and stops.
                try TestCluster.clusterConfig(emulator, shards: 2, extra: "").replacingOccurrences(
                    of: #""embedded": false"#, with: #""embedded": false, "trustRoots": "\#(stranger.certificate)""#
                ).write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let refused = try BotclusterProcess(["launch"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await refused.waitForExit() == 1)
                #expect(refused.output.contains { $0.contains("is not trusted") && $0.contains("gateway.trustRoots") }, "\(refused.output)")

                try TestCluster.clusterConfig(emulator, shards: 2, extra: "").replacingOccurrences(
                    of: #""embedded": false"#, with: #""embedded": false, "trustRoots": "\#(server.certificate)""#
                ).write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let cluster = try await TestCluster.launch(in: dir, emulator: emulator, shards: 2)
                try await emulator.waitFor("100 replies over TLS") { $0["messagesReplied"] ?? 0 >= 100 }
                try await cluster.drainTraffic()
                let stats = try await emulator.stats()
                #expect(stats["messagesUnreplied"] == 0)
                #expect(stats["messagesRepliedMoreThanOnce"] == 0)
                try await cluster.stop(workerPIDs: try await pids(cluster))
            }
        }

        /// launch, stop, launch again in the same directory, against a gateway restarted on the same address: the
        /// second cluster answers everything (the new gateway's ids are its own; the old sessions are only tried).
        @Test func aSecondLaunchInTheSameDirectoryAnswersEverything() async throws {
            try await withTemporaryDirectory { dir in
                let first = try await TestCluster.start(in: dir, shards: 2)
                try await first.emulator.waitFor("150 replies") { $0["messagesReplied"] ?? 0 >= 150 }
                let port = String(first.emulator.url.split(separator: ":").last!)
                first.supervisor.signal(SIGINT)
                #expect(await first.supervisor.waitForExit() == 0)
                first.emulator.process.signal(SIGTERM)
                _ = await first.emulator.process.waitForExit()

                let emulator = try await EmulatorProcess.start(config: TestCluster.emulatorConfig, directory: dir, port: port)
                #expect(emulator.url == first.emulator.url)
                let second = try await TestCluster.launch(in: dir, emulator: emulator, shards: 2)
                try await emulator.waitFor("150 replies from the second cluster") { $0["messagesReplied"] ?? 0 >= 150 }
                try await second.drainTraffic()
                let stats = try await emulator.stats()
                #expect(stats["messagesUnreplied"] == 0)
                #expect(stats["messagesRepliedMoreThanOnce"] == 0)
                #expect(stats["messagesDelivered"] == stats["messagesReplied"])
                try await second.stop(workerPIDs: try await pids(second))
            }
        }

        /// The gateway keeps its sockets and answers nothing (its process is stopped): SIGTERM still ends the
        /// cluster within stopGrace and a little, with no worker left.
        @Test func aSilentPlatformDoesNotHoldTheStop() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                try await cluster.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 50 }
                let workers = try await pids(cluster)
                cluster.emulator.process.signal(SIGSTOP)
                defer { cluster.emulator.process.signal(SIGCONT) }
                let start = ContinuousClock.now
                cluster.supervisor.signal(SIGTERM)
                #expect(await cluster.supervisor.waitForExit() == 0)
                let took = ContinuousClock.now - start
                // stopGrace is 5 s in the test configuration.
                #expect(took < .seconds(7), "launch took \(took) to exit after SIGTERM")
                try await waitUntilGone(workers, within: .seconds(1))
                cluster.emulator.process.signal(SIGCONT)
                cluster.emulator.process.signal(SIGTERM)
                _ = await cluster.emulator.process.waitForExit()
            }
        }

        /// Another process holds cluster.sqlite in a write transaction: the healthy file is not moved aside, the
        /// supervisor says which file is held, serves, and writes once it is let go.
        @Test func aDatabaseAnotherProcessHoldsIsNamedKeptAndWrittenOnceLetGo() async throws {
            try await withTemporaryDirectory { dir in
                let first = try await TestCluster.start(in: dir, shards: 2)
                try await first.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 20 }
                try await first.stop(workerPIDs: try await pids(first))
                let database = dir + "/run/cluster.sqlite"
                let holder = try DatabaseHolder(path: database)
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                try await cluster.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 50 }
                #expect(cluster.supervisor.output.contains { $0.contains("run/cluster.sqlite is locked by another process") }, "\(cluster.supervisor.output.suffix(5))")
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/run").allSatisfy { !$0.contains(".corrupt-") })
                holder.release()
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesUnreplied"] == 0)
                try await cluster.stop(workerPIDs: try await pids(cluster))
                let queue = try DatabaseQueue(path: database)
                let newest = try await queue.read { db in try Double.fetchOne(db, sql: "SELECT MAX(updated_at) FROM sessions") } ?? 0
                #expect(newest > Date().timeIntervalSince1970 - 30, "the second cluster's sessions were written once the lock was let go")
            }
        }

        /// The supervisor may write no byte to any file (its file-size limit is 0, as on a full disk): it keeps
        /// serving, says so at a bounded rate, and writes what it kept once the disk takes writes again.
        @Test func aFullDiskLosesNothingAndTheWritesLandLater() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                try await cluster.emulator.waitFor("replies") { $0["messagesReplied"] ?? 0 >= 20 }
                try setFileSizeLimit(of: cluster.supervisor.pid, to: 0)
                let before = try await cluster.emulator.stats()["messagesReplied"] ?? 0
                try await cluster.emulator.waitFor("300 more replies with the disk full") { $0["messagesReplied"] ?? 0 >= before + 300 }
                let complaints = cluster.supervisor.output.filter { $0.contains("cannot write") && $0.contains("cluster.sqlite") }
                #expect(!complaints.isEmpty)
                #expect(complaints.count <= 3, "logged \(complaints.count) times in a few seconds")
                try setFileSizeLimit(of: cluster.supervisor.pid, to: nil)
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesUnreplied"] == 0)
                let workers = try await cluster.workers()
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
                // Every shard's session reached the file, at the seq the supervisor last knew.
                let queue = try DatabaseQueue(path: dir + "/run/cluster.sqlite")
                let stored = try queue.read { db in try Row.fetchAll(db, sql: "SELECT shard, seq FROM sessions WHERE total = 2") }
                #expect(stored.count == 2)
                #expect(stored.allSatisfy { ($0["seq"] as Int) > 1 })
                let modes = try FileManager.default.contentsOfDirectory(atPath: dir + "/run").filter { $0.hasSuffix(".sqlite") }.map {
                    try FileManager.default.attributesOfItem(atPath: dir + "/run/" + $0)[.posixPermissions] as? Int
                }
                #expect(modes.allSatisfy { $0 == 0o600 }, "database modes \(modes)")
            }
        }
    }
}

/// Another process (python3's sqlite3) holding a write transaction on a database until released.
final class DatabaseHolder: Sendable {
    let process: Process
    let input: Pipe

    init(path: String) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()", path]
        input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        guard line.contains("locked") else { throw TestSetupError("the database holder did not take the lock: \(line)") }
    }

    func release() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}

/// Sets (or, with nil, lifts) the file-size limit of another process of this user (util-linux prlimit).
func setFileSizeLimit(of pid: Int32, to bytes: UInt64?) throws {
    let (status, output) = try runCommand(["prlimit", "--pid", "\(pid)", "--fsize=\(bytes.map(String.init) ?? "unlimited"):unlimited"])
    guard status == 0 else { throw TestSetupError("prlimit --pid \(pid): \(output)") }
}
