import ClusterCore
import Foundation
import Logging
import Supervisor
import Testing

@Suite("cluster database")
struct ClusterStoreTests {
    var logger: Logger {
        var logger = Logger(label: "store-test")
        logger.logLevel = .critical
        return logger
    }

    func withDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let directory = NSTemporaryDirectory() + "store-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try await body(directory)
    }

    func asideFiles(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.contains(".corrupt-") }
    }

    @Test func sessionsAndHandledEventsBelongToThePlatformTheyCameFrom() async throws {
        try await withDirectory { directory in
            let path = directory + "/cluster.sqlite"
            let now = MonotonicInstant.now()
            do {
                let store = try ClusterStore(path: path, platform: "102 wss://a/websocket", logger: logger)
                store.save(shard: ShardID(0, of: 2), id: "session-a", seq: 41)
                store.saveHandled([("AT_MESSAGE_CREATE:1", now)])
                await store.flush()
            }
            let other = try ClusterStore(path: path, platform: "102 wss://b/websocket", logger: logger)
            #expect(other.sessions(total: 2).isEmpty)
            #expect(other.handledEvents(within: .seconds(600)).isEmpty)
            let same = try ClusterStore(path: path, platform: "102 wss://a/websocket", logger: logger)
            #expect(same.sessions(total: 2)[0]?.id == "session-a")
            #expect(same.sessions(total: 2)[0]?.seq == 41)
            #expect(same.handledEvents(within: .seconds(600)).map(\.key) == ["AT_MESSAGE_CREATE:1"])
            let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
            #expect(mode == 0o600)
        }
    }

    /// Fills `path` with many handled events, then overwrites every page but the first (the schema): the file
    /// still opens, and the first read of a table finds the damage.
    func makeDamagedLater(_ path: String, platform: String, damage: () throws -> Void) async throws {
        let now = MonotonicInstant.now()
        do {
            let store = try ClusterStore(path: path, platform: platform, logger: logger)
            store.save(shard: ShardID(0, of: 1), id: "session", seq: 7)
            store.saveHandled((0..<5000).map { ("AT_MESSAGE_CREATE:message-number-\($0)-with-a-long-id", now) })
            await store.flush()
        }
        try damage()
    }

    func damagePages(_ path: String) throws {
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        #expect(size > 16 * 4096)
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: 4096)
        try handle.write(contentsOf: Data(repeating: 0xA5, count: size - 4096))
        try handle.close()
    }

    @Test func aPageDamagedWhileOpenIsMovedAsideAndTheRecordIsWrittenAgain() async throws {
        try await withDirectory { directory in
            let path = directory + "/cluster.sqlite"
            let platform = "102 wss://a/websocket"
            try await makeDamagedLater(path, platform: platform) {}
            let store = try ClusterStore(path: path, platform: platform, logger: logger)
            try damagePages(path)
            #expect(store.handledEvents(within: .seconds(600)).isEmpty)
            #expect(store.takeRecovered())
            #expect(asideFiles(directory).contains { $0.hasPrefix("cluster.sqlite.corrupt-") })
            // The fresh file serves.
            store.save(shard: ShardID(0, of: 1), id: "again", seq: 9)
            await store.flush()
            #expect(store.sessions(total: 1)[0]?.id == "again")
        }
    }

    @Test func aFileDamagedBeforeLaunchIsMovedAsideAtOpen() async throws {
        try await withDirectory { directory in
            let path = directory + "/cluster.sqlite"
            let platform = "102 wss://a/websocket"
            try await makeDamagedLater(path, platform: platform) { try damagePages(path) }
            let store = try ClusterStore(path: path, platform: platform, logger: logger)
            #expect(store.sessions(total: 1).isEmpty)
            #expect(store.handledEvents(within: .seconds(600)).isEmpty)
            #expect(asideFiles(directory).count == 1)
        }
    }

    @Test func aFileAnotherProcessHoldsLockedIsNeverMovedAside() async throws {
        let directory = NSTemporaryDirectory() + "store-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/cluster.sqlite"
        let platform = "102 wss://a/websocket"
        do {
            let store = try ClusterStore(path: path, platform: platform, logger: logger)
            store.save(shard: ShardID(0, of: 1), id: "kept", seq: 3)
            await store.flush()
        }
        // Another process takes the write lock and holds it until its standard input closes.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()", path]
        let input = Pipe()
        let output = Pipe()
        holder.standardInput = input
        holder.standardOutput = output
        try holder.run()
        defer {
            try? input.fileHandleForWriting.close()
            holder.waitUntilExit()
        }
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        try #require(line.contains("locked"))
        do {
            _ = try ClusterStore(path: path, platform: platform, logger: logger, busyTimeout: .milliseconds(200))
            Issue.record("a locked file was opened for writing")
        } catch {
            #expect("\(error)".contains("\(path) is locked by another process"), "\(error)")
        }
        #expect(asideFiles(directory).isEmpty)
        try input.fileHandleForWriting.close()
        holder.waitUntilExit()
        let store = try ClusterStore(path: path, platform: platform, logger: logger)
        #expect(store.sessions(total: 1)[0]?.id == "kept")
    }
}
