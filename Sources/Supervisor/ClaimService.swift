import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Logging
import Synchronization

/// The claim ledger served over IPC, answered on the event loop: a batch of claims gets its decisions in one
/// reply; a key another worker holds is decided later, when that worker completes or releases it.
///
/// With several hosts (`StoreClaims`), the local ledger still orders this host's workers, and what it would
/// grant at once is asked of the store first (`wait`, then `claimResolved`): claims that arrive while one batch
/// is in flight go together in the next, so a busy cluster spends less than one round trip per event. A claim the
/// other layout of a rescale holds unfinished is asked again until that one ends (see `runStore`).
final class ClaimService: Sendable {
    /// The store every host's claims go through, and the lease token each shard is held under here.
    struct StoreClaims: Sendable {
        let authority: PostgresAuthority
        let host: Int
        let ttl: Duration
        let logger: Logger
        /// Counts the claims the store answered `heldElsewhere` (the metric of the waits).
        var heldElsewhere: @Sendable (_ count: Int) -> Void = { _ in }
    }

    /// A claim the local ledger granted, for the store's word: `attempts` counts the times the store answered that
    /// the other layout of a rescale holds the event unfinished.
    struct Asked {
        var key: String
        var requester: UInt64
        var shard: Int
        var generation: UInt64
        var attempts = 0
    }

    struct Pending {
        var claims: [Asked] = []
        var completes: [String] = []
        /// Completions taken for the store and not yet written (or put back).
        var completing = 0
        /// Claims held unfinished by the other layout of a rescale, asked again once due.
        var later: [(claim: Asked, due: MonotonicInstant)] = []
    }

    let ledger: Mutex<ClaimLedger>
    let connections = Mutex<[UInt64: IPCConnection]>([:])
    let store: StoreClaims?
    let pending = Mutex(Pending())
    let wakeup = Wakeup()
    let failures = RateLimitedLog()
    /// Completions kept for the store at most (past it the oldest are dropped, and logged: those events could be
    /// handled twice if a host that dies replays them).
    static let completeLimit = 100_000
    /// The first wait before a claim held by the other layout of a rescale is asked again, and the longest.
    static let reaskBase = Duration.milliseconds(20)
    static let reaskCap = Duration.seconds(1)

    init(ledger: ClaimLedger, store: StoreClaims? = nil) {
        self.ledger = Mutex(ledger)
        self.store = store
    }

    var remembered: Int { ledger.withLock { $0.remembered } }

    func claim(_ keys: [String], by connection: IPCConnection) -> [ClaimDecision] {
        connections.withLock { $0[connection.id] = connection }
        var decisions = ledger.withLock { $0.claim(keys, by: connection.id, now: .now()) }
        guard store != nil else { return decisions }
        let shard = Int(connection.hello?.ordinal ?? -1)
        let generation = connection.hello?.generation ?? 0
        var asked: [Asked] = []
        for i in decisions.indices where decisions[i] == .handle {
            decisions[i] = .wait
            asked.append(Asked(key: keys[i], requester: connection.id, shard: shard, generation: generation))
        }
        ask(asked)
        return decisions
    }

    func complete(_ keys: [String], by connection: IPCConnection) {
        deliver(ledger.withLock { $0.complete(keys, by: connection.id, now: .now()) })
        guard store != nil, !keys.isEmpty else { return }
        let dropped = pending.withLock { pending -> Int in
            pending.completes += keys
            let over = pending.completes.count - Self.completeLimit
            if over > 0 { pending.completes.removeFirst(over) }
            return max(0, over)
        }
        if dropped > 0, let store {
            failures.log(store.logger, .error, "the store has not taken \(Self.completeLimit) handled events; the oldest are dropped (a replay of them could be handled again)")
        }
        wakeup.poke()
    }

    func release(_ keys: [String], by connection: IPCConnection) {
        deliver(ledger.withLock { $0.release(keys, by: connection.id) })
    }

