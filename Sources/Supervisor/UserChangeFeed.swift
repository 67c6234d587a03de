import ClusterCore
import ClusterPostgres
import ClusterProtocol
import Foundation
import Logging
import Synchronization
import UserCache

/// This host's user cache in a cluster of hosts (`store.postgres`). Each host keeps its own SQLite file; a user
/// one host's workers wrote with changed fields, or new to its file, may be held stale by another host (in its
/// file, and in its workers' memory). The feed publishes those users through the store, and applies the other
/// hosts' to this host's file with the cache's own rule (the newer observation wins), then tells this host's
/// workers to drop the ones whose fields changed.
///
/// What the workers write new or changed stays marked in the host's file until published (the outbox): a
/// supervisor killed before it published is followed by one that publishes it at start.
///
/// Publications travel as a NOTIFY and as a row kept for `retention`: a host that was not listening (a restart,
/// a cut link, the database restarted) reads the rows from where it last knew it had heard everything, less a
/// margin. Applying a publication again does nothing, so reading some twice costs a little and loses nothing.
final class UserChangeFeed: Sendable {
    struct State {
        /// Users to publish, by id (a user written twice before a publication goes once, its latest observation).
        var pending: [String: CachedUser] = [:]
        /// When a failed publication is tried again.
        var retryAt: MonotonicInstant?
        var failures = 0
        /// The database's time before which every publication was heard (nil before the first subscription).
        var covered: Date?
        /// Users published, applied here from elsewhere, and left out (the queue was full).
        var published = 0
        var applied = 0
        var dropped = 0
    }

    /// The most users waiting to be published (while the store is away); beyond, new ones are left out and counted.
    static let maxPending = 50_000
    /// The most users one publishing transaction carries.
    static let maxPerPublish = 2_000
    /// At most one publishing transaction per this interval: a host whose workers see many new users at once (a
    /// start, a busy hour) publishes them in a few transactions, not one per worker's batch; a lone change goes at
    /// once.
    static let minInterval: Duration = .milliseconds(50)
    /// How long the store keeps publications for hosts that were not listening.
    static let retention: Duration = .seconds(600)
    /// How often the listening connection reads the database's clock (which also proves it still works).
    static let keepalive: Duration = .seconds(5)
    /// Rows read per query when catching up.
    static let pageSize = 200
    /// A publication that says a user was seen more than this far in the future is not applied: a host whose
    /// clock runs far ahead would otherwise pin its names against every later observation.
    static let maxFutureSkew = 3_600.0

    let authority: PostgresAuthority
    let host: Int
    let store: UserStore
    /// How long after a publication's time its transaction may still commit (the store's calls end within their
    /// timeout): a catch-up reads from this far before the time it knows it heard everything.
    let margin: Duration
    let logger: Logger
    let state = Mutex(State())
    let wakeup = Wakeup()
    let publishFailures = RateLimitedLog()
    let listenFailures = RateLimitedLog()
    let applyFailures = RateLimitedLog()

    init(authority: PostgresAuthority, host: Int, store: UserStore, timeout: Duration, logger: Logger) {
        self.authority = authority
        self.host = host
        self.store = store
        margin = timeout * 2 + .seconds(1)
        self.logger = logger
    }

    /// Users a worker of this host wrote (changed or new to the file): published soon.
    func written(_ users: [CachedUser]) {
        guard !users.isEmpty else { return }
        let dropped = state.withLock { state -> Int in
            var dropped = 0
            for user in users {
                if let known = state.pending[user.id], known.updatedAt > user.updatedAt { continue }
                guard state.pending[user.id] != nil || state.pending.count < Self.maxPending else {
                    dropped += 1
                    continue
                }
                state.pending[user.id] = user
            }
            state.dropped += dropped
            return dropped
        }
        if dropped > 0 {
            publishFailures.log(logger, .warning, "too many changed users wait for the store: left out, other hosts may serve them stale until seen again", metadata: ["users": "\(dropped)"])
        }
        wakeup.poke()
    }

