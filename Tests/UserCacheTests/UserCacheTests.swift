import ClusterCore
import Foundation
import GRDB
import Logging
import Synchronization
import Testing
import UserCache

@Suite("LRU cache")
struct LRUCacheTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)

    @Test func evictsTheLeastRecentlyUsed() {
        var cache = LRUCache<String, Int>(capacity: 2, ttl: .seconds(60))
        cache.set("a", 1, now: t0)
        cache.set("b", 2, now: t0)
        #expect(cache.get("a", now: t0) == 1)
        cache.set("c", 3, now: t0)
        #expect(cache.get("b", now: t0) == nil)
        #expect(cache.get("a", now: t0) == 1)
        #expect(cache.get("c", now: t0) == 3)
        #expect(cache.count == 2)
    }

    @Test func expiresAfterTheTimeToLive() {
        var cache = LRUCache<String, Int>(capacity: 10, ttl: .seconds(5))
        cache.set("a", 1, now: t0)
        #expect(cache.get("a", now: t0 + .seconds(4)) == 1)
        #expect(cache.get("a", now: t0 + .seconds(6)) == nil)
        #expect(cache.count == 0)
    }

    @Test func removeAndReuse() {
        var cache = LRUCache<Int, Int>(capacity: 3, ttl: .seconds(60))
        for i in 0..<100 {
            cache.set(i, i, now: t0)
            if i % 3 == 0 { cache.remove(i) }
        }
        // 99 and 96 were removed: 97 and 98 are left.
        #expect(cache.count == 2)
        #expect(cache.get(98, now: t0) == 98)
        #expect(cache.get(0, now: t0) == nil)
    }
}

func temporaryPath() -> String {
    NSTemporaryDirectory() + "users-" + UUID().uuidString.prefix(8) + ".sqlite"
}

let quietLogger: Logger = {
    var logger = Logger(label: "user-cache-test")
    logger.logLevel = .critical
    return logger
}()

func directoryConfiguration(flushSize: Int = 3, flushInterval: Duration = .milliseconds(20)) -> UserDirectory.Configuration {
    var config = ClusterConfig.defaults.cache
    config.flushSize = flushSize
    config.flushInterval = flushInterval
    return UserDirectory.Configuration(config)
}

