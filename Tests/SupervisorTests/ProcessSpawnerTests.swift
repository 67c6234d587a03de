import ClusterCore
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing
@testable import Supervisor

@Suite("process spawner")
struct ProcessSpawnerTests {
    /// A bot built on the library is the supervisor's own process: a child its code starts must keep its exit
    /// status for that code, not have it taken by the spawner's reaper.
    @Test func onlyTheWorkersAreReaped() async throws {
        let exits = Mutex<[(Int32, Supervisor.ExitStatus)]>([])
        let reported = AsyncSignal<Void>()
        var logger = Logger(label: "spawner-test")
        logger.logLevel = .critical
        let spawner = ProcessSpawner(executable: "/bin/sh", logger: logger) { pid, _, status in
            exits.withLock { $0.append((pid, status)) }
            reported.set(())
        }
        // The bot's own child, started and finished outside the spawner.
        var own: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("exit 7"), nil]
        defer { for pointer in argv { free(pointer) } }
        #expect(posix_spawn(&own, "/bin/sh", nil, nil, argv, environ) == 0)
        // The worker lives until this test ends it: its tag can be read while it does.
        let (worker, output) = try await spawner.spawn(arguments: ["-c", "exec sleep 60"], environment: [:], tag: 42)
        close(output)
        #expect(spawner.tag(of: worker) == 42)
        kill(worker, SIGTERM)
        try await withTimeout(.seconds(30), "the reaper's report of the worker's exit") { try await reported.wait() }
        #expect(exits.withLock { $0.map(\.0) } == [worker])
        #expect(exits.withLock { $0.first?.1 } == .signaled(SIGTERM))
        #expect(spawner.tag(of: worker) == nil)
        // Its exit status is still there for the code that started it.
        var status: Int32 = 0
        #expect(waitpid(own, &status, 0) == own)
        #expect((status >> 8) & 0xFF == 7)
    }

    /// A child that writes without newlines costs 16 KiB of the supervisor's memory, not its whole output.
    @Test func anEndlessLineIsCutAtTheBound() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let output = OutputWriter(fd: fds[1])
        let channel = EmbeddedChannel(handler: PrefixedLineWriter(prefix: "[w] ", output: output))
        try channel.writeInbound(ByteBuffer(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: 40_000)))
        try channel.writeInbound(ByteBuffer(string: "end\n"))
        output.flush(within: .seconds(5))
        close(fds[1])
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = read(fds[0], &chunk, chunk.count)
            if n <= 0 { break }
            text += chunk[0..<n]
        }
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 3)
        #expect(lines.prefix(2).allSatisfy { $0.hasSuffix("[line cut at 16384 bytes]") && $0.count < 16_500 })
        #expect(lines.last?.hasPrefix("[w] xxx") == true && lines.last?.hasSuffix("end") == true)
    }
}
