import ClusterCore
import ClusterPostgres
import Logging
import RateBudget
import Synchronization

/// This host's part of a cluster that spans hosts (`store.postgres`): lease rounds against the database every
/// `renewInterval`, and a fence that kills a shard's worker when its lease would otherwise outlive this host's
/// right to it. The decisions are `LeaseKeeper`'s; this is the I/O around it.
///
/// Both the rounds and the fence hand the workers' state machine the whole set of leases held, with the keeper's
/// version: whichever of the two reports last, the machine applies the newest set only, and reconciles every slot
/// with it (a slot running without a current lease is fenced).
///
/// A rescale across hosts runs two layouts at once, so there is one keeper per layout (by shard count), and each
/// round runs one transaction per keeper: the serving layout's, a rescale's incoming one (whose ready leases the
/// round reports, and which the store makes the serving one when every one of them is ready), and old ones that
/// drain and release their leases as their workers stop. Which keeper plays which part follows the store's
/// layout as each round shows it, and so does the supervisor (`layoutSeen`).
final class LeaseService: Sendable {
    /// A session to store, under the token of the lease it was committed on.
    struct PendingSession {
        var token: Int64
        var id: String
        var seq: Int
    }

    struct State {
        /// One keeper per layout, by shard count: the serving one, a rescale's incoming one, and retiring ones.
        var keepers: [Int: LeaseKeeper]
        /// The cluster's layout as the store last showed it (this host's configured count until it joins).
        var layout: PostgresAuthority.Layout
        /// Sessions to write at the next round, by shard (an empty id forgets the stored one).
        var sessions: [ShardID: PendingSession] = [:]
        /// Routes a 429 paused here, with their ends: written at the next round, so that every host pauses them.
        var pauses: [String: MonotonicInstant] = [:]
        /// Whether the last round failed (logged once until one succeeds).
        var failing = false
        /// The host is stopping: keepers made from now on take nothing either.
        var stopping = false
        /// When the last round ran and what the store showed of the serving layout (for status).
        var lastRound: PostgresAuthority.Round?
        var lastRoundAt: MonotonicInstant?

        /// Drops the sessions of leases no longer held under the token they were committed on.
        mutating func dropStaleSessions() {
            sessions = sessions.filter { keepers[$0.key.total]?.held[$0.key.id]?.token == $0.value.token }
        }

        /// Brings the keepers in line with the store's `layout`: a keeper for the serving count and for a rescale's
        /// target (made `joined`), every other one retiring, and a retiring one that holds nothing dropped.
        /// Returns the counts of the keepers dropped (their layouts' rows can go) and whether one was made.
        mutating func follow(_ layout: PostgresAuthority.Layout, configuration: LeaseKeeper.Configuration, host: Int) -> (dropped: [Int], made: Bool) {
            self.layout = layout
            let wanted = Set([layout.shards] + (layout.next.map { [$0] } ?? []))
            var made = false
            for count in wanted.sorted() where keepers[count] == nil || (keepers[count]!.retiring && keepers[count]!.held.isEmpty) {
                var keeper = LeaseKeeper(configuration: configuration, host: host, shards: count, joined: true)
                if stopping { keeper.stop() }
                keepers[count] = keeper
                made = true
            }
            for count in keepers.keys where !wanted.contains(count) && !keepers[count]!.retiring {
                keepers[count]!.retire()
            }
            let dropped = keepers.filter { $0.value.retiring && $0.value.held.isEmpty }.map(\.key)
            for count in dropped { keepers[count] = nil }
            return (dropped, made)
        }

        /// The share of the cluster's REST budget this host spends: that of the serving layout's leases it holds.
        var share: Double {
            Double(keepers[layout.shards]?.held.count ?? 0) / Double(max(1, layout.shards))
        }
    }

    /// What the workers of the layout of `total` shards are to run: the keeper's version and its leases.
    typealias Apply = @Sendable (_ total: Int, _ version: UInt64, _ held: [Int: LeaseGrant]) -> Void
    /// The routes paused by a 429 on any host, with the time left of each (this host's own among them).
    typealias Paused = @Sendable (_ pauses: [String: Duration]) -> Void

    /// What a round needs to know of this host's workers, by layout (shard count) and shard.
    struct Workers: Sendable {
        /// The shards of the layout that run nothing here now (their leases can be released).
        var stopped: @Sendable (_ total: Int) -> Set<Int>
        /// The shards of the layout whose workers are ready (reported for a rescale's incoming layout).
        var ready: @Sendable (_ total: Int) -> Set<Int>
        /// The shards of the layout whose workers passed the fence before a rescale's switch (reported for the
        /// serving layout while a rescale runs).
        var fenced: @Sendable (_ total: Int) -> Set<Int>
        /// The last committed session of a shard of the layout.
        var session: @Sendable (_ total: Int, _ shard: Int) -> (id: String, seq: Int)?
        /// Whether a layout of that many shards runs here (serving or incoming), so that a lease taken starts a worker.
        var runs: @Sendable (_ total: Int) -> Bool
    }