    /// What the feed did so far (for status).
    var counters: (published: Int, applied: Int, pending: Int, dropped: Int) {
        state.withLock { ($0.published, $0.applied, $0.pending.count, $0.dropped) }
    }

    /// Publishes this host's changes and applies the other hosts' until cancelled; `invalidate` tells this host's
    /// workers to drop users whose fields a publication changed in the file.
    func run(invalidate: @escaping @Sendable ([String]) -> Void) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runPublishing() }
            group.addTask { await self.runListening(invalidate: invalidate) }
        }
    }

    // MARK: publishing

    func runPublishing() async {
        // What this host's workers wrote and a previous supervisor did not publish (it was killed first).
        do {
            let left = try store.unpublished(limit: Self.maxPending)
            if !left.isEmpty {
                logger.info("publishing the users an earlier run of this host wrote and did not publish", metadata: ["users": "\(left.count)"])
                written(left)
            }
        } catch {
            logger.warning("cannot read the users left unpublished in this host's cache", metadata: ["error": "\(error)"])
        }
        var lastPrune: MonotonicInstant?
        var lastPublish: MonotonicInstant?
        while !Task.isCancelled {
            // Nothing pending: asleep until a worker writes. Pending: now, unless a publication went out less than
            // `minInterval` ago (or one failed): then what comes meanwhile goes in the same transaction.
            let due = state.withLock { state -> MonotonicInstant? in
                guard !state.pending.isEmpty else { return nil }
                return max(state.retryAt ?? .now(), (lastPublish ?? .now()) + (lastPublish == nil ? .zero : Self.minInterval))
            }
            let now = MonotonicInstant.now()
            guard let due, due <= now else {
                await wakeup.wait(until: due)
                continue
            }
            let batch = state.withLock { state -> [CachedUser] in
                let batch = Array(state.pending.values.prefix(Self.maxPerPublish))
                for user in batch { state.pending[user.id] = nil }
                return batch
            }
            lastPublish = now
            let prune = lastPrune.map { now - $0 >= .seconds(60) } ?? true
            do {
                let payloads = Self.payloads(batch, limit: authority.maxUserChangeBytes)
                try await authority.publishUserChanges(payloads, host: host, pruneOlderThan: prune ? Self.retention : nil)
                if prune { lastPrune = now }
                do {
                    try await store.markPublished(batch)
                } catch {
                    // Published again by the next run of this host: the others apply it once more, and no harm done.
                    applyFailures.log(logger, .warning, "cannot mark published users in this host's cache", metadata: ["error": "\(error)"])
                }
                state.withLock { state in
                    state.published += batch.count
                    state.failures = 0
                    state.retryAt = nil
                }
                publishFailures.reset()
            } catch {
                let failures = state.withLock { state -> Int in
                    // Back in the queue, unless a later observation of the same user came meanwhile.
                    for user in batch where state.pending[user.id] == nil {
                        guard state.pending.count < Self.maxPending else {
                            state.dropped += 1
                            continue
                        }
                        state.pending[user.id] = user
                    }
                    state.failures += 1
                    state.retryAt = .now() + min(.seconds(5), .milliseconds(100) * (1 << min(state.failures, 6)))
                    return state.failures
                }
                publishFailures.log(logger, .warning, "cannot publish changed users to the other hosts; keeping them and trying again", metadata: [
                    "users": "\(batch.count)", "failures": "\(failures)", "error": "\(String(describing: error).prefix(300))",
                ])
            }
        }
    }

    /// `users` as publications of at most `limit` bytes each: JSON arrays of users. A user alone over the limit
    /// (a name or avatar no platform gives) is left out.
    static func payloads(_ users: [CachedUser], limit: Int) -> [String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var payloads: [String] = []
        var current: [String] = []
        var bytes = 2
        for user in users {
            guard let data = try? encoder.encode(user), let json = String(data: data, encoding: .utf8), json.utf8.count + 2 <= limit else { continue }
            let added = json.utf8.count + (current.isEmpty ? 0 : 1)
            if bytes + added > limit {
                payloads.append("[" + current.joined(separator: ",") + "]")
                current = []
                bytes = 2
            }
            bytes += json.utf8.count + (current.isEmpty ? 0 : 1)
            current.append(json)
        }
        if !current.isEmpty { payloads.append("[" + current.joined(separator: ",") + "]") }
        return payloads
    }

    /// The users of a publication, or nil when it is not one (too long, not JSON, not users).
    static func users(of payload: String) -> [CachedUser]? {
        guard payload.utf8.count < 8_000 else { return nil }
        return try? JSONDecoder().decode([CachedUser].self, from: Data(payload.utf8))
    }

    // MARK: listening

    func runListening(invalidate: @escaping @Sendable ([String]) -> Void) async {
        var attempt = 0
        while !Task.isCancelled {
            let heard = Atomic<Bool>(false)
            do {
                try await authority.listenUserChanges(
                    host: host, keepalive: Self.keepalive,
                    subscribed: { now in
                        try await self.catchUp(now: now, invalidate: invalidate)
                        heard.store(true, ordering: .relaxed)
                    },
                    alive: { now in self.state.withLock { $0.covered = now - self.margin.seconds } },
                    receive: { payload in await self.apply(payload, invalidate: invalidate) }
                )
            } catch {
                if Task.isCancelled { return }
                attempt = heard.load(ordering: .relaxed) ? 1 : attempt + 1
                listenFailures.log(logger, .warning, "cannot listen for users changed on the other hosts; trying again", metadata: [
                    "error": "\(String(describing: error).prefix(300))",
                ])
                try? await Task.sleep(for: min(.seconds(5), .milliseconds(100) * (1 << min(attempt, 6))))
            }
        }
    }

    /// Reads what the other hosts published while this host was not listening: from where it knows it heard
    /// everything (or, the first time, everything kept), page by page.
    func catchUp(now: Date, invalidate: @escaping @Sendable ([String]) -> Void) async throws {
        let oldest = now - Self.retention.seconds
        let covered = state.withLock { $0.covered }
        if let covered, covered < oldest {
            logger.warning("this host heard nothing of the other hosts' changed users for longer than the store keeps them: users changed meanwhile may be served stale until seen again", metadata: [
                "unheard": "\(DurationFormat.human(.seconds(now.timeIntervalSince(covered))))",
            ])
        }
        var cursor = max(covered ?? oldest, oldest)
        while true {
            let page = try await authority.userChanges(from: cursor, host: host, limit: Self.pageSize)
            for change in page { await apply(change.payload, invalidate: invalidate) }
            // A full page reads on from its last row (that row again: a row may share its time with the next).
            guard page.count == Self.pageSize, let last = page.last?.at, last > cursor else { break }
            cursor = last
        }
        state.withLock { $0.covered = now - margin.seconds }
        listenFailures.reset()
    }

    /// Applies another host's publication to this host's file; the workers drop the users whose fields changed.
    func apply(_ payload: String, invalidate: @Sendable ([String]) -> Void) async {
        guard let users = Self.users(of: payload) else {
            applyFailures.log(logger, .warning, "a publication of changed users from another host is not readable; ignored", metadata: ["bytes": "\(payload.utf8.count)"])
            return
        }
        let latest = Date().timeIntervalSince1970 + Self.maxFutureSkew
        let valid = users.filter { !$0.id.isEmpty && $0.updatedAt.isFinite && $0.updatedAt <= latest }
        guard !valid.isEmpty else { return }
        do {
            let result = try await store.upsert(valid)
            state.withLock { $0.applied += valid.count }
            applyFailures.reset()
            if !result.changed.isEmpty { invalidate(result.changed) }
        } catch {
            applyFailures.log(logger, .error, "cannot write users changed on another host to this host's cache", metadata: [
                "users": "\(valid.count)", "error": "\(error)",
            ])
        }
    }
}
