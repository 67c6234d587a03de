import ClusterCore
import Foundation
import Logging
import Synchronization

/// A worker's users: an in-memory LRU in front of the shared SQLite file, fed by the authors of every event.
///
/// Lookups go to the LRU, then to SQLite, then (with `fetchMissing`) to the platform. Users seen in events are
/// written in batches — one transaction per batch, by size or by time — and the ids whose fields changed, and those
/// new to the file, are handed to `onWritten`: the supervisor tells its other workers to drop the changed ones (a
/// name change seen on one shard is what the others serve next), and in a cluster of several hosts publishes what
/// the outbox holds to the other hosts, whose files may hold them stale.
public final class UserDirectory: Sendable {
    /// The cache's sizes and timings, from cluster.json's `cache` section.
    public struct Configuration: Sendable {
        public var lruSize: Int
        public var ttl: Duration
        public var flushSize: Int
        public var flushInterval: Duration
        /// A host of several (`store.postgres`): what the writer writes new or changed stays marked in the file
        /// until the supervisor published it to the other hosts (`UserStore.upsert(_:outbox:)`).
        public var outbox: Bool

        /// The configuration cluster.json's `cache` section gives, with the outbox when several hosts share the cluster.
        public init(_ config: CacheConfig, outbox: Bool = false) {
            lruSize = config.lruSize
            ttl = config.ttl
            flushSize = config.flushSize
            flushInterval = config.flushInterval
            self.outbox = outbox
        }
    }

    struct State {
        var lru: LRUCache<String, CachedUser>
        var pending: [String: CachedUser] = [:]
        var firstPendingAt: MonotonicInstant?
        var lookups = 0
        var hits = 0
        var writes = 0
        var batches = 0
        /// Writes failing in a row (a full disk, a lock held elsewhere): the next try waits longer.
        var failures = 0
    }

    /// The most users kept pending while writes fail; beyond, new observations wait for the next event.
    var maxPending: Int { max(configuration.flushSize * 4, min(configuration.lruSize, 100_000)) }

    let store: UserStore
    let configuration: Configuration
    let shard: Int
    let fetch: (@Sendable (String, String?) async throws -> CachedUser?)?
    let onWritten: @Sendable (Written) -> Void
    let logger: Logger
    let state: Mutex<State>
    let wakeup = Wakeup()
    let writeFailures = RateLimitedLog()

    /// What one batch wrote that others may hold stale.
    public struct Written: Sendable, Equatable {
        /// Users the file held with other fields.
        public var changed: [String]
        /// Users the file did not hold.
        public var added: [String]
    }

    /// - Parameters:
    ///   - fetch: asks the platform for a user missing from the cache (id, guild id), or nil to never ask.
    ///   - onWritten: the users written with changed fields or new to the file, after their transaction committed.
    public init(
        store: UserStore, configuration: Configuration, shard: Int, logger: Logger,
        fetch: (@Sendable (String, String?) async throws -> CachedUser?)? = nil,
        onWritten: @escaping @Sendable (Written) -> Void = { _ in }
    ) {
        self.store = store
        self.configuration = configuration
        self.shard = shard
        self.fetch = fetch
        self.onWritten = onWritten
        self.logger = logger
        state = Mutex(State(lru: LRUCache(capacity: configuration.lruSize, ttl: configuration.ttl)))
    }

    /// Lookups and LRU hits so far, rows written and write transactions.
    public var counters: (lookups: Int, hits: Int, writes: Int, batches: Int) {
        state.withLock { ($0.lookups, $0.hits, $0.writes, $0.batches) }
    }

    /// The user with `id`: from memory, else the shared file, else (if configured) the platform.
    public func get(_ id: String, guildID: String? = nil) async -> CachedUser? {
        let now = MonotonicInstant.now()
        if let hit = state.withLock({ state -> CachedUser? in
            state.lookups += 1
            let hit = state.lru.get(id, now: now) ?? state.pending[id]
            if hit != nil { state.hits += 1 }
            return hit
        }) {
            return hit
        }
        do {
            if let stored = try store.user(id) {
                state.withLock { $0.lru.set(id, stored, now: now) }
                return stored
            }
        } catch {
            logger.warning("user cache read failed", metadata: ["user.id": "\(id)", "error": "\(error)"])
        }
        guard let fetch else { return nil }
        do {
            guard let fetched = try await fetch(id, guildID) else { return nil }
            remember([fetched], now: .now())
            return fetched
        } catch {
            logger.warning("user lookup at the platform failed", metadata: ["user.id": "\(id)", "error": "\(error)"])
            return nil
        }
    }

