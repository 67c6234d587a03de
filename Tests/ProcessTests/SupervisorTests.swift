import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Testing

extension RealProcesses {
    @Suite("botcluster launch (real processes)", .serialized, .timeLimit(.minutes(3)))
    struct SupervisorProcessTests {
        @Test func launchesFourShardsAndAnswersEveryMessage() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir)
                let workers = try await cluster.workers()
                #expect(workers.count == 4)
                #expect(workers.allSatisfy { $0.workerState == "ready" })
                #expect(workers.map { $0["shard"] } == (0..<4).map { .array([.number(Double($0)), .number(4)]) })
                try await cluster.emulator.waitFor("100 replies") { $0["messagesReplied"] ?? 0 >= 100 }
                try await cluster.drainTraffic()
                let stats = try await cluster.emulator.stats()
                #expect(stats["identifies"] == 4)
                #expect(stats["identifyViolations"] == 0)
                #expect(stats["messagesRepliedMoreThanOnce"] == 0)
                #expect(stats["messagesUnreplied"] == 0)
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func aKilledWorkerIsReplacedAndResumesWithNothingUnreplied() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir)
                try await cluster.emulator.waitFor("traffic flowing") { $0["messagesReplied"] ?? 0 >= 50 }
                let victim = try await cluster.pid(of: 2)
                kill(victim, SIGKILL)
                try await cluster.waitForStatus("worker 2 replaced and ready") { workers in
                    workers[2]["pid"]?.intValue != Int(victim) && workers[2].workerState == "ready" && workers[2]["restarts"]?.intValue == 1
                }
                try await cluster.emulator.waitFor("the replacement resumed") { $0["resumes"] ?? 0 >= 1 }
                try await cluster.drainTraffic()
                let stats = try await cluster.emulator.stats()
                #expect(stats["identifies"] == 4, "the replacement resumed instead of identifying")
                #expect(stats["messagesUnreplied"] == 0)
                let workers = try await cluster.workers()
                #expect(workers[2]["lastExit"]?.stringValue == "signal 9 (SIGKILL)")
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) } + [victim])
            }
        }

        /// The day's session starts run out: a shard that must identify waits (its requests denied) until the
        /// platform's daily reset, then identifies without a restart of anything: the supervisor looks at the
        /// platform's count before it denies, and takes the new day's.
        @Test func aShardThatFoundTheDaysStartsSpentIdentifiesAfterThePlatformsReset() async throws {
            try await withTemporaryDirectory { dir in
                let emulator = try await EmulatorProcess.start(
                    config: TestCluster.emulatorConfig.replacingOccurrences(
                        of: #""restRate": 2000,"#, with: #""restRate": 2000, "sessionStartLimit": {"total": 3, "resetAfter": "25s", "maxConcurrency": 1},"#),
                    directory: dir
                )
                try TestCluster.clusterConfig(emulator, shards: 2).write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let cluster = try await TestCluster.launch(in: dir, emulator: emulator, shards: 2)
                // The third start of the day goes to shard 0; shard 1 then finds none left.
                _ = try await emulator.admin("/emulator/faults", #"{"kind": "invalidSession", "shard": 0, "total": 2}"#)
                try await emulator.waitFor("shard 0 identified again") { $0["identifies"] == 3 }
                try await cluster.waitForStatus("shard 0 ready again") { $0[0].workerState == "ready" }
                _ = try await emulator.admin("/emulator/faults", #"{"kind": "invalidSession", "shard": 1, "total": 2}"#)
                try await cluster.waitForStatus("shard 1 without a session", timeout: .seconds(10)) { $0[1].workerState != "ready" }
                // Denied until the platform's day is over (25 s after the emulator started), then served.
                try await cluster.waitForStatus("shard 1 ready after the reset", timeout: .seconds(60)) { $0[1].workerState == "ready" }
                let stats = try await emulator.stats()
                #expect(stats["identifies"] == 4)
                #expect(stats["identifyViolations"] == 0, "an Identify left without a start left")
                #expect(cluster.supervisor.output.contains { $0.contains("the platform's day was reset: session starts again") })
                let workers = try await cluster.workers()
                #expect(workers.allSatisfy { $0["restarts"]?.intValue == 0 }, "nothing was restarted: \(workers)")
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func aStoppedWorkerIsFoundHungAndReplaced() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir)
                let victim = try await cluster.pid(of: 1)
                kill(victim, SIGSTOP)
                // misses x interval = 500 ms of silence, then SIGABRT, then SIGKILL of the group after 200 ms.
                try await cluster.waitForStatus("worker 1 replaced") { workers in
                    workers[1]["pid"]?.intValue != Int(victim) && workers[1].workerState == "ready"
                }
                #expect(!isAlive(victim))
                try await cluster.emulator.waitFor("the replacement resumed") { $0["resumes"] ?? 0 >= 1 }
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesUnreplied"] == 0)
                let workers = try await cluster.workers()
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func aWorkerThatCrashesAtStartBacksOffThenFailsAndTheOthersServe() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 3)
                // cluster.json breaks under the running cluster: a replacement worker cannot start.
                try #"{"shards": {"count": 0}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let victim = try await cluster.pid(of: 0)
                kill(victim, SIGKILL)
                try await cluster.waitForStatus("worker 0 failed") { $0[0].workerState == "failed" }
                let workers = try await cluster.workers()
                #expect(workers[0]["failure"]?.stringValue?.contains("crashed more than 3 times") == true)
                #expect(workers[0]["lastExit"]?.stringValue == "exit 1")
                #expect(workers[1].workerState == "ready" && workers[2].workerState == "ready")
                #expect(cluster.supervisor.output.contains { $0.contains("shards.count: must be 1...1024, got 0") })
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func killingTheSupervisorLeavesNoWorkerBehind() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                #expect(pids.count == 4)
                cluster.supervisor.signal(SIGKILL)
                _ = await cluster.supervisor.waitForExit()
                try await waitUntilGone(pids, within: .seconds(2))
                cluster.emulator.process.signal(SIGTERM)
                _ = await cluster.emulator.process.waitForExit()
            }
        }

        @Test func aSecondSupervisorIsRefusedAndAStaleSocketIsCleaned() async throws {
            try await withTemporaryDirectory { dir in
                // A socket file left by a supervisor that died: the next one takes the lock and removes it.
                try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
                _ = FileManager.default.createFile(atPath: dir + "/run/botcluster.sock", contents: Data("stale".utf8))
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                let second = try BotclusterProcess(["launch"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await second.waitForExit() == 1)
                #expect(second.output.contains { $0.contains("another supervisor (pid \(cluster.supervisor.pid)) holds run/botcluster.sock.lock") })
                #expect(try await cluster.workers().allSatisfy { $0.workerState == "ready" })
                try await cluster.stop(workerPIDs: try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func garbageOnTheSocketIsSurvived() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                for bytes: [UInt8] in [[0xFF, 0xFF, 0xFF, 0xFF, 1], [0, 0, 0, 2, 0xAB, 0xCD], Array("GET / HTTP/1.1\r\n\r\n".utf8)] {
                    try await rogueClient(path: cluster.socket, bytes: bytes)
                }
                // A client of the wrong protocol version is told why.
                let old = try await IPCClient.connect(path: cluster.socket, hello: Hello(version: 99, role: .control, pid: getpid()))
                var inbound = old.inbound.makeAsyncIterator()
                guard case .refused(let reason) = await inbound.next() else { Issue.record("not refused"); return }
                #expect(reason.contains("version 99"))
                #expect(try await cluster.workers().allSatisfy { $0.workerState == "ready" })
                #expect(cluster.supervisor.output.contains { $0.contains("IPC connection refused") && $0.contains("protocol error") })
                try await cluster.stop(workerPIDs: try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func restartAndStopCommands() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                let before = try await cluster.pid(of: 1)
                let restart = try BotclusterProcess(["restart", "--shard", "1"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await restart.waitForExit() == 0)
                #expect(restart.output.contains("restarting worker 1 (shard 1/2)"))
                try await cluster.waitForStatus("worker 1 replaced") { $0[1]["pid"]?.intValue != Int(before) && $0[1].workerState == "ready" }
                let wrong = try BotclusterProcess(["restart", "7"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await wrong.waitForExit() == 1)
                #expect(wrong.output.contains("no worker 7: ordinals and shards are 0...1"))
                let status = try BotclusterProcess(["status"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await status.waitForExit() == 0)
                #expect(status.output.first?.hasPrefix("ORD  SHARD") == true)
                let pids = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                let stop = try BotclusterProcess(["stop"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await stop.waitForExit() == 0)
                #expect(await cluster.supervisor.waitForExit() == 0)
                try await waitUntilGone(pids + [before], within: .seconds(5))
                #expect(!FileManager.default.fileExists(atPath: cluster.socket))
                cluster.emulator.process.signal(SIGTERM)
                _ = await cluster.emulator.process.waitForExit()
            }
        }

        @Test func socketPathTooLongOrRunDirectoryNotWritableAreClear() async throws {
            try await withTemporaryDirectory { dir in
                let long = String(repeating: "r", count: 120)
                try #"{"supervisor": {"runDirectory": "\#(long)"}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let tooLong = try BotclusterProcess(["launch"], directory: dir)
                #expect(await tooLong.waitForExit() == 1)
                #expect(tooLong.output.contains { $0.contains("Unix-domain socket paths hold at most 107") })

                // A directory nobody may create, not even root.
                try #"{"supervisor": {"runDirectory": "/proc/botcluster-run"}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let unwritable = try BotclusterProcess(["launch"], directory: dir)
                #expect(await unwritable.waitForExit() == 1)
                #expect(unwritable.output.contains { $0.contains("supervisor.runDirectory: cannot create /proc/botcluster-run") })
            }
        }

        /// A cluster the open-file limit cannot hold is refused before a worker starts, naming the limit and the fix.
        /// At max_concurrency 1 a launch takes one identify window per shard: on a terminal (a pty here, through
        /// script(1)) one live line shows how far it is and how long the ledger says is left, and `status` says the same.
        /// Eight shards take seven seconds: long enough for `status` to find the launch on a machine busy with the
        /// suites before it.
        @Test func aLongLaunchShowsItsProgressLiveOnATerminalAndInStatus() async throws {
            try await withTemporaryDirectory { dir in
                try #"""
                    {"shards": {"count": 8}, "supervisor": {"runDirectory": "run"}, "log": {"level": "warning"},
                     "emulator": {"identifyWindow": "1s", "restRate": 1000, "sessionStartLimit": {"total": 1000, "maxConcurrency": 1},
                                  "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0}}}
                    """#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let launch = try BotclusterProcess(["-qfec", "'\(botclusterBinary())' launch", "/dev/null"], directory: dir, executable: "/usr/bin/script")
                var statusText: [String] = []
                try await poll("status to show the launch", timeout: .seconds(60), read: { () -> [String] in
                    guard launch.process.isRunning else {
                        Issue.record("the launch ended: \(launch.output.joined(separator: "\n"))")
                        throw CancellationError()
                    }
                    let status = try BotclusterProcess(["status"], directory: dir)
                    _ = await status.waitForExit()
                    statusText = status.output
                    return statusText
                }, until: { $0.contains { $0.hasPrefix("launch: ready ") } })
                let line = try #require(statusText.first { $0.hasPrefix("launch: ready ") })
                #expect(line.contains("/8 · identifying bucket 0"), "\(line)")
                var lines = launch.lines.makeAsyncIterator()
                let ready = await launch.waitForLine(containing: "cluster ready: 8 shards", iterator: &lines)
                // The live line was redrawn in place (carriage return, erase line), then cleared for the last word.
                let screen = launch.output.joined(separator: "\n")
                #expect(screen.contains("\r\u{1B}[Kready "), "\(screen)")
                #expect(screen.contains(" · identifying bucket 0 · about "), "\(screen)")
                #expect(ready?.contains("\r\u{1B}[Kcluster ready") == true, "\(String(describing: ready))")
                let status = try BotclusterProcess(["status", "--json"], directory: dir)
                _ = await status.waitForExit()
                let json = try JSONValue.parse(status.output.joined())
                #expect(json["startup"] == nil, "a ready cluster shows no startup")
                let supervisor = try #require(json["supervisor"]?["pid"]?.intValue)
                kill(Int32(supervisor), SIGTERM)
                _ = await launch.waitForExit()
            }
        }

        @Test func aLaunchTheOpenFileLimitCannotHoldIsRefusedUpFront() async throws {
            try await withTemporaryDirectory { dir in
                try #"{"shards": {"count": 64}, "supervisor": {"runDirectory": "run"}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let launch = try BotclusterProcess(["--nofile=200:200", "--", botclusterBinary(), "launch"], directory: dir, executable: "/usr/bin/prlimit")
                #expect(await launch.waitForExit() == 1)
                let refusal = launch.output.first { $0.contains("cannot start 64 shards: open files: 64 workers need about") }
                #expect(refusal?.contains("its limit is 200") == true, "\(launch.output)")
                #expect(!launch.output.contains { $0.contains("cluster ready") })
            }
        }
    }
}

/// Connects to the socket, writes `bytes`, and reads until the supervisor hangs up.
func rogueClient(path: String, bytes: [UInt8]) async throws {
    let fd = try #require(RawUnixSocket.connect(path: path))
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var chunk = [UInt8](repeating: 0, count: 1024)
    while read(fd, &chunk, chunk.count) > 0 {}
}