    let authority: PostgresAuthority
    let config: PostgresStoreConfig
    let host: Int
    let address: String
    let state: Mutex<State>
    let fenceWakeup = Wakeup()
    /// Pokes the next round to run now (a new session to store: until it is, a takeover could not resume it).
    let roundWakeup = Wakeup()
    let logger: Logger
    let failures = RateLimitedLog()

    init(authority: PostgresAuthority, config: PostgresStoreConfig, host: Int, address: String, shards: Int, logger: Logger) {
        self.authority = authority
        self.config = config
        self.host = host
        self.address = address
        self.logger = logger
        state = Mutex(State(
            keepers: [shards: LeaseKeeper(configuration: Self.configuration(config), host: host, shards: shards)],
            layout: .init(shards: shards, next: nil)
        ))
    }

    static func configuration(_ config: PostgresStoreConfig) -> LeaseKeeper.Configuration {
        .init(ttl: config.leaseTTL, renewInterval: config.renewInterval, fenceMargin: config.fenceMargin)
    }

    /// The host joined the cluster, whose layout is `layout` (before any round: the keeper of this host's configured
    /// count is replaced when the cluster runs another).
    func joined(_ layout: PostgresAuthority.Layout) {
        state.withLock { state in
            if state.keepers[layout.shards] == nil {
                // Nothing is held before the first round: the keeper of the configured count simply goes.
                state.keepers = [layout.shards: LeaseKeeper(configuration: Self.configuration(config), host: host, shards: layout.shards)]
            }
            _ = state.follow(layout, configuration: Self.configuration(config), host: host)
        }
    }

    /// The token of this host's lease of `shard` in the layout of `total` shards, nil when it holds none.
    func token(total: Int, shard: Int) -> Int64? {
        state.withLock { $0.keepers[total]?.held[shard]?.token }
    }

    /// A worker's committed session moved (or was forgotten): written at the next round, under the token of the
    /// lease held now (a session of a lease lost meanwhile is never written under a newer one).
    func sessionMoved(shard: ShardID, id: String, seq: Int) {
        let isNew = state.withLock { state -> Bool in
            guard let lease = state.keepers[shard.total]?.held[shard.id] else { return false }
            let known = state.sessions[shard].map(\.id) ?? lease.sessionID
            state.sessions[shard] = PendingSession(token: lease.token, id: id, seq: seq)
            return known != id
        }
        if isNew { roundWakeup.poke() }
    }

    /// A 429 here paused `route` for `pause`: the next round (now) tells every host. At most as many routes as a
    /// budget keeps are waiting (a peer cannot grow this).
    func rateLimited(route: String, for pause: Duration) {
        let route = String(route.prefix(BudgetAuthority.maxRouteLength))
        let until = MonotonicInstant.now() + pause
        let news = state.withLock { state -> Bool in
            guard state.pauses[route] != nil || state.pauses.count < BudgetAuthority.maxRoutes else { return false }
            let known = state.pauses[route]
            state.pauses[route] = max(known ?? until, until)
            // A storm of 429s on one route pokes a round once, not once per 429.
            return known.map { until > $0 + .seconds(1) } ?? true
        }
        if news { roundWakeup.poke() }
    }

    /// The host begins to stop: rounds keep renewing (the workers drain on their leases) but take and hand over
    /// nothing.
    func stop() {
        state.withLock { state in
            state.stopping = true
            for count in state.keepers.keys { state.keepers[count]!.stop() }
        }
    }

