import ClusterCore
import ClusterPostgres
import Foundation
import Logging
import Synchronization
import UserCache

/// This host's user cache in a cluster of hosts (`store.postgres`). Each host keeps its own SQLite file; a user
/// one host's workers wrote with changed fields, or new to its file, may be held stale by another host (in its
/// file, and in its workers' memory).
///
/// - Publishing: the workers write such users marked (the file's outbox); the feed publishes what is marked through
///   the store and unmarks it. A supervisor killed before it published leaves the marks for the next one, which
///   publishes them when it starts.
/// - Reading: the feed reads the other hosts' publications it has not read yet, in the store's order (see
///   `PostgresAuthority.userChanges`), whenever the listening connection wakes it (once it listens, at every
///   notification, every `keepalive`), applies them to this host's file with the cache's own rule (the newer
///   observation wins: applying one twice changes nothing, and no two hosts ping-pong a user), and tells this
///   host's workers to drop the users whose fields changed. Its place moves past a publication only once it is
///   applied: a write that fails (a full disk) is tried again, never skipped.
final class UserChangeFeed: Sendable {
    struct State {
        /// The last publication of another host applied here.
        var cursor = PostgresAuthority.UserChangeCursor.start
        /// Users published, users applied here from elsewhere, and publications or users left out (unreadable, or
        /// too long to publish).
        var published = 0
        var applied = 0
        var skipped = 0
    }

    /// The most users one publishing transaction carries.
    static let maxPerPublish = 2_000
    /// At most one publishing round per this interval (a round publishes the whole outbox, `maxPerPublish` users a
    /// transaction): a host whose workers see many new users at once (a start, a busy hour) publishes them in a few
    /// transactions, not one per worker's batch; a lone change goes at once.
    static let minInterval: Duration = .milliseconds(50)
    /// How long the store keeps publications (a host away longer misses what was pruned meanwhile).
    static let retention: Duration = .seconds(600)
    /// How often the listening connection reads the database's clock (proving it still works) and wakes the reader.
    static let keepalive: Duration = .seconds(5)
    /// Publications read per query.
    static let pageSize = 200
    /// A publication that says a user was seen more than this far in the future is not applied: a host whose
    /// clock runs far ahead would otherwise pin its names against every later observation.
    static let maxFutureSkew = 3_600.0

    let authority: PostgresAuthority
    let host: Int
    let store: UserStore
    let logger: Logger
    let state = Mutex(State())
    let publishWakeup = Wakeup()
    let readWakeup = Wakeup()
    let publishFailures = RateLimitedLog()
    let readFailures = RateLimitedLog()
    let listenFailures = RateLimitedLog()
    let skips = RateLimitedLog()

    init(authority: PostgresAuthority, host: Int, store: UserStore, logger: Logger) {
        self.authority = authority
        self.host = host
        self.store = store
        self.logger = logger
    }

    /// A worker of this host wrote users into the outbox: they are published soon.
    func written() {
        publishWakeup.poke()
    }

    /// What the feed did so far (for status).
    var counters: (published: Int, applied: Int, skipped: Int) {
        state.withLock { ($0.published, $0.applied, $0.skipped) }
    }