    /// Users seen in an event: kept in memory, and queued for the shared file when they are new or changed.
    public func observe(id: String, username: String?, avatar: String?, bot: Bool) {
        guard let username else { return }
        let now = MonotonicInstant.now()
        let user = CachedUser(id: id, username: username, avatar: avatar, bot: bot, updatedAt: Date().timeIntervalSince1970, shard: shard)
        remember([user], now: now)
    }

    func remember(_ users: [CachedUser], now: MonotonicInstant) {
        let wake = state.withLock { state -> Bool in
            let wasEmpty = state.pending.isEmpty
            for user in users {
                if let known = state.lru.peek(user.id), !known.differs(from: user) {
                    // Unchanged: refresh its time in memory, no write.
                    state.lru.set(user.id, known, now: now)
                    continue
                }
                state.lru.set(user.id, user, now: now)
                guard state.pending.count < maxPending || state.pending[user.id] != nil else { continue }
                state.pending[user.id] = user
                if state.firstPendingAt == nil { state.firstPendingAt = now }
            }
            // The writer sleeps until the first pending user is due, or until a batch is full.
            return (wasEmpty && !state.pending.isEmpty) || state.pending.count >= configuration.flushSize
        }
        if wake { wakeup.poke() }
    }

    /// Another worker wrote these users: forget them here so the next lookup reads the new ones.
    public func invalidate(_ ids: [String]) {
        state.withLock { state in
            for id in ids where state.pending[id] == nil { state.lru.remove(id) }
        }
    }

    /// Writes batches until cancelled; what is pending then is left for a last `flush()` by the owner (a
    /// cancelled task cannot write).
    public func run() async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.firstPendingAt.map { $0 + configuration.flushInterval } }
            await wakeup.wait(until: deadline)
            if Task.isCancelled { return }
            let due = state.withLock { state -> Bool in
                guard let first = state.firstPendingAt else { return false }
                let waited = MonotonicInstant.now() - first >= configuration.flushInterval
                return waited || (state.pending.count >= configuration.flushSize && state.failures == 0)
            }
            if due { await flush() }
        }
    }

    /// Writes everything pending in one transaction now (never surfaced to a handler). A failed write (a full disk,
    /// a lock held elsewhere) puts the batch back, behind anything observed since, for the next try: it waits
    /// longer after each failure in a row (up to 5 s), and the failure is logged at most every ten seconds.
    public func flush() async {
        let batch = state.withLock { state -> [CachedUser] in
            defer {
                state.pending = [:]
                state.firstPendingAt = nil
            }
            return Array(state.pending.values)
        }
        guard !batch.isEmpty else { return }
        do {
            let result = try await store.upsert(batch, outbox: configuration.outbox)
            state.withLock { state in
                state.writes += batch.count
                state.batches += 1
                state.failures = 0
                // A later observation won in the file: this worker's copy is the stale one.
                for id in result.superseded where state.pending[id] == nil { state.lru.remove(id) }
            }
            writeFailures.reset()
            if !result.changed.isEmpty || !result.added.isEmpty { onWritten(Written(changed: result.changed, added: result.added)) }
        } catch {
            let failures = state.withLock { state -> Int in
                for user in batch where state.pending[user.id] == nil && state.pending.count < maxPending { state.pending[user.id] = user }
                state.failures += 1
                // The writer's next try is due `flushInterval` after this mark: push it back by the backoff.
                let backoff = Duration.backoff(configuration.flushInterval * 2, attempts: state.failures, cap: .seconds(5))
                state.firstPendingAt = .now() + backoff - configuration.flushInterval
                return state.failures
            }
            writeFailures.log(logger, .error, "cannot write the user cache; keeping the users and trying again", metadata: ["users": "\(batch.count)", "failures": "\(failures)", "error": "\(error)"])
        }
    }
}
