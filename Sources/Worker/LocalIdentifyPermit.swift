import ClusterCore
import Synchronization

/// Identify pacing for a worker that runs alone (`botcluster run`): the same ledger the supervisor keeps, here
/// for this process's shard, by `max_concurrency` and the 5 s window from `/gateway/bot`.
public final class LocalIdentifyPermit: IdentifyPermit {
    struct State {
        var ledger: IdentifyLedger
        var nextID: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var outstanding: [ShardID: UInt64] = [:]
    }

    let state: Mutex<State>
    let wakeup = Wakeup()

    /// Creates a pacer from the ledger's configuration and the identifies left today (`remaining`, from `/gateway/bot`).
    public init(configuration: IdentifyLedger.Configuration, remaining: Int) {
        state = Mutex(State(ledger: IdentifyLedger(configuration: configuration, remaining: remaining)))
    }

    /// Waits for the ledger's grant for `shard`; throws `IdentifyDenied` once today's identifies are spent.
    public func acquire(shard: ShardID) async throws {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
                    state.waiters[id] = continuation
                    state.outstanding[shard] = id
                    return state.ledger.request(id, shard: shard.id, now: .now())
                }
                deliver(decisions)
            }
            // Sleep until the ledger's next deadline while anyone waits; decisions resume the waiters.
        } onCancel: {
            let (decisions, waiter) = state.withLock { state -> ([IdentifyLedger.Decision], CheckedContinuation<Void, any Error>?) in
                (state.ledger.cancel(id, now: .now()), state.waiters.removeValue(forKey: id))
            }
            waiter?.resume(throwing: CancellationError())
            deliver(decisions)
        }
    }

    /// Tells the ledger that `shard`'s granted Identify left now (its window counts from here).
    public func identifySent(shard: ShardID) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            guard let id = state.outstanding.removeValue(forKey: shard) else { return [] }
            return state.ledger.sent(id, now: .now())
        }
        deliver(decisions)
    }

    /// Runs the ledger's clock: grants that come due while callers wait. Runs for the worker's lifetime.
    public func run() async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.ledger.nextDeadline }
            await wakeup.wait(until: deadline)
            if Task.isCancelled { return }
            deliver(state.withLock { $0.ledger.tick(now: .now()) }, rescheduled: false)
        }
    }

    /// Resumes the waiters the decisions name; `rescheduled` wakes the clock, whose deadline may have moved
    /// (not needed when the clock itself ticked).
    func deliver(_ decisions: [IdentifyLedger.Decision], rescheduled: Bool = true) {
        let resumptions = state.withLock { state -> [(CheckedContinuation<Void, any Error>, IdentifyLedger.Decision)] in
            decisions.compactMap { decision in
                switch decision {
                case .granted(let id), .denied(let id, _):
                    return state.waiters.removeValue(forKey: id).map { ($0, decision) }
                }
            }
        }
        for (waiter, decision) in resumptions {
            if case .denied(_, let reason) = decision {
                waiter.resume(throwing: IdentifyDenied(reason: reason))
            } else {
                waiter.resume()
            }
        }
        if rescheduled { wakeup.poke() }
    }
}

/// No identify is possible (the daily budget is spent).
public struct IdentifyDenied: Error, Sendable, CustomStringConvertible {
    public var reason: String
    /// A denial with its reason, as the ledger or the supervisor gave it.
    public init(reason: String) { self.reason = reason }
    public var description: String { "identify denied: \(reason)" }
}