    /// Runs rounds until cancelled. `workers` tells what runs here; `beforeRelease` runs before a round releases
    /// leases (the handled events recorded first); `layoutSeen` gets the store's layout after each round, before
    /// `apply` gives the workers of each layout the leases held.
    func run(
        workers: Workers,
        beforeRelease: @escaping @Sendable () async -> Void,
        paused: @escaping Paused,
        layoutSeen: @escaping @Sendable (PostgresAuthority.Layout) -> Void,
        apply: @escaping Apply
    ) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runFence(apply: apply) }
            while !Task.isCancelled {
                let started = MonotonicInstant.now()
                await round(workers: workers, beforeRelease: beforeRelease, paused: paused, layoutSeen: layoutSeen, apply: apply)
                await roundWakeup.wait(until: started + config.renewInterval)
            }
            group.cancelAll()
        }
    }

    /// One round: for each layout, in one transaction each (the serving one first), renew, write sessions (and
    /// pauses, with the first), release handed-over or retired shards, report a rescale's ready shards, take free
    /// ones placed here; then the keepers follow the store's layout, and the pauses of every host apply here.
    func round(
        workers: Workers, beforeRelease: @Sendable () async -> Void, paused: Paused,
        layoutSeen: @Sendable (PostgresAuthority.Layout) -> Void, apply: Apply
    ) async {
        let started = MonotonicInstant.now()
        let (keepers, layout, pending) = state.withLock { ($0.keepers, $0.layout, $0.sessions) }
        var pendingPauses: [String: MonotonicInstant] = [:]
        var answers: [(total: Int, writes: [PostgresAuthority.SessionWrite], round: PostgresAuthority.Round)] = []
        var failure: (any Error)?
        // The handled events are waited for once a round, whichever keepers release.
        var recorded = false
        // The serving layout first (it carries the pauses), then a rescale's target, then the retiring ones. The
        // first that fails ends the round: a store that does not answer would otherwise cost each keeper its own
        // deadline, and the round that must come before the fence would come too late.
        let rank = { (total: Int) in total == layout.shards ? 0 : total == layout.next ? 1 : 2 }
        for total in keepers.keys.sorted(by: { (rank($0), $0) < (rank($1), $1) }) {
            let keeper = keepers[total]!
            let writes = pending.compactMap { shard, session in
                shard.total == total && keeper.held[shard.id]?.token == session.token
                    ? PostgresAuthority.SessionWrite(shard: shard.id, token: session.token, id: session.id, seq: session.seq) : nil
            }
            let releases = keeper.releasable(stopped: workers.stopped(total)).map {
                Self.release($0.key, token: $0.value, pending: pending[ShardID($0.key, of: total)], session: workers.session(total, $0.key))
            }
            if !releases.isEmpty && !recorded {
                await beforeRelease()
                recorded = true
            }
            // The first transaction carries this host's 429 pauses, as time left now (the release may have waited).
            var pauses: [PostgresAuthority.RoutePause] = []
            if answers.isEmpty {
                let pausesAt = MonotonicInstant.now()
                pendingPauses = state.withLock { state in
                    state.pauses = state.pauses.filter { $0.value > pausesAt }
                    return state.pauses
                }
                pauses = pendingPauses.map { PostgresAuthority.RoutePause(route: $0.key, seconds: ($0.value - pausesAt).seconds) }
            }
            do {
                let round = try await authority.round(
                    host: host, address: address, shards: total, ttl: config.leaseTTL, renew: keeper.renewals,
                    release: releases, sessions: writes, pauses: pauses,
                    ready: total == layout.next ? workers.ready(total) : nil,
                    fenced: total == layout.shards && layout.next != nil ? workers.fenced(total) : nil,
                    // Nothing is taken for a layout this host's workers do not run yet (its core is still busy with
                    // another change): a lease held with no worker would keep the shard dark.
                    wanted: { [runs = workers.runs(total)] live, holders in runs ? keeper.wanted(in: .init(liveHosts: live, holders: holders)) : [] }
                )
                answers.append((total, writes, round))
            } catch {
                failure = error
                break
            }
        }
        let seen = answers.last?.round.layout
        let (changes, applied, wasFailing, dropped, made) = state.withLock { state in
            var changes: [LeaseKeeper.Change] = []
            var lost: Set<Int> = []
            for (total, writes, round) in answers where state.keepers[total] != nil {
                for write in writes {
                    let shard = ShardID(write.shard, of: total)
                    if let now = state.sessions[shard], now.token == write.token, now.id == write.id, now.seq == write.seq {
                        state.sessions[shard] = nil
                    }
                }
                let keeperChanges = state.keepers[total]!.roundSucceeded(
                    startedAt: started, renewed: round.renewed, acquired: round.acquired.mapValues(\.token),
                    sessions: round.acquired.compactMapValues(\.session), released: round.released,
                    view: .init(liveHosts: Set(round.hosts.keys), holders: round.holders)
                )
                if keeperChanges.contains(where: { if case .lost = $0 { true } else { false } }) { lost.insert(total) }
                changes += keeperChanges
                if total == layout.shards {
                    state.lastRound = round
                    state.lastRoundAt = started
                }
            }
            if !answers.isEmpty, failure == nil {
                for (route, until) in pendingPauses where state.pauses[route] == until { state.pauses[route] = nil }
            }
            var followed: (dropped: [Int], made: Bool) = ([], false)
            if let seen { followed = state.follow(seen, configuration: Self.configuration(config), host: host) }
            state.dropStaleSessions()
            // Every keeper's leases go to its layout's workers; a retiring keeper's only when it lost some (its
            // releases need nothing of the workers, which have stopped).
            let applied = state.keepers.filter { !$0.value.retiring || lost.contains($0.key) }.map { ($0.key, $0.value.version, $0.value.grants) }
            defer { state.failing = failure != nil }
            return (changes, applied, state.failing, followed.dropped, followed.made)
        }
        if let failure {
            failures.log(logger, .error, "cannot renew the shard leases; the workers of shards whose lease runs out are stopped before it does", metadata: [
                "store": "\(authority.displayURL)", "error": "\(String(describing: failure).prefix(300))",
            ])
        } else if wasFailing {
            failures.reset()
            logger.info("the store answers again: leases renewed", metadata: ["store": "\(authority.displayURL)"])
        }
        guard !answers.isEmpty else { return }
        log(changes)
        fenceWakeup.poke()
        if let seen { layoutSeen(seen) }
        for (total, version, held) in applied { apply(total, version, held) }
        if let pauses = answers.first?.round.pauses, !pauses.isEmpty { paused(pauses.mapValues { Duration.seconds($0) }) }
        for total in dropped {
            do {
                try await authority.forgetLayout(shards: total)
            } catch {
                logger.warning("cannot forget the leases of the old layout (the next host to finish with it does)", metadata: ["shards": "\(total)", "error": "\(String(describing: error).prefix(300))"])
            }
        }
        // A rescale's new layout: its keeper takes its shards at once, not a round later.
        if made { roundWakeup.poke() }
    }

    /// Stops the workers of leases that run out unrenewed, at the moment they do (see `LeaseKeeper`).
    func runFence(apply: Apply) async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.keepers.values.compactMap(\.nextExpiry).min() }
            await fenceWakeup.wait(until: deadline)
            if Task.isCancelled { return }
            let expired = state.withLock { state in
                var expired: [(total: Int, changes: [LeaseKeeper.Change], version: UInt64, held: [Int: LeaseGrant])] = []
                for total in state.keepers.keys.sorted() {
                    let changes = state.keepers[total]!.expire(now: .now())
                    if !changes.isEmpty { expired.append((total, changes, state.keepers[total]!.version, state.keepers[total]!.grants)) }
                }
                state.dropStaleSessions()
                return expired
            }
            for (total, changes, version, held) in expired {
                log(changes)
                apply(total, version, held)
            }
        }
    }

    func log(_ changes: [LeaseKeeper.Change]) {
        for case .lost(let shard, let reason) in changes {
            logger.warning("shard \(shard): \(reason); its worker is stopped now")
        }
    }

    /// At shutdown, after every worker stopped: every lease of every layout released with its last session, and the
    /// host's heartbeat removed, so the other hosts take the shards over at once. Best effort: what fails here
    /// expires.
    func releaseAll(session: @Sendable (_ total: Int, _ shard: Int) -> (id: String, seq: Int)?) async {
        let (keepers, pending) = state.withLock { ($0.keepers, $0.sessions) }
        var released = 0
        do {
            for (total, keeper) in keepers {
                let releases = keeper.held.map {
                    Self.release($0.key, token: $0.value.token, pending: pending[ShardID($0.key, of: total)], session: session(total, $0.key))
                }
                _ = try await authority.round(
                    host: host, address: address, shards: total, ttl: config.leaseTTL, renew: [:], release: releases, sessions: [],
                    wanted: { _, _ in [] }
                )
                released += releases.count
            }
            try await authority.leave(host: host)
            state.withLock { state in
                for total in state.keepers.keys { state.keepers[total]!.dropAll() }
            }
            logger.info("leases released; this host left the cluster", metadata: ["released": "\(released)"])
        } catch {
            logger.error("cannot release the leases at stop: the other hosts take the shards over when they expire", metadata: ["error": "\(String(describing: error).prefix(300))"])
        }
    }

    /// The release of `shard` with its last session: the state machine's (the worker's last commit), else the one
    /// waiting to be written, else none.
    static func release(_ shard: Int, token: Int64, pending: PendingSession?, session: (id: String, seq: Int)?) -> PostgresAuthority.SessionWrite {
        let session = session ?? pending.map { ($0.id, $0.seq) } ?? ("", 0)
        return PostgresAuthority.SessionWrite(shard: shard, token: token, id: session.0, seq: session.1)
    }

    /// What the store showed of the serving layout at the last successful round, and when it began (for status).
    var lastRound: (round: PostgresAuthority.Round?, at: MonotonicInstant?) {
        state.withLock { ($0.lastRound, $0.lastRoundAt) }
    }

    /// The share of the cluster's REST budget this host spends now (see `State.share`).
    var share: Double { state.withLock { $0.share } }
}