@Suite("user cache")
struct UserDirectoryTests {
    @Test func eventsAreWrittenInBatchesAndChangesReported() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        let changed = Mutex<[String]>([])
        let added = Mutex<[String]>([])
        let directory = UserDirectory(store: store, configuration: directoryConfiguration(), shard: 1, logger: quietLogger, onWritten: { written in
            changed.withLock { $0 += written.changed }
            added.withLock { $0 += written.added }
        })
        directory.observe(id: "1", username: "kari", avatar: nil, bot: false)
        directory.observe(id: "2", username: "mota", avatar: nil, bot: false)
        directory.observe(id: "3", username: "yuna", avatar: "a", bot: true)
        await directory.flush()
        #expect(try store.count() == 3)
        #expect(directory.counters.batches == 1)
        #expect(added.withLock { $0 }.sorted() == ["1", "2", "3"])
        #expect(changed.withLock { $0 }.isEmpty)
        // The same fields again: no write. A new name: one write, reported as changed.
        directory.observe(id: "1", username: "kari", avatar: nil, bot: false)
        directory.observe(id: "2", username: "mota-v1", avatar: nil, bot: false)
        await directory.flush()
        #expect(directory.counters.writes == 4)
        #expect(changed.withLock { $0 } == ["2"])
        #expect(added.withLock { $0 }.count == 3)
        #expect(try store.user("2")?.username == "mota-v1")
        #expect(try store.user("2")?.shard == 1)
    }

    @Test func lookupsGoToMemoryThenTheFileThenThePlatform() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        let writer = UserDirectory(store: store, configuration: directoryConfiguration(), shard: 0, logger: quietLogger)
        writer.observe(id: "7", username: "lan", avatar: nil, bot: false)
        await writer.flush()
        let fetched = Mutex(0)
        let reader = UserDirectory(store: try UserStore.open(path: path), configuration: directoryConfiguration(), shard: 1, logger: quietLogger, fetch: { id, _ in
            fetched.withLock { $0 += 1 }
            return CachedUser(id: id, username: "fetched-\(id)", avatar: nil, bot: false, updatedAt: 0, shard: 1)
        })
        #expect(await reader.get("7")?.username == "lan")
        #expect(await reader.get("7")?.username == "lan")
        #expect(reader.counters.hits == 1)
        #expect(await reader.get("8")?.username == "fetched-8")
        #expect(fetched.withLock { $0 } == 1)
        // Another worker renamed 7: after the invalidation this one reads the file again.
        writer.observe(id: "7", username: "lan-v1", avatar: nil, bot: false)
        await writer.flush()
        #expect(await reader.get("7")?.username == "lan")
        reader.invalidate(["7"])
        #expect(await reader.get("7")?.username == "lan-v1")
    }

    @Test func anOlderObservationLandingLaterDoesNotUndoARename() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        let early = UserDirectory(store: store, configuration: directoryConfiguration(), shard: 0, logger: quietLogger)
        let late = UserDirectory(store: try UserStore.open(path: path), configuration: directoryConfiguration(), shard: 1, logger: quietLogger)
        // Shard 0 saw the old name just before the rename; shard 1 saw the new name after it and wrote first.
        early.observe(id: "5", username: "sora", avatar: nil, bot: false)
        let seenEarly = Date().timeIntervalSince1970
        while Date().timeIntervalSince1970 <= seenEarly { await Task.yield() }
        late.observe(id: "5", username: "sora-v1", avatar: nil, bot: false)
        await late.flush()
        await early.flush()
        #expect(try store.user("5")?.username == "sora-v1")
        #expect(try store.user("5")?.shard == 1)
        // The worker whose observation lost forgets its copy and serves the file's.
        #expect(await early.get("5")?.username == "sora-v1")
    }

    @Test func theWriterFlushesBySizeAndByTime() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        let directory = UserDirectory(store: store, configuration: directoryConfiguration(flushSize: 100, flushInterval: .milliseconds(30)), shard: 0, logger: quietLogger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await directory.run() }
            directory.observe(id: "1", username: "a", avatar: nil, bot: false)
            // Below the batch size: written when the interval has passed.
            while try store.count() < 1 { try await Task.sleep(for: .milliseconds(5)) }
            for i in 2...250 { directory.observe(id: String(i), username: "u\(i)", avatar: nil, bot: false) }
            while try store.count() < 250 { try await Task.sleep(for: .milliseconds(5)) }
            group.cancelAll()
        }
        #expect(directory.counters.batches <= 5)
    }

    @Test func aCorruptFileIsMovedAsideAndRecreated() throws {
        let path = temporaryPath()
        defer {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory())) ?? [] where file.hasPrefix((path as NSString).lastPathComponent) {
                try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + file)
            }
        }
        try Data(repeating: 0x42, count: 8192).write(to: URL(fileURLWithPath: path))
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        #expect(try store.count() == 0)
        let asides = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.hasPrefix((path as NSString).lastPathComponent + ".corrupt-") }
        #expect(!asides.isEmpty)
        #expect(throws: (any Error).self) { try UserStore.open(path: temporaryPath()) }
    }
}

@Suite("user cache outbox (several hosts)")
struct UserOutboxTests {
    func user(_ id: String, _ name: String, at time: Double) -> CachedUser {
        CachedUser(id: id, username: name, avatar: nil, bot: false, updatedAt: time, shard: 0)
    }