    /// From now on the worker on `connection` starts no handler (a layout retiring after a rescale).
    func retire(_ connection: IPCConnection) {
        ledger.withLock { $0.retire(connection.id) }
    }

    func connectionClosed(_ connection: IPCConnection) {
        connections.withLock { _ = $0.removeValue(forKey: connection.id) }
        deliver(ledger.withLock { $0.requesterGone(connection.id) })
    }

    func allRemembered() -> [(key: String, at: MonotonicInstant)] {
        ledger.withLock { $0.allRemembered() }
    }

    func takeUnpersisted() -> [(key: String, at: MonotonicInstant)] {
        ledger.withLock { $0.takeUnpersisted() }
    }

    func deliver(_ resolutions: [ClaimLedger.Resolution]) {
        guard !resolutions.isEmpty else { return }
        let targets = connections.withLock { $0 }
        var asked: [Asked] = []
        for resolution in resolutions {
            guard let connection = targets[resolution.requester] else { continue }
            if store != nil, resolution.decision == .handle {
                asked.append(Asked(
                    key: resolution.key, requester: resolution.requester, shard: Int(connection.hello?.ordinal ?? -1), generation: connection.hello?.generation ?? 0))
            } else {
                connection.send(.claimResolved(key: resolution.key, decision: resolution.decision))
            }
        }
        ask(asked)
    }

    /// Queues claims the local ledger granted for the store's word.
    func ask(_ claims: [Asked]) {
        guard !claims.isEmpty else { return }
        pending.withLock { $0.claims += claims }
        wakeup.poke()
    }

