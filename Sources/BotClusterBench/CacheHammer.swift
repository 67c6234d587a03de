import ArgumentParser
import ClusterCore
import Foundation
import Logging
import UserCache

/// Writes and reads the same user cache file from this process as fast as it can: two of these at once is the
/// test that concurrent writers never see SQLITE_BUSY; alone it measures batched upserts.
struct CacheHammer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cache-hammer", abstract: "Hammer a user cache file with batched writes and reads.")
    @Option var path: String
    @Option var users = 2000
    @Option var batches = 200
    @Option var batchSize = 100

    func run() async throws {
        var logger = Logger(label: "hammer")
        logger.logLevel = .error
        let store = try UserStore.prepare(path: path, logger: logger)
        var errors = 0
        var written = 0
        let start = MonotonicInstant.now()
        for batch in 0..<batches {
            let population = users
            let rows = (0..<batchSize).map { i -> CachedUser in
                let id = (batch * batchSize + i) % population
                return CachedUser(id: String(id), username: "u\(id)-\(getpid())-\(batch)", avatar: nil, bot: false, updatedAt: Double(batch), shard: Int(getpid() % 100))
            }
            do {
                _ = try await store.upsert(rows)
                written += rows.count
                _ = try store.user(String(batch % population))
            } catch {
                errors += 1
                print("error: \(error)")
            }
        }
        let seconds = (MonotonicInstant.now() - start).seconds
        print("cache.hammer.errors \(errors)")
        print("cache.hammer.upserts \(Int(Double(written) / seconds)) rows/s")
    }
}