    /// New and changed users stay marked until published; a refresh with the same fields neither marks nor
    /// unmarks, and a publication covers later observations of the same fields; a publication of an older name
    /// leaves a newer one marked; another host's newer observation, applied here, supersedes an unpublished one.
    @Test func newAndChangedUsersStayMarkedUntilPublished() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        _ = try await store.upsert([user("0", "one-host", at: 1)])
        #expect(try await store.unpublished(limit: 10).isEmpty, "without the outbox nothing is marked")
        _ = try await store.upsert([user("1", "kari", at: 10), user("2", "mota", at: 11)], outbox: true)
        #expect(try await store.unpublished(limit: 10).map(\.id) == ["1", "2"])
        // Seen again with the same fields before the publication went out: it stays marked, and goes once more.
        _ = try await store.upsert([user("1", "kari", at: 12)], outbox: true)
        try await store.markPublished([user("1", "kari", at: 10)])
        #expect(try await store.unpublished(limit: 10).map(\.id) == ["2", "1"])
        try await store.markPublished([user("1", "kari", at: 12)])
        #expect(try await store.unpublished(limit: 10).map(\.id) == ["2"])
        // A rename: marked; the publication of the name before it does not unmark it.
        _ = try await store.upsert([user("2", "mota-v2", at: 13)], outbox: true)
        try await store.markPublished([user("2", "mota", at: 11)])
        #expect(try await store.unpublished(limit: 10) == [user("2", "mota-v2", at: 13)])
        // Another host's users, applied here, are not this host's to publish; a newer observation from there
        // supersedes what this host had not published.
        _ = try await store.upsert([user("3", "yuna", at: 14), user("2", "mota-v3", at: 15)])
        #expect(try await store.unpublished(limit: 10).isEmpty)
        #expect(try store.user("2")?.username == "mota-v3")
        // Marked again on request (another host published an older observation of it).
        try await store.markUnpublished(["3"])
        #expect(try await store.unpublished(limit: 10).map(\.id) == ["3"])
    }

    /// Two observations of the same moment with other fields end the same in every file, in either order.
    @Test func aTieOfTwoObservationsEndsTheSameInEveryFile() async throws {
        let paths = [temporaryPath(), temporaryPath()]
        defer { for path in paths { try? FileManager.default.removeItem(atPath: path) } }
        let first = try UserStore.prepare(path: paths[0], logger: quietLogger)
        let second = try UserStore.prepare(path: paths[1], logger: quietLogger)
        _ = try await first.upsert([user("1", "kari", at: 5)])
        _ = try await first.upsert([user("1", "mota", at: 5)])
        _ = try await second.upsert([user("1", "mota", at: 5)])
        let result = try await second.upsert([user("1", "kari", at: 5)])
        #expect(result.superseded == ["1"])
        #expect(try first.user("1")?.username == "mota" && second.user("1")?.username == "mota")
        // No avatar and an empty one are not the same: one of them wins everywhere.
        var empty = user("2", "lan", at: 7)
        empty.avatar = ""
        _ = try await first.upsert([user("2", "lan", at: 7)])
        _ = try await first.upsert([empty])
        _ = try await second.upsert([empty])
        _ = try await second.upsert([user("2", "lan", at: 7)])
        #expect(try first.user("2")?.avatar == "" && second.user("2")?.avatar == "")
    }

    /// A file of the first schema (before the outbox) is migrated in place: its users stay, none marked.
    @Test func aFileOfTheFirstSchemaIsMigratedKeepingItsUsers() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let old = try DatabaseQueue(path: path)
        try await old.write { db in
            try db.execute(sql: """
                CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
                INSERT INTO grdb_migrations VALUES ('v1-users');
                CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, username TEXT NOT NULL, avatar TEXT, bot BOOLEAN NOT NULL,
                    updated_at DOUBLE NOT NULL, shard INTEGER NOT NULL);
                INSERT INTO users VALUES ('7', 'lan', NULL, 0, 5, 1);
                """)
        }
        try old.close()
        let store = try UserStore.prepare(path: path, logger: quietLogger)
        #expect(try store.user("7")?.username == "lan")
        #expect(try await store.unpublished(limit: 10).isEmpty)
        _ = try await store.upsert([user("7", "lan-v2", at: 6)], outbox: true)
        #expect(try await store.unpublished(limit: 10).map(\.username) == ["lan-v2"])
    }
}
