import ClusterCore
import Synchronization

/// The REST budget of a worker running alone: one global GCRA and per-route pauses learned from 429s.
/// Waiting callers reserve their slot and sleep until it, so they are served in order and nobody polls.
public final class LocalRateBudget: RequestBudget {
    struct State {
        var global: GCRA
        var pausedUntil: [String: MonotonicInstant] = [:]
        var globalPausedUntil: MonotonicInstant?
    }

    let state: Mutex<State>
    /// Longest a request may wait for the budget before it fails with `BudgetTimeout`.
    let maxWait: Duration

    /// A budget of `rate` requests per second with a burst of `burst`; a request never waits longer than `maxWait`.
    public init(rate: Double, burst: Int, maxWait: Duration = .seconds(60)) {
        state = Mutex(State(global: GCRA(rate: rate, burst: burst)))
        self.maxWait = maxWait
    }

    /// Waits for a token for `route` (and for any pause of it); throws `BudgetTimeout` rather than wait past `maxWait`.
    public func acquire(route: String) async throws {
        while true {
            let now = MonotonicInstant.now()
            let at = state.withLock { state -> MonotonicInstant in
                let pause = [state.pausedUntil[route], state.globalPausedUntil].compactMap { $0 }.filter { $0 > now }.max()
                if let pause { return pause }
                return state.global.reserve(now: now)
            }
            let wait = at - now
            if wait > maxWait { throw BudgetTimeout(route: route, wait: wait) }
            if wait > .zero { try await Task.sleep(for: wait) }
            // A 429 may have paused the route while we slept; then wait for the pause and reserve again.
            let stillPaused = state.withLock { state in
                let now = MonotonicInstant.now()
                return [state.pausedUntil[route], state.globalPausedUntil].compactMap { $0 }.contains { $0 > now }
            }
            if !stillPaused { return }
        }
    }

    /// A 429 on `route`: pauses it for `retryAfter` (a longer pause already set stays).
    public func rateLimited(route: String, retryAfter: Duration) {
        let until = MonotonicInstant.now() + retryAfter
        state.withLock { state in
            state.pausedUntil[route] = max(state.pausedUntil[route] ?? until, until)
        }
    }
}
