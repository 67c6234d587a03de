import ClusterCore
import ClusterPostgres
import Logging
import Synchronization

/// This host's part of a cluster that spans hosts (`store.postgres`): lease rounds against the database every
/// `renewInterval`, and a fence that kills a shard's worker when its lease would otherwise outlive this host's
/// right to it. The decisions are `LeaseKeeper`'s; this is the I/O around it.
final class LeaseService: Sendable {
    struct State {
        var keeper: LeaseKeeper
        /// Sessions to write at the next round, by shard (an empty id forgets the stored one).
        var sessions: [Int: (id: String, seq: Int)] = [:]
        /// Whether the last round failed (logged once until one succeeds).
        var failing = false
        /// When the last round ran and what the store showed (for status).
        var lastRound: PostgresAuthority.Round?
        var lastRoundAt: MonotonicInstant?
    }

    let authority: PostgresAuthority
    let config: PostgresStoreConfig
    let host: Int
    let address: String
    let state: Mutex<State>
    let fenceWakeup = Wakeup()
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

    /// A worker's committed session moved (or was forgotten): written, fenced by the lease's token, at the next round.
    func sessionMoved(shard: Int, id: String, seq: Int) {
        state.withLock { $0.sessions[shard] = (id, seq) }
    }

    /// Runs rounds until cancelled. `stoppedShards` names the shards that run nothing here now (for releases);
    /// `sessionOf` the last committed session of a shard; `apply` carries out the keeper's changes.
    func run(
        stoppedShards: @escaping @Sendable () -> Set<Int>,
        sessionOf: @escaping @Sendable (Int) -> (id: String, seq: Int)?,
        apply: @escaping @Sendable ([LeaseKeeper.Change], [Int: (id: String, seq: Int)]) -> Void
    ) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runFence(apply: apply) }
            while !Task.isCancelled {
                let started = MonotonicInstant.now()
                await round(stoppedShards: stoppedShards(), sessionOf: sessionOf, apply: apply)
                let left = started + config.renewInterval - MonotonicInstant.now()
                if left > .zero { try? await Task.sleep(for: left) }
            }
            group.cancelAll()
        }
    }

    /// One round: renew, write sessions, release handed-over shards, take free ones placed here.
    func round(
        stoppedShards: Set<Int>, sessionOf: @Sendable (Int) -> (id: String, seq: Int)?,
        apply: @Sendable ([LeaseKeeper.Change], [Int: (id: String, seq: Int)]) -> Void
    ) async {
        let started = MonotonicInstant.now()
        let (keeper, pending) = state.withLock { ($0.keeper, $0.sessions) }
        let writes = pending.compactMap { shard, session in
            keeper.held[shard].map { PostgresAuthority.SessionWrite(shard: shard, token: $0.token, id: session.id, seq: session.seq) }
        }
        let releases = keeper.releasable(stopped: stoppedShards).map { shard, token in
            let session = pending[shard] ?? sessionOf(shard) ?? ("", 0)
            return PostgresAuthority.SessionWrite(shard: shard, token: token, id: session.id, seq: session.seq)
        }
        do {
            let round = try await authority.round(
                host: host, address: address, shards: keeper.shards, ttl: config.leaseTTL, renew: keeper.renewals,
                release: releases, sessions: writes,
                wanted: { live, holders in keeper.wanted(in: .init(liveHosts: live, holders: holders)) }
            )
            let (changes, wasFailing) = state.withLock { state -> ([LeaseKeeper.Change], Bool) in
                for write in writes where state.sessions[write.shard].map({ $0.id == write.id && $0.seq == write.seq }) == true {
                    state.sessions[write.shard] = nil
                }
                for shard in round.released { state.sessions[shard] = nil }
                let changes = state.keeper.roundSucceeded(
                    startedAt: started, renewed: round.renewed, acquired: round.acquired.mapValues(\.token), released: round.released,
                    view: .init(liveHosts: Set(round.hosts.keys), holders: round.holders)
                )
                state.lastRound = round
                state.lastRoundAt = started
                defer { state.failing = false }
                return (changes, state.failing)
            }
            if wasFailing {
                failures.reset()
                logger.info("the store answers again: leases renewed", metadata: ["store": "\(authority.displayURL)"])
            }
            fenceWakeup.poke()
            apply(changes, round.acquired.compactMapValues(\.session))
        } catch {
            state.withLock { $0.failing = true }
            failures.log(logger, .error, "cannot renew the shard leases; the workers of shards whose lease runs out are stopped before it does", metadata: [
                "store": "\(authority.displayURL)", "error": "\(String(describing: error).prefix(300))",
            ])
        }
    }

    /// Stops the workers of leases that run out unrenewed, at the moment they do (see `LeaseKeeper`).
    func runFence(apply: @Sendable ([LeaseKeeper.Change], [Int: (id: String, seq: Int)]) -> Void) async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.keeper.nextExpiry }
            await fenceWakeup.wait(until: deadline)
            if Task.isCancelled { return }
            let changes = state.withLock { $0.keeper.expire(now: .now()) }
            if !changes.isEmpty { apply(changes, [:]) }
        }
    }

    /// At shutdown, after every worker stopped: every lease released with its last session, and the host's
    /// heartbeat removed, so the other hosts take the shards over at once. Best effort: what fails here expires.
    func releaseAll(sessionOf: @Sendable (Int) -> (id: String, seq: Int)?) async {
        let (keeper, pending) = state.withLock { ($0.keeper, $0.sessions) }
        let releases = keeper.held.map { shard, lease in
            let session = pending[shard] ?? sessionOf(shard) ?? ("", 0)
            return PostgresAuthority.SessionWrite(shard: shard, token: lease.token, id: session.id, seq: session.seq)
        }
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

    /// What this host holds and sees, for status.
    var snapshot: (keeper: LeaseKeeper, round: PostgresAuthority.Round?, at: MonotonicInstant?) {
        state.withLock { ($0.keeper, $0.lastRound, $0.lastRoundAt) }
    }
}
