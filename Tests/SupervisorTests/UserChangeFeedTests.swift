import ClusterCore
import ClusterPostgres
import Foundation
import Logging
import Synchronization
import Testing
import UserCache
@testable import Supervisor

/// Two hosts' user caches kept true to each other through a real PostgreSQL (`BOTCLUSTER_TEST_POSTGRES`), each with
/// its own SQLite file, as on two machines.
@Suite("user changes across hosts", .serialized)
struct UserChangeFeedTests {
    static let quiet = Logger(label: "feed-test") { _ in SwiftLogNoOpLogHandler() }

    /// A host: its authority (a pool of its own) and its user cache file.
    struct Host {
        let authority: PostgresAuthority
        let store: UserStore
        let feed: UserChangeFeed
        let pool: Task<Void, Never>
    }

    static func host(_ id: Int, cluster: String, directory: String) throws -> Host {
        let authority = try TestPostgres.authority(cluster: cluster, logger: quiet)
        let store = try UserStore.prepare(path: directory + "/users-\(id).sqlite", logger: quiet)
        let pool = Task { await authority.run() }
        return Host(authority: authority, store: store, feed: UserChangeFeed(authority: authority, host: id, store: store, logger: quiet), pool: pool)
    }

    func withHosts(_ body: (Host, Host) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "feed-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = "feed-\(UInt64.random(in: 0...UInt64.max))"
        let a = try Self.host(0, cluster: cluster, directory: directory)
        let b = try Self.host(1, cluster: cluster, directory: directory)
        defer {
            a.pool.cancel()
            b.pool.cancel()
        }
        try await a.authority.prepare(shards: 2)
        try await body(a, b)
    }

    /// Runs `host`'s feed, its invalidations into a stream, until the returned task is cancelled.
    func run(_ host: Host) -> (Task<Void, Never>, AsyncStream<[String]>) {
        let (invalidated, sink) = AsyncStream<[String]>.makeStream()
        return (Task { await host.feed.run { sink.yield($0) } }, invalidated)
    }

