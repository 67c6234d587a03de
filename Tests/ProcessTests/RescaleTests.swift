import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Testing

extension RealProcesses {
    @Suite("rescaling, rolling restarts, exactly once (real processes)", .serialized, .timeLimit(.minutes(4)))
    struct RescaleTests {
        @Test func scaleFourToSixToThreeUnderTrafficAnswersEachMessageOnce() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 4)
                try await cluster.emulator.waitFor("traffic") { $0["messagesReplied"] ?? 0 >= 30 }
                let up = try BotclusterProcess(["scale", "--shards", "6"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await up.waitForExit() == 0)
                #expect(up.output.contains("new shards ready 6/6"))
                #expect(up.output.last?.hasPrefix("scaled 4 -> 6 shards") == true)
                var workers = try await cluster.workers()
                #expect(workers.count == 6)
                #expect(workers.map { $0["shard"] } == (0..<6).map { .array([.number(Double($0)), .number(6)]) })
                let (ok, text) = try await IPCClient.control(path: cluster.socket, .scale(.count(3), planOnly: false), timeout: .seconds(120))
                #expect(ok, "\(text)")
                workers = try await cluster.workers()
                #expect(workers.count == 3 && workers.allSatisfy { $0.workerState == "ready" })
                try await cluster.drainTraffic()
                let stats = try await cluster.emulator.stats()
                #expect(stats["messagesRepliedMoreThanOnce"] == 0)
                #expect(stats["messagesUnreplied"] == 0)
                #expect(stats["identifyViolations"] == 0)
                let identifies = Int(stats["identifies"] ?? -1)
                #expect(identifies == 4 + 6 + 3, "identifies: \(identifies)")
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func aNewLayoutThatCannotGetReadyIsAbandonedAndTheOldServes() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                // The platform refuses identifies of a 3-shard layout (as for an invalid shard).
                _ = try await postAdmin(cluster.emulator.url + "/emulator/faults", #"{"kind": "refuseIdentify", "total": 3, "code": 4010}"#)
                let scale = try BotclusterProcess(["scale", "--shards", "3"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await scale.waitForExit() == 1)
                #expect(scale.output.contains { $0.contains("rescale abandoned") && $0.contains("the 2-shard layout keeps serving") })
                let workers = try await cluster.workers()
                #expect(workers.count == 2 && workers.allSatisfy { $0.workerState == "ready" })
                let before = try await cluster.emulator.stats()["messagesReplied"] ?? 0
                try await cluster.emulator.waitFor("still answering") { ($0["messagesReplied"] ?? 0) >= before + 20 }
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesUnreplied"] == 0)
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func aRollingRestartSpendsNoIdentifyAndMissesNothing() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 4)
                try await cluster.emulator.waitFor("traffic") { $0["messagesReplied"] ?? 0 >= 30 }
                let before = try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
                let roll = try BotclusterProcess(["restart", "--rolling"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await roll.waitForExit() == 0)
                #expect(roll.output.contains("replaced 4/4"))
                #expect(roll.output.last?.contains("identifies spent: 0") == true)
                let after = try await cluster.workers()
                let afterPIDs = Set(after.compactMap { $0["pid"]?.intValue.map(Int32.init) })
                #expect(afterPIDs.isDisjoint(with: before), "workers \(afterPIDs) were not all replaced (before: \(before))")
                try await cluster.drainTraffic()
                let stats = try await cluster.emulator.stats()
                #expect(stats["identifies"] == 4)
                #expect(stats["resumes"] ?? 0 >= 4)
                #expect(stats["messagesUnreplied"] == 0)
                #expect(stats["messagesRepliedMoreThanOnce"] == 0)
                try await cluster.stop(workerPIDs: after.compactMap { $0["pid"]?.intValue.map(Int32.init) } + before)
            }
        }

        @Test func close4011ReshardsToTheRecommendation() async throws {
            try await withTemporaryDirectory { dir in
                // The emulator recommends 4 shards (16 guilds, 4 per shard); the cluster starts with 2.
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                _ = try await postAdmin(cluster.emulator.url + "/emulator/faults", #"{"kind": "close", "code": 4011, "shard": 0, "total": 2}"#)
                try await cluster.waitForStatus("resharded to 4", timeout: .seconds(60)) { workers in
                    workers.count == 4 && workers.allSatisfy { $0.workerState == "ready" }
                }
                #expect(cluster.supervisor.output.contains { $0.contains("4011: resharding to the platform's recommendation") })
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesRepliedMoreThanOnce"] == 0)
                let workers = try await cluster.workers()
                try await cluster.stop(workerPIDs: workers.compactMap { $0["pid"]?.intValue.map(Int32.init) })
            }
        }

        @Test func sixtySecondsOfChaosKeepEveryPromise() async throws {
            try await withTemporaryDirectory { dir in
                let chaos = try BotclusterProcess(["--duration", "60", "--seed", "11", "--botcluster", botclusterBinary()], directory: dir, executable: siblingBinary("botcluster-chaos"))
                let status = await chaos.waitForExit()
                #expect(status == 0, "\(chaos.output.suffix(25).joined(separator: "\n"))")
                #expect(chaos.output.contains("PASS"))
            }
        }
    }
}
