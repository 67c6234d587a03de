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
final class LeaseService: Sendable {
    /// A session to store, under the token of the lease it was committed on.
    struct PendingSession {
        var token: Int64
        var id: String
        var seq: Int
    }

    struct State {
        var keeper: LeaseKeeper
        /// Sessions to write at the next round, by shard (an empty id forgets the stored one).
        var sessions: [Int: PendingSession] = [:]
        /// Routes a 429 paused here, with their ends: written at the next round, so that every host pauses them.
        var pauses: [String: MonotonicInstant] = [:]
        /// Whether the last round failed (logged once until one succeeds).
        var failing = false
        /// When the last round ran and what the store showed (for status).
        var lastRound: PostgresAuthority.Round?
        var lastRoundAt: MonotonicInstant?

        /// Drops the sessions of leases no longer held under the token they were committed on.
        mutating func dropStaleSessions() {
            sessions = sessions.filter { keeper.held[$0.key]?.token == $0.value.token }
        }
    }

    /// What the workers are to run: the keeper's version and its leases.
    typealias Apply = @Sendable (_ version: UInt64, _ held: [Int: LeaseGrant]) -> Void
    /// The routes paused by a 429 on any host, with the time left of each (this host's own among them).
    typealias Paused = @Sendable (_ pauses: [String: Duration]) -> Void

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
        state = Mutex(State(keeper: LeaseKeeper(
            configuration: .init(ttl: config.leaseTTL, renewInterval: config.renewInterval, fenceMargin: config.fenceMargin),
            host: host, shards: shards
        )))
    }

    /// A worker's committed session moved (or was forgotten): written at the next round, under the token of the
    /// lease held now (a session of a lease lost meanwhile is never written under a newer one).
    func sessionMoved(shard: Int, id: String, seq: Int) {
        let isNew = state.withLock { state -> Bool in
            guard let lease = state.keeper.held[shard] else { return false }
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
        state.withLock { $0.keeper.stop() }
    }

    /// Runs rounds until cancelled. `stoppedShards` names the shards that run nothing here now (for releases);
    /// `sessionOf` the last committed session of a shard; `apply` gives the workers the leases held.
    /// `beforeRelease` runs before a round releases leases (the handled events recorded first).
    func run(
        stoppedShards: @escaping @Sendable () -> Set<Int>,
        sessionOf: @escaping @Sendable (Int) -> (id: String, seq: Int)?,
        beforeRelease: @escaping @Sendable () async -> Void,
        paused: @escaping Paused,
        apply: @escaping Apply
    ) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runFence(apply: apply) }
            while !Task.isCancelled {
                let started = MonotonicInstant.now()
                await round(stoppedShards: stoppedShards(), sessionOf: sessionOf, beforeRelease: beforeRelease, paused: paused, apply: apply)
                await roundWakeup.wait(until: started + config.renewInterval)
            }
            group.cancelAll()
        }
    }

    /// One round: renew, write sessions and pauses, release handed-over shards, take free ones placed here; then
    /// the pauses of every host apply here.
    func round(
        stoppedShards: Set<Int>, sessionOf: @Sendable (Int) -> (id: String, seq: Int)?, beforeRelease: @Sendable () async -> Void,
        paused: Paused, apply: Apply
    ) async {
        let started = MonotonicInstant.now()
        let (keeper, pending) = state.withLock { ($0.keeper, $0.sessions) }
        let writes = pending.compactMap { shard, session in
            keeper.held[shard]?.token == session.token
                ? PostgresAuthority.SessionWrite(shard: shard, token: session.token, id: session.id, seq: session.seq) : nil
        }
        let releases = keeper.releasable(stopped: stoppedShards).map { Self.release($0.key, token: $0.value, pending: pending, sessionOf: sessionOf) }
        if !releases.isEmpty { await beforeRelease() }
        // The pauses as time left now (the release may have waited).
        let pausesAt = MonotonicInstant.now()
        let pendingPauses = state.withLock { state in
            state.pauses = state.pauses.filter { $0.value > pausesAt }
            return state.pauses
        }
        let pauses = pendingPauses.map { PostgresAuthority.RoutePause(route: $0.key, seconds: ($0.value - pausesAt).seconds) }
        do {
            let round = try await authority.round(
                host: host, address: address, shards: keeper.shards, ttl: config.leaseTTL, renew: keeper.renewals,
                release: releases, sessions: writes, pauses: pauses,
                wanted: { live, holders in keeper.wanted(in: .init(liveHosts: live, holders: holders)) }
            )
            let (changes, version, held, wasFailing) = state.withLock { state in
                for write in writes {
                    if let now = state.sessions[write.shard], now.token == write.token, now.id == write.id, now.seq == write.seq {
                        state.sessions[write.shard] = nil
                    }
                }
                let changes = state.keeper.roundSucceeded(
                    startedAt: started, renewed: round.renewed, acquired: round.acquired.mapValues(\.token),
                    sessions: round.acquired.compactMapValues(\.session), released: round.released,
                    view: .init(liveHosts: Set(round.hosts.keys), holders: round.holders)
                )
                state.dropStaleSessions()
                for (route, until) in pendingPauses where state.pauses[route] == until { state.pauses[route] = nil }
                state.lastRound = round
                state.lastRoundAt = started
                defer { state.failing = false }
                return (changes, state.keeper.version, state.keeper.grants, state.failing)
            }
            if wasFailing {
                failures.reset()
                logger.info("the store answers again: leases renewed", metadata: ["store": "\(authority.displayURL)"])
            }
            log(changes)
            fenceWakeup.poke()
            apply(version, held)
            if !round.pauses.isEmpty { paused(round.pauses.mapValues { Duration.seconds($0) }) }
        } catch {
            state.withLock { $0.failing = true }
            failures.log(logger, .error, "cannot renew the shard leases; the workers of shards whose lease runs out are stopped before it does", metadata: [
                "store": "\(authority.displayURL)", "error": "\(String(describing: error).prefix(300))",
            ])
        }
    }

    /// Stops the workers of leases that run out unrenewed, at the moment they do (see `LeaseKeeper`).
    func runFence(apply: Apply) async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.keeper.nextExpiry }
            await fenceWakeup.wait(until: deadline)
            if Task.isCancelled { return }
            let (changes, version, held) = state.withLock { state in
                let changes = state.keeper.expire(now: .now())
                state.dropStaleSessions()
                return (changes, state.keeper.version, state.keeper.grants)
            }
            if !changes.isEmpty {
                log(changes)
                apply(version, held)
            }
        }
    }

    func log(_ changes: [LeaseKeeper.Change]) {
        for case .lost(let shard, let reason) in changes {
            logger.warning("shard \(shard): \(reason); its worker is stopped now")
        }
    }

    /// At shutdown, after every worker stopped: every lease released with its last session, and the host's
    /// heartbeat removed, so the other hosts take the shards over at once. Best effort: what fails here expires.
    func releaseAll(sessionOf: @Sendable (Int) -> (id: String, seq: Int)?) async {
        let (keeper, pending) = state.withLock { ($0.keeper, $0.sessions) }
        let releases = keeper.held.map { Self.release($0.key, token: $0.value.token, pending: pending, sessionOf: sessionOf) }
        do {
            _ = try await authority.round(
                host: host, address: address, shards: keeper.shards, ttl: config.leaseTTL, renew: [:], release: releases, sessions: [],
                wanted: { _, _ in [] }
            )
            try await authority.leave(host: host)
            state.withLock { $0.keeper.dropAll() }
            logger.info("leases released; this host left the cluster", metadata: ["released": "\(releases.count)"])
        } catch {
            logger.error("cannot release the leases at stop: the other hosts take the shards over when they expire", metadata: ["error": "\(String(describing: error).prefix(300))"])
        }
    }

    /// The release of `shard` with its last session: the state machine's (the worker's last commit), else the one
    /// waiting to be written, else none.
    static func release(
        _ shard: Int, token: Int64, pending: [Int: PendingSession], sessionOf: (Int) -> (id: String, seq: Int)?
    ) -> PostgresAuthority.SessionWrite {
        let session = sessionOf(shard) ?? pending[shard].map { ($0.id, $0.seq) } ?? ("", 0)
        return PostgresAuthority.SessionWrite(shard: shard, token: token, id: session.0, seq: session.1)
    }

    /// What the store showed at the last successful round, and when it began (for status).
    var lastRound: (round: PostgresAuthority.Round?, at: MonotonicInstant?) {
        state.withLock { ($0.lastRound, $0.lastRoundAt) }
    }
}