    /// Publishes this host's outbox and applies the other hosts' publications until cancelled; `invalidate` tells
    /// this host's workers to drop users whose fields a publication changed in the file.
    func run(invalidate: @escaping @Sendable ([String]) -> Void) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runPublishing() }
            group.addTask { await self.runListening() }
            group.addTask { await self.runReading(invalidate: invalidate) }
        }
    }

    // MARK: publishing

    func runPublishing() async {
        // At start: whatever the outbox holds (an earlier run of this host may have left some).
        var due: MonotonicInstant? = .now()
        var lastPublish: MonotonicInstant?
        var lastPrune: MonotonicInstant?
        var failures = 0
        while !Task.isCancelled {
            // Idle, the outbox is looked at every `keepalive` anyway (a worker's word may have been lost).
            await publishWakeup.wait(until: due ?? .now() + Self.keepalive)
            if Task.isCancelled { return }
            let now = MonotonicInstant.now()
            if let due, now < due { continue }
            if let last = lastPublish, now - last < Self.minInterval {
                due = last + Self.minInterval
                continue
            }
            due = nil
            lastPublish = now
            do {
                try await publishOutbox()
                failures = 0
                publishFailures.reset()
            } catch {
                failures += 1
                due = now + .backoff(.milliseconds(200), attempts: failures, cap: .seconds(5))
                publishFailures.log(logger, .warning, "cannot publish changed users to the other hosts; they stay in this host's outbox and go later", metadata: [
                    "failures": "\(failures)", "error": "\(String(describing: error).prefix(300))",
                ])
            }
            if lastPrune.map({ now - $0 >= .seconds(60) }) ?? true {
                lastPrune = now
                do {
                    // In batches: after a long outage there may be many.
                    while try await authority.pruneUserChanges(olderThan: Self.retention) == PostgresAuthority.pruneBatch {}
                } catch {
                    publishFailures.log(logger, .warning, "cannot forget old user publications", metadata: ["error": "\(String(describing: error).prefix(300))"])
                }
            }
        }
    }

    /// Publishes the outbox, a transaction per `maxPerPublish` users, until it is empty.
    func publishOutbox() async throws {
        while true {
            let batch = try await store.unpublished(limit: Self.maxPerPublish)
            guard !batch.isEmpty else { return }
            let (payloads, tooLong) = Self.payloads(batch, limit: PostgresAuthority.maxUserChangeBytes)
            try await authority.publishUserChanges(payloads, host: host)
            // Those too long to publish are unmarked too: they never could go.
            try await store.markPublished(batch)
            state.withLock { state in
                state.published += batch.count - tooLong
                state.skipped += tooLong
            }
            if tooLong > 0 {
                skips.log(logger, .warning, "users too long to publish to the other hosts (a name or avatar no platform gives): left out", metadata: ["users": "\(tooLong)"])
            }
            guard batch.count == Self.maxPerPublish else { return }
        }
    }

    /// `users` as publications of at most `limit` bytes each (JSON arrays of users), and how many were left out:
    /// a user alone over the limit.
    static func payloads(_ users: [CachedUser], limit: Int) -> (payloads: [String], tooLong: Int) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var payloads: [String] = []
        var current: [String] = []
        var bytes = 2
        var tooLong = 0
        for user in users {
            guard let data = try? encoder.encode(user), let json = String(data: data, encoding: .utf8), json.utf8.count + 2 <= limit else {
                tooLong += 1
                continue
            }
            if bytes + json.utf8.count + (current.isEmpty ? 0 : 1) > limit {
                payloads.append("[" + current.joined(separator: ",") + "]")
                current = []
                bytes = 2
            }
            bytes += json.utf8.count + (current.isEmpty ? 0 : 1)
            current.append(json)
        }
        if !current.isEmpty { payloads.append("[" + current.joined(separator: ",") + "]") }
        return (payloads, tooLong)
    }

    /// The users of a publication, or nil when it is not one (too long, not JSON, not users).
    static func users(of payload: String) -> [CachedUser]? {
        guard payload.utf8.count <= PostgresAuthority.maxUserChangeBytes else { return nil }
        return try? JSONDecoder().decode([CachedUser].self, from: Data(payload.utf8))
    }

    // MARK: reading

    /// Keeps a connection listening; every wake of it wakes the reader.
    func runListening() async {
        var attempt = 0
        while !Task.isCancelled {
            let woke = Atomic<Bool>(false)
            do {
                try await authority.listenUserChanges(keepalive: Self.keepalive) { [readWakeup] in
                    woke.store(true, ordering: .relaxed)
                    readWakeup.poke()
                }
            } catch {
                if Task.isCancelled { return }
                attempt = woke.load(ordering: .relaxed) ? 1 : attempt + 1
                listenFailures.log(logger, .warning, "cannot listen for users changed on the other hosts; trying again", metadata: [
                    "error": "\(String(describing: error).prefix(300))",
                ])
                try? await Task.sleep(for: .backoff(.milliseconds(200), attempts: attempt, cap: .seconds(5)))
            }
        }
    }

    /// Reads whenever woken; again moments later while committed publications are held back behind a running
    /// transaction (10 ms, doubling up to a second); a failed read is tried again after a backoff.
    func runReading(invalidate: @escaping @Sendable ([String]) -> Void) async {
        var failures = 0
        var heldBack = 0
        while !Task.isCancelled {
            // Idle, it reads every `keepalive` anyway (the listening connection may be down).
            let again: Duration = failures > 0 ? .backoff(.milliseconds(200), attempts: failures, cap: .seconds(5))
                : heldBack > 0 ? .backoff(.milliseconds(10), attempts: heldBack, cap: .seconds(1)) : Self.keepalive
            await readWakeup.wait(until: .now() + again)
            if Task.isCancelled { return }
            do {
                heldBack = try await readAll(invalidate: invalidate) ? heldBack + 1 : 0
                failures = 0
                readFailures.reset()
            } catch {
                failures += 1
                readFailures.log(logger, .warning, "cannot read or apply the users changed on the other hosts; trying again", metadata: [
                    "failures": "\(failures)", "error": "\(String(describing: error).prefix(300))",
                ])
            }
        }
    }

    /// Applies every publication of the other hosts after this host's place, page by page; whether some were
    /// held back.
    func readAll(invalidate: @escaping @Sendable ([String]) -> Void) async throws -> Bool {
        while true {
            let cursor = state.withLock { $0.cursor }
            let page = try await authority.userChanges(after: cursor, host: host, limit: Self.pageSize)
            if cursor.transaction >= page.horizon {
                // A place no transaction has reached: the database is another one (restored, moved).
                logger.warning("the store's transaction ids are behind this host's place in the user publications (a database restored or moved?): reading them from the start")
                state.withLock { $0.cursor = .start }
                continue
            }
            if cursor.transaction < page.pruned {
                // Publications this host had not read were forgotten (kept 10 minutes).
                if cursor != .start {
                    state.withLock { $0.skipped += 1 }
                    logger.warning("publications of changed users were forgotten before this host read them: users changed then may be served stale here until seen again")
                }
                state.withLock { $0.cursor = max($0.cursor, .init(transaction: page.pruned, row: 0)) }
                continue
            }
            for change in page.changes {
                if !change.own { try await apply(change.payload, invalidate: invalidate) }
                state.withLock { $0.cursor = change.cursor }
            }
            guard page.changes.count == Self.pageSize else { return page.heldBack }
        }
    }

    /// Applies another host's publication to this host's file; the workers drop the users whose fields changed.
    /// What is not a publication is left out (logged); a write that fails throws, and is tried again.
    func apply(_ payload: String?, invalidate: @Sendable ([String]) -> Void) async throws {
        guard let payload, let users = Self.users(of: payload) else {
            state.withLock { $0.skipped += 1 }
            skips.log(logger, .warning, "a publication of changed users from another host is not readable; left out", metadata: ["bytes": "\(payload?.utf8.count ?? -1)"])
            return
        }
        let latest = Date().timeIntervalSince1970 + Self.maxFutureSkew
        let valid = users.filter { !$0.id.isEmpty && $0.updatedAt.isFinite && $0.updatedAt <= latest }
        if valid.count < users.count {
            state.withLock { $0.skipped += users.count - valid.count }
            skips.log(logger, .warning, "users from another host without an id or seen too far in the future (its clock?): left out", metadata: ["users": "\(users.count - valid.count)"])
        }
        guard !valid.isEmpty else { return }
        let result = try await store.upsert(valid)
        state.withLock { $0.applied += valid.count }
        if !result.changed.isEmpty { invalidate(result.changed) }
        // This file saw those users later, with other fields: the host that published them must learn it.
        if !result.superseded.isEmpty {
            try await store.markUnpublished(result.superseded)
            publishWakeup.poke()
        }
    }
}
