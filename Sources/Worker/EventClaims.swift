import ClusterCore
import Synchronization

/// Turns at-least-once delivery (resumes replay, the platform pushes some messages twice, two layouts overlap
/// during a rescale) into handling each event once.
public protocol EventClaims: Sendable {
    /// Whether this worker should handle the event `key`: true exactly once per key within the time to live.
    func claim(_ key: String) async -> Bool
    /// The handler for `key` finished (its reply, if any, has left).
    func complete(_ key: String)
    /// The handler for `key` did not run to the end and someone else may handle it.
    func release(_ key: String)
}

/// Claims within one process: an in-memory set of event ids with a time to live.
public final class LocalEventClaims: EventClaims {
    struct State {
        var seen: [String: MonotonicInstant] = [:]
        var order: [(key: String, at: MonotonicInstant)] = []
        var head = 0
    }

    let ttl: Duration
    let state = Mutex(State())

    /// Creates an empty set that forgets a key `ttl` after its claim.
    public init(ttl: Duration) {
        self.ttl = ttl
    }

    /// True the first time `key` is claimed within the time to live, false for a repeat.
    public func claim(_ key: String) async -> Bool {
        let now = MonotonicInstant.now()
        return state.withLock { state in
            prune(&state, now: now)
            if state.seen[key] != nil { return false }
            state.seen[key] = now
            state.order.append((key, now))
            return true
        }
    }

    /// Does nothing: a handled key stays claimed until its time to live ends.
    public func complete(_ key: String) {}

    /// Forgets `key`, so that its next claim succeeds.
    public func release(_ key: String) {
        _ = state.withLock { $0.seen.removeValue(forKey: key) }
    }

    private func prune(_ state: inout State, now: MonotonicInstant) {
        while state.head < state.order.count, now - state.order[state.head].at > ttl {
            let entry = state.order[state.head]
            if state.seen[entry.key] == entry.at { state.seen[entry.key] = nil }
            state.head += 1
        }
        if state.head > 4096 && state.head * 2 > state.order.count {
            state.order.removeFirst(state.head)
            state.head = 0
        }
    }
}