    /// Waits for a state of the feeds or the files (they say nothing else).
    func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while try await !condition() {
            try #require(ContinuousClock.now < deadline, "\(what): not within 20 s")
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func user(_ id: String, _ name: String, at time: Double) -> CachedUser {
        CachedUser(id: id, username: name, avatar: nil, bot: false, updatedAt: time, shard: 0)
    }

    /// One host's workers write a changed user and a new one: the other host's file gets both, and its workers
    /// are told to drop the changed one. A host that was not listening gets what it missed when it listens again.
    @Test func aUserChangedOnOneHostIsAppliedOnTheOtherAndItsWorkersDropIt() async throws {
        try await withHosts { a, b in
            let now = Date().timeIntervalSince1970
            _ = try await b.store.upsert([user("1", "kari", at: now - 10)])
            let (runA, _) = run(a)
            defer { runA.cancel() }
            var (runB, invalidatedB) = run(b)
            // A's worker writes (marked in A's outbox) and tells its supervisor.
            _ = try await a.store.upsert([user("1", "kari-v2", at: now - 5), user("2", "mota", at: now - 5)], outbox: true)
            a.feed.written()
            var drops = invalidatedB.makeAsyncIterator()
            #expect(await drops.next() == ["1"])
            #expect(try b.store.user("1")?.username == "kari-v2")
            #expect(try b.store.user("2")?.username == "mota")
            try await waitUntil("A unmarks what it published") { try await a.store.unpublished(limit: 10).isEmpty }
            #expect(a.feed.counters.published == 2 && b.feed.counters.applied == 2)
            // B's own write goes the other way.
            _ = try await b.store.upsert([user("3", "yuna", at: now - 5)], outbox: true)
            b.feed.written()
            try await waitUntil("A applies B's user") { try a.store.user("3")?.username == "yuna" }
            #expect(try a.store.user("1")?.username == "kari-v2", "A's own publications are not applied to A's file")
            // B stops listening (a restart of its feed); A publishes meanwhile; B reads it when it runs again.
            runB.cancel()
            await runB.value
            _ = try await a.store.upsert([user("1", "kari-v3", at: now - 1)], outbox: true)
            a.feed.written()
            try await waitUntil("A publishes") { a.feed.counters.published == 3 }
            #expect(try b.store.user("1")?.username == "kari-v2")
            (runB, invalidatedB) = run(b)
            defer { runB.cancel() }
            try await waitUntil("B reads what it missed") { try b.store.user("1")?.username == "kari-v3" }
        }
    }

    /// A supervisor killed after its workers wrote a rename and before it published it: the rename stays marked in
    /// the host's file, and the host's next supervisor publishes it when it starts.
    @Test func whatAKilledSupervisorDidNotPublishItsSuccessorDoes() async throws {
        try await withHosts { a, b in
            let now = Date().timeIntervalSince1970
            _ = try await b.store.upsert([user("1", "kari", at: now - 10)])
            let (runB, invalidatedB) = run(b)
            defer { runB.cancel() }
            // A's worker wrote it (marked); no supervisor of A ran to publish it.
            _ = try await a.store.upsert([user("1", "kari-v2", at: now - 5)], outbox: true)
            let (runA, _) = run(a)
            defer { runA.cancel() }
            var drops = invalidatedB.makeAsyncIterator()
            #expect(await drops.next() == ["1"])
            #expect(try b.store.user("1")?.username == "kari-v2")
            try await waitUntil("A unmarks what it published") { try await a.store.unpublished(limit: 10).isEmpty }
        }
    }

    /// A host that published an older observation than another host's file holds learns the newer one: the file
    /// that saw it later marks it for publication again.
    @Test func aHostThatPublishedAnOlderObservationLearnsTheNewerOne() async throws {
        try await withHosts { a, b in
            let now = Date().timeIntervalSince1970
            // A saw x later, with the same fields as before (nothing to publish); B publishes an older rename.
            _ = try await a.store.upsert([user("1", "kari", at: now - 1)])
            let (runA, _) = run(a)
            defer { runA.cancel() }
            let (runB, _) = run(b)
            defer { runB.cancel() }
            _ = try await b.store.upsert([user("1", "kari-old", at: now - 5)], outbox: true)
            b.feed.written()
            try await waitUntil("B learns A's newer observation") { try b.store.user("1")?.username == "kari" }
            #expect(try a.store.user("1")?.username == "kari")
        }
    }

    /// A host's own publications move its place too: once they are forgotten, the host has not missed anything,
    /// and says nothing (only a place behind what was forgotten of the others' is a gap).
    @Test func aHostsOwnForgottenPublicationsAreNoGap() async throws {
        try await withHosts { a, b in
            let now = Date().timeIntervalSince1970
            let (runA, _) = run(a)
            defer { runA.cancel() }
            _ = try await a.store.upsert([user("1", "kari", at: now)], outbox: true)
            a.feed.written()
            try await waitUntil("A publishes") { a.feed.counters.published == 1 }
            // B reads A's publication, publishes one of its own and reads on (its reader passes it, as it does
            // within seconds, long before anything is forgotten); then both are forgotten.
            try await b.feed.readAll { _ in }
            _ = try await b.store.upsert([user("2", "mota", at: now)], outbox: true)
            try await b.feed.publishOutbox()
            try await b.feed.readAll { _ in }
            try await b.authority.pruneUserChanges(olderThan: .zero)
            try await b.feed.readAll { _ in }
            #expect(b.feed.counters.skipped == 0, "B's own forgotten publication is no gap")
            #expect(try b.store.user("1")?.username == "kari")
        }
    }

    /// What another host published is checked before it is written: text that is not a publication is left out
    /// (counted), and a user seen far in the future (a host whose clock runs ahead) is not applied.
    @Test func aPublicationThatIsNotOneOrFromTheFarFutureIsLeftOut() async throws {
        try await withHosts { (a: Host, _: Host) async throws in
            let invalidated = Mutex<[String]>([])
            for payload in ["not json", "{\"id\": 1}", "[{\"id\": \"1\"}]", String(repeating: "[", count: 9_000), nil] {
                try await a.feed.apply(payload) { ids in invalidated.withLock { $0 += ids } }
            }
            #expect(a.feed.counters.skipped == 5)
            let future = Date().timeIntervalSince1970 + 86_400
            let (payloads, _) = UserChangeFeed.payloads([user("9", "future", at: future), user("8", "now", at: Date().timeIntervalSince1970)], limit: 7_000)
            try await a.feed.apply(payloads[0]) { _ in }
            #expect(try a.store.user("9") == nil)
            #expect(try a.store.user("8")?.username == "now")
            #expect(a.feed.counters.skipped == 6)
            #expect(invalidated.withLock { $0 }.isEmpty)
        }
    }

    /// Publications stay under the limit the store sets, and carry every user but one no platform would give.
    @Test func publicationsStayUnderTheLimitAndCarryEveryUser() throws {
        let users = (0..<500).map { (i: Int) -> CachedUser in
            let avatar: String? = i % 2 == 0 ? nil : "https://q/\(i)"
            return CachedUser(id: "\(i)", username: String(repeating: "名", count: i % 40), avatar: avatar, bot: i % 7 == 0, updatedAt: 1_700_000_000.123 + Double(i), shard: i % 3)
        }
        let huge = user("huge", String(repeating: "x", count: 2_000), at: 0)
        let (payloads, tooLong) = UserChangeFeed.payloads(users + [huge], limit: 1_000)
        #expect(tooLong == 1)
        #expect(payloads.count > 10)
        #expect(payloads.allSatisfy { $0.utf8.count <= 1_000 })
        #expect(payloads.flatMap { UserChangeFeed.users(of: $0) ?? [] } == users)
    }
}
