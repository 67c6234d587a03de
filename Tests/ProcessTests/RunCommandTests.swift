import Foundation
import Testing

extension RealProcesses {
    @Suite("botcluster run (the real binary)", .timeLimit(.minutes(2)))
    struct RunCommandTests {
        @Test func sigtermDrainsAndPrintsWhereItStopped() async throws {
            try await withTemporaryDirectory { dir in
                let emulator = try await EmulatorProcess.start(
                    config: #"{"emulator": {"identifyWindow": "100ms", "restRate": 1000, "traffic": {"rate": 200, "groupRate": 5, "c2cRate": 5}}}"#,
                    directory: dir
                )
                try emulator.clusterConfig(#""identify": {"window": "100ms"}, "rateBudget": {"global": {"rate": 1000, "burst": 100}}"#)
                    .write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let worker = try BotclusterProcess(["run", "--shard", "0/1"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                try await emulator.waitFor("100 replies") { $0["messagesReplied"] ?? 0 >= 100 }
                worker.signal(SIGTERM)
                var lines = worker.lines.makeAsyncIterator()
                let stopped = await worker.waitForLine(containing: "stopped shard 0/1", iterator: &lines)
                #expect(await worker.waitForExit() == 0)
                let line = try #require(stopped)
                // "stopped shard 0/1: session <id> seq <n>; received R, handled H, ..."
                let words = line.split(separator: " ")
                let seq = words.firstIndex(of: "seq").flatMap { Int(words[$0 + 1].dropLast()) } ?? 0
                #expect(seq >= 100, "\(line)")
                #expect(line.contains("handler errors 0"))
                emulator.process.signal(SIGTERM)
                #expect(await emulator.process.waitForExit() == 0)
                #expect(!worker.output.joined().contains("emulator-development-secret"))
            }
        }

        /// A gateway that keeps its sockets open and answers nothing (the process is stopped): the shard has events
        /// waiting for a slot and replies waiting for an answer. SIGINT still ends it within the drain timeout and a
        /// little, with a session to resume from that never passes an unhandled event.
        @Test func aSilentPlatformDoesNotHoldTheStop() async throws {
            try await withTemporaryDirectory { dir in
                let emulator = try await EmulatorProcess.start(
                    config: #"{"emulator": {"identifyWindow": "100ms", "restRate": 100000, "adminToken": "env:TEST_ADMIN_TOKEN", "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0}}}"#,
                    directory: dir
                )
                try emulator.clusterConfig(#""identify": {"window": "100ms"}, "worker": {"maxInFlight": 4, "drainTimeout": "1s"}, "rateBudget": {"global": {"rate": 100000, "burst": 1000}}"#)
                    .write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let worker = try BotclusterProcess(["run", "--shard", "0/1"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                try await emulator.waitFor("the shard's session") { $0["activeSessions"] == 1 }
                _ = try await emulator.admin("/emulator/burst", #"{"count": 3000}"#)
                try await emulator.waitFor("some replies") { $0["messagesReplied"] ?? 0 >= 10 }
                emulator.process.signal(SIGSTOP)
                defer { emulator.process.signal(SIGCONT) }
                let start = ContinuousClock.now
                worker.signal(SIGINT)
                var lines = worker.lines.makeAsyncIterator()
                let stopped = await worker.waitForLine(containing: "stopped shard 0/1", iterator: &lines)
                #expect(await worker.waitForExit() == 0)
                let took = ContinuousClock.now - start
                #expect(took < .seconds(3), "run took \(took) to exit after SIGINT (drainTimeout 1s)")
                let line = try #require(stopped)
                let words = line.split(separator: " ")
                let seq = words.firstIndex(of: "seq").flatMap { Int(words[$0 + 1].dropLast()) } ?? -1
                emulator.process.signal(SIGCONT)
                let stats = try await emulator.stats()
                // READY is seq 1; dispatches follow. The committed seq stays below every event not handled.
                #expect(seq >= 1 && seq < Int(stats["messagesDelivered"] ?? 0) + 1, "\(line)")
                emulator.process.signal(SIGTERM)
                _ = await emulator.process.waitForExit()
            }
        }

        @Test func whatNeedsNoFileOrNoSecretRunsWithout() async throws {
            try await withTemporaryDirectory { dir in
                let defaults = try BotclusterProcess(["config", "check", "--print-defaults"], directory: dir)
                #expect(await defaults.waitForExit() == 0)
                #expect(defaults.output.contains { $0.contains("\"shards\"") })
                // No cluster.json: the emulator runs on its defaults.
                let emulator = try BotclusterProcess(["emulator", "--port", "0"], directory: dir)
                var lines = emulator.lines.makeAsyncIterator()
                #expect(await emulator.waitForLine(containing: "emulator listening on http://127.0.0.1:", iterator: &lines) != nil)
                emulator.signal(SIGTERM)
                #expect(await emulator.waitForExit() == 0)
                // status needs the socket's path, not the secret.
                try #"{"gateway": {"embedded": false}, "app": {"id": "1", "secret": "env:SURELY_UNSET_SECRET"}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let status = try BotclusterProcess(["status"], directory: dir)
                #expect(await status.waitForExit() == 1)
                #expect(status.output.contains { $0.hasPrefix("no supervisor is running") }, "\(status.output)")
            }
        }

        @Test func badArgumentsAndConfigsSayWhatIsWrong() async throws {
            try await withTemporaryDirectory { dir in
                let shard = try BotclusterProcess(["run", "--shard", "5/2"], directory: dir)
                #expect(await shard.waitForExit() == 1)
                #expect(shard.output.contains { $0.contains("--shard: must be ID/TOTAL with 0 <= ID < TOTAL, got \"5/2\"") })

                try #"{"shards": {"count": 0}, "supervisor": {"hartbeat": {}}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                let check = try BotclusterProcess(["config", "check"], directory: dir)
                #expect(await check.waitForExit() == 1)
                #expect(check.output.contains("cluster.json: shards.count: must be 1...1024, got 0"))
                #expect(check.output.contains(#"cluster.json: supervisor.hartbeat: unknown key; did you mean "heartbeat"?"#))

                let missing = try BotclusterProcess(["config", "check", "--config", "nope.json"], directory: dir)
                #expect(await missing.waitForExit() == 1)
                #expect(missing.output.first?.hasPrefix("nope.json: cannot read the file") == true)
            }
        }
    }
}