    /// Sends the store what waits for it, a batch of claims and one of completions per round trip (one transaction),
    /// until cancelled; forgets handled events past the ttl once a minute. `lease` names the lease this host holds
    /// for the worker of `ordinal` whose process has `generation` (its layout's shard count and the token), nil when
    /// it holds none.
    ///
    /// A claim that the other layout of a rescale holds unfinished (both layouts receive the events of the switch)
    /// keeps its worker waiting and is asked again, `reaskBase` doubling up to `reaskCap` apart: the other worker
    /// completes it (skip), or dies and its lease ends (released when its retiring layout stops it, or expired with
    /// its host), and this one takes it over. It ends too when this host loses its own lease, or its worker goes.
    func runStore(lease: @escaping @Sendable (_ generation: UInt64, _ ordinal: Int) -> (shards: Int, token: Int64)?) async {
        guard let store else { return }
        var lastExpiry = MonotonicInstant.now()
        while !Task.isCancelled {
            let now = MonotonicInstant.now()
            // Claims asked again go together: those due within `reaskBase` go now.
            let due = now + Self.reaskBase
            let (batch, nextDue) = pending.withLock { pending in
                var batch = pending
                batch.claims += pending.later.filter { $0.due <= due }.map(\.claim)
                pending.later.removeAll { $0.due <= due }
                pending.claims = []
                pending.completes = []
                pending.completing = batch.completes.count
                return (batch, pending.later.map(\.due).min())
            }
            if batch.claims.isEmpty && batch.completes.isEmpty {
                if now - lastExpiry > .seconds(60) {
                    lastExpiry = now
                    try? await store.authority.expireClaims(olderThan: store.ttl)
                }
                await wakeup.wait(until: min(now + .seconds(60), nextDue ?? now + .seconds(60)))
                continue
            }
            var retry = Pending()
            var leased: [Asked] = []
            var unheld: [(key: String, requester: UInt64)] = []
            var claims: [PostgresAuthority.Claim] = []
            // A claim whose worker is gone waits for no answer; a key asked twice (a retried batch, then the key
            // handed to another worker) is asked once, for the latest asker: one statement cannot touch a row twice.
            let live = connections.withLock { Set($0.keys) }
            var latest: [String: Int] = [:]
            for (i, claim) in batch.claims.enumerated() where live.contains(claim.requester) { latest[claim.key] = i }
            let superseded = batch.claims.indices.filter { latest[batch.claims[$0].key] != $0 && live.contains(batch.claims[$0].requester) }
            answer(superseded.map { (batch.claims[$0].key, batch.claims[$0].requester, false) })
            for i in latest.values.sorted() {
                let claim = batch.claims[i]
                if let lease = lease(claim.generation, claim.shard) {
                    leased.append(claim)
                    claims.append(.init(key: claim.key, shard: claim.shard, shards: lease.shards, token: lease.token))
                } else {
                    unheld.append((claim.key, claim.requester))
                }
            }
            // No lease here (fenced, or handed over): the worker skips the event and the ledger forgets the claim,
            // so the host that runs the shard now, or this one with a new lease, decides it in the store.
            answer(unheld.map { ($0.key, $0.requester, false) })
            // The completions and the claims in one transaction: at a low rate an event costs one round trip (its
            // claim goes with the record of the one before), not two.
            do {
                let answers = try await store.authority.claim(claims, completing: batch.completes, host: store.host)
                answer(leased.filter { !answers.heldElsewhere.contains($0.key) }.map { ($0.key, $0.requester, answers.granted.contains($0.key)) })
                let answered = MonotonicInstant.now()
                let again = leased.filter { answers.heldElsewhere.contains($0.key) }.map { claim in
                    var claim = claim
                    claim.attempts += 1
                    return (claim: claim, due: answered + .backoff(Self.reaskBase, attempts: claim.attempts, cap: Self.reaskCap))
                }
                pending.withLock { $0.later += again }
                if !again.isEmpty { store.heldElsewhere(again.count) }
            } catch {
                retry.claims = leased
                retry.completes = batch.completes
                failures.log(store.logger, .error, "cannot claim or record events in the store; their handlers wait, and it is asked again", metadata: [
                    "error": "\(String(describing: error).prefix(300))",
                ])
            }
            pending.withLock { pending in
                pending.claims = retry.claims + pending.claims
                pending.completes = retry.completes + pending.completes
                pending.completing = 0
            }
            if !retry.claims.isEmpty || !retry.completes.isEmpty {
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// Waits (up to `limit`) until every event completed so far is recorded in the store: before a shard's lease
    /// is released, so that the host that resumes it finds them handled. False when the store did not take them
    /// in time (the lease is released anyway; the next holder may handle those events again).
    func completionsRecorded(within limit: Duration) async -> Bool {
        guard store != nil else { return true }
        let deadline = MonotonicInstant.now() + limit
        while MonotonicInstant.now() < deadline {
            if pending.withLock({ $0.completes.isEmpty && $0.completing == 0 }) { return true }
            wakeup.poke()
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    /// At shutdown, after the workers stopped: the handled events not yet recorded go to the store once.
    func flushStore() async {
        guard let store else { return }
        let completes = pending.withLock { pending in
            defer { pending.completes = [] }
            return pending.completes
        }
        // A connection closed under a cancelled batch may be the one the pool hands out first: a few tries.
        var lastError: (any Error)?
        for _ in 0..<3 {
            do {
                try await store.authority.completeClaims(completes)
                return
            } catch {
                lastError = error
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        store.logger.error("cannot record the last handled events in the store", metadata: ["events": "\(completes.count)", "error": "\(String(describing: lastError).prefix(300))"])
    }

    /// The store's word on claims: handle, or skip (another host handled the event, holds a newer lease of its
    /// shard, or this host holds none); a skipped claim leaves the local ledger.
    func answer(_ decided: [(key: String, requester: UInt64, granted: Bool)]) {
        guard !decided.isEmpty else { return }
        let targets = connections.withLock { $0 }
        var resolutions: [ClaimLedger.Resolution] = []
        for (key, requester, granted) in decided {
            targets[requester]?.send(.claimResolved(key: key, decision: granted ? .handle : .skip))
            if !granted { resolutions += ledger.withLock { $0.release([key], by: requester) } }
        }
        deliver(resolutions)
    }
}
