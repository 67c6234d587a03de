import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import TestSupport
import Testing

extension RealProcesses {
    /// Another process of the same user (what this test process is to the supervisor) may be hostile or broken.
    /// None of what it does may cost the cluster a reply, a worker or the supervisor.
    @Suite("hostile peers on the same uid (real processes)", .serialized, .timeLimit(.minutes(3)))
    struct HostilePeerTests {
        func stop(_ cluster: TestCluster) async throws {
            try await cluster.stop(workerPIDs: try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) })
        }

        func restarts(_ cluster: TestCluster) async throws -> [Int] {
            try await cluster.workers().map { $0["restarts"]?.intValue ?? -1 }
        }

        @Test func anImpostorHelloIsRefusedAndTheWorkerKeepsItsSlot() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                let worker = try #require(try await cluster.workers().first)
                let generation = UInt64(try #require(worker["generation"]?.intValue))
                // Everything status --json tells, claimed by a process the supervisor did not start.
                let impostor = try await IPCClient.connect(path: cluster.socket, hello: Hello(role: .worker, ordinal: 0, generation: generation, pid: Int32(worker["pid"]?.intValue ?? 0)))
                var inbound = impostor.inbound.makeAsyncIterator()
                guard case .refused(let reason) = await inbound.next() else {
                    Issue.record("an impostor was welcomed")
                    return
                }
                #expect(reason.contains("is not the process this supervisor started for worker 0"))
                let before = try await cluster.emulator.stats()["messagesReplied"] ?? 0
                try await cluster.emulator.waitFor("replies go on") { $0["messagesReplied"] ?? 0 >= before + 50 }
                #expect(try await restarts(cluster) == [0, 0])
                try await cluster.drainTraffic()
                #expect(try await cluster.emulator.stats()["messagesUnreplied"] == 0)
                try await stop(cluster)
            }
        }

        @Test func aConnectionFloodNeitherStallsHeartbeatsNorGrowsWithoutBound() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2)
                // Far more connections than may wait for a hello, none saying anything, then all closed at once.
                var files = rlimit()
                getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
                files.rlim_cur = files.rlim_max
                setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
                let count = min(6000, Int(files.rlim_cur) - 200)
                var sockets: [Int32] = []
                for _ in 0..<count {
                    guard let fd = RawUnixSocket.connect(path: cluster.socket) else { break }
                    sockets.append(fd)
                }
                #expect(sockets.count >= 3000, "only \(sockets.count) connections opened")
                // A connection over the limit of what may wait for a hello was closed at once.
                var closedEarly = 0
                for fd in sockets.suffix(500) {
                    var byte: UInt8 = 0
                    var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    if Glibc.poll(&poll, 1, 2000) > 0, read(fd, &byte, 1) == 0 { closedEarly += 1 }
                }
                #expect(closedEarly > 0)
                for fd in sockets { close(fd) }
                // Heartbeats kept coming through it: nobody was taken for hung.
                let before = try await cluster.emulator.stats()["messagesReplied"] ?? 0
                try await cluster.emulator.waitFor("replies go on") { $0["messagesReplied"] ?? 0 >= before + 60 }
                #expect(try await restarts(cluster) == [0, 0])
                // And the refusals were logged a few times, not thousands.
                #expect(cluster.supervisor.output.filter { $0.contains("IPC connection refused") }.count < 20)
                try await stop(cluster)
            }
        }

        @Test func framesOverTheLimitBeforeHelloAndIdleControlConnectionsAreClosed() async throws {
            try await withTemporaryDirectory { dir in
                let cluster = try await TestCluster.start(in: dir, shards: 2, extra: #", "log": {"level": "info"}"#)
                // A frame announced as 16 MiB before any hello: closed at once, not buffered.
                try await rogueClient(path: cluster.socket, bytes: [0x01, 0x00, 0x00, 0x00, 0x01, 0x02])
                // A control connection that says hello and nothing more is closed after the idle timeout (1 s here).
                let idle = try await IPCClient.connect(path: cluster.socket, hello: Hello(role: .control, pid: getpid()))
                let start = ContinuousClock.now
                let reason = try await idle.closed.wait()
                #expect(ContinuousClock.now - start < .seconds(10), "\(reason)")
                // A long request in flight is not idle: status answers (it pings every worker) on a fresh connection.
                #expect(try await cluster.workers().count == 2)
                #expect(try await restarts(cluster) == [0, 0])
                try await stop(cluster)
            }
        }

        @Test func aWorkerTalksOnlyToTheSupervisorThatStartedIt() async throws {
            try await withTemporaryDirectory { dir in
                // A process of the same user listens where the supervisor's socket should be.
                let socket = dir + "/fake.sock"
                let listener = Process()
                listener.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                listener.arguments = ["python3", "-c", """
                    import socket, sys
                    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); print('listening', flush=True)
                    s.settimeout(60)
                    c, _ = s.accept(); c.settimeout(5)
                    try:
                        data = c.recv(100)
                    except socket.timeout:
                        data = b''
                    print('received', len(data), flush=True)
                    """, socket]
                let output = Pipe()
                listener.standardOutput = output
                try listener.run()
                defer { if listener.isRunning { listener.terminate() } }
                #expect(String(decoding: output.fileHandleForReading.availableData, as: UTF8.self).contains("listening"))
                try "{}".write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                // This test process is the worker's parent, and names itself as the supervisor: the listener is not it.
                let worker = try BotclusterProcess(["worker"], directory: dir, environment: [
                    "BOTCLUSTER_SOCKET": socket, "BOTCLUSTER_ORDINAL": "0", "BOTCLUSTER_GENERATION": "1",
                    "BOTCLUSTER_SUPERVISOR_PID": String(getpid()),
                ])
                #expect(await worker.waitForExit() == WorkerExitStatus.orphaned)
                #expect(worker.output.contains { $0.contains("is held by pid \(listener.processIdentifier)") && $0.contains("nothing was sent") }, "\(worker.output)")
                listener.waitUntilExit()
                let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                #expect(said.contains("received 0"), "\(said)")
            }
        }

        @Test func aRunDirectoryOthersControlOrAPlantedLockLinkIsRefused() async throws {
            try await withTemporaryDirectory { dir in
                func launch(_ runDirectory: String) async throws -> [String] {
                    try #"{"supervisor": {"runDirectory": "\#(runDirectory)"}}"#.write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
                    let process = try BotclusterProcess(["launch"], directory: dir)
                    #expect(await process.waitForExit() == 1)
                    return process.output
                }
                try FileManager.default.createDirectory(atPath: dir + "/open", withIntermediateDirectories: true)
                chmod(dir + "/open", 0o777)
                #expect(try await launch(dir + "/open").contains { $0.contains("is writable by") && $0.contains("chmod 700") })

                // A directory of another user: one made for nobody when this test runs as root, /var/tmp otherwise.
                var foreign = "/var/tmp"
                if getuid() == 0 {
                    foreign = dir + "/foreign"
                    try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
                    chown(foreign, 65534, 65534)
                }
                #expect(try await launch(foreign).contains { $0.contains("belongs to uid") })

                try FileManager.default.createDirectory(atPath: dir + "/mine", withIntermediateDirectories: true)
                chmod(dir + "/mine", 0o700)
                try "keep me".write(toFile: dir + "/victim", atomically: true, encoding: .utf8)
                symlink(dir + "/victim", dir + "/mine/botcluster.sock.lock")
                #expect(try await launch(dir + "/mine").contains { $0.contains("is a symbolic link") })
                #expect(try String(contentsOfFile: dir + "/victim", encoding: .utf8) == "keep me")
            }
        }
    }
}
