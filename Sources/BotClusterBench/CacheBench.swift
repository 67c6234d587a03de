import ArgumentParser
import ClusterCore
import ClusterIPC
import CSQLiteBench
import Foundation
import Logging
import UserCache

/// The user cache: an LRU hit, a miss read from SQLite through GRDB beside the same read in C, batched upserts
/// through GRDB beside the same in C.
struct CacheBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cache", abstract: "User cache lookups and writes beside plain C SQLite.")
    @Option var population = 10_000

    func run() async throws {
        let dir = "/tmp/botcluster-cache-bench-\(getpid())"
        try RunDirectory.prepare(dir)
        defer {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + file) }
            rmdir(dir)
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let store = try UserStore.prepare(path: dir + "/users.sqlite", logger: logger)
        var config = ClusterConfig.defaults.cache
        config.lruSize = population
        let directory = UserDirectory(store: store, configuration: .init(config), shard: 0, logger: logger)
        let users = (0..<population).map { CachedUser(id: String($0), username: "user\($0)", avatar: nil, bot: false, updatedAt: 0, shard: 0) }

        // Batched upserts: GRDB (the worker's writer), then C on a fresh file.
        let batch = 256
        var start = MonotonicInstant.now()
        for round in 0..<4 {
            for chunk in stride(from: 0, to: users.count, by: batch) {
                let rows = users[chunk..<min(chunk + batch, users.count)].map { user -> CachedUser in
                    var user = user
                    user.username += "-\(round)"
                    return user
                }
                _ = try await store.upsert(rows)
            }
        }
        let grdbUpserts = Double(population * 4) / (MonotonicInstant.now() - start).seconds
        let cUpserts = csqlite_batched_upserts(dir + "/c.sqlite", Int32(population * 4), Int32(batch))

        // Misses: point reads through the pool, beside C's prepared statement on the same file.
        let reads = 200_000
        start = MonotonicInstant.now()
        for i in 0..<reads { _ = try store.user(String(i % population)) }
        let grdbReads = Double(reads) / (MonotonicInstant.now() - start).seconds
        let cReads = csqlite_point_reads(dir + "/users.sqlite", Int32(population), Int32(reads))

        // Hits: the LRU in front.
        for user in users { directory.observe(id: user.id, username: user.username, avatar: nil, bot: false) }
        let hits = 1_000_000
        start = MonotonicInstant.now()
        for i in 0..<hits { _ = await directory.get(String(i % population)) }
        let hitNanos = Double((MonotonicInstant.now() - start).nanoseconds) / Double(hits)

        print("cache.hit.ns \(Int(hitNanos)) ns/lookup")
        print("cache.miss.rate \(Int(grdbReads)) lookups/s")
        print("cache.miss.c.rate \(Int(cReads)) lookups/s")
        print("cache.upsert.rate \(Int(grdbUpserts)) rows/s")
        print("cache.upsert.c.rate \(Int(cUpserts)) rows/s")
    }
}
