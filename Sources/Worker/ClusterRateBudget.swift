import ClusterCore
import ClusterIPC
import ClusterProtocol
import Synchronization

/// A worker's view of the cluster-wide REST budget: tokens leased from the supervisor a few at a time, so that a
/// request rarely waits for a round trip. One lease request per route is in flight at a time; callers that find
/// the lease empty wait for it (suspended, with the budget's deadline, cancellable), never poll.
public final class ClusterRateBudget: RequestBudget {
    struct Lease {
        var tokens: Int
        var expiresAt: MonotonicInstant
    }

    struct State {
        var leases: [String: Lease] = [:]
        var pausedUntil: [String: MonotonicInstant] = [:]
        var inFlight: [String: AsyncSignal<Void>] = [:]
        /// Requests sent, tokens used: for progress reports and tests.
        var spent = 0
    }

    enum Step {
        case go
        case sleep(until: MonotonicInstant)
        case wait(AsyncSignal<Void>)
        case lease(AsyncSignal<Void>)
    }

    let client: IPCClient
    let leaseSize: Int
    let maxWait: Duration
    let state = Mutex(State())

    /// Creates a budget that leases `leaseSize` tokens at a time (at least 1); `acquire` waits at most `maxWait`.
    public init(client: IPCClient, leaseSize: Int, maxWait: Duration = .seconds(60)) {
        self.client = client
        self.leaseSize = max(1, leaseSize)
        self.maxWait = maxWait
    }

    /// Tokens spent so far by this worker.
    public var spent: Int { state.withLock { $0.spent } }

    /// Takes a token for `route`, leasing more when none is left; throws `BudgetTimeout` if it would wait past `maxWait`.
    public func acquire(route: String) async throws {
        let deadline = MonotonicInstant.now() + maxWait
        while true {
            let now = MonotonicInstant.now()
            let step = state.withLock { state -> Step in
                if let until = state.pausedUntil[route], until > now { return .sleep(until: until) }
                if var lease = state.leases[route], lease.tokens > 0, lease.expiresAt > now {
                    lease.tokens -= 1
                    state.leases[route] = lease
                    state.spent += 1
                    return .go
                }
                if let signal = state.inFlight[route] { return .wait(signal) }
                let signal = AsyncSignal<Void>()
                state.inFlight[route] = signal
                return .lease(signal)
            }
            switch step {
            case .go:
                return
            case .sleep(let until):
                guard until <= deadline else { throw BudgetTimeout(route: route, wait: until - now) }
                try await Task.sleep(for: until - now)
            case .wait(let signal):
                try await signal.wait()
            case .lease(let signal):
                defer {
                    state.withLock { _ = $0.inFlight.removeValue(forKey: route) }
                    signal.set(())
                }
                if try await lease(route: route, timeout: deadline - now) { return }
            }
        }
    }

    /// Asks the supervisor for a lease; keeps one token for the caller. False when the grant held none.
    func lease(route: String, timeout: Duration) async throws -> Bool {
        var requestID: UInt64 = 0
        let reply: IPCMessage
        do {
            reply = try await client.request(timeout: timeout) { id in
                requestID = id
                return .budgetRequest(id: id, route: route, count: Int32(leaseSize))
            }
        } catch {
            client.send(.budgetCancel(id: requestID))
            if error is CancellationError { throw error }
            throw BudgetTimeout(route: route, wait: timeout)
        }
        guard case .budgetGrant(_, let count, let ttl) = reply, count > 0 else { return false }
        let expiresAt = MonotonicInstant.now() + .milliseconds(Int64(ttl))
        state.withLock { state in
            state.leases[route] = Lease(tokens: Int(count) - 1, expiresAt: expiresAt)
            state.spent += 1
        }
        return true
    }

    /// Pauses `route` here and reports the 429 to the supervisor, which pauses it on every other worker.
    public func rateLimited(route: String, retryAfter: Duration) {
        pause(route: route, for: retryAfter)
        client.send(.budgetRateLimited(route: route, retryAfterMillis: Int32(clamping: retryAfter.nanoseconds / 1_000_000)))
    }

    /// Holds `route` for `duration` (a 429 somewhere in the cluster); leased tokens for it are dropped.
    public func pause(route: String, for duration: Duration) {
        let until = MonotonicInstant.now() + duration
        state.withLock { state in
            state.pausedUntil[route] = max(state.pausedUntil[route] ?? until, until)
            state.leases[route] = nil
        }
    }

    /// Gives unused, unexpired tokens back to the supervisor (on drain).
    public func returnUnused() {
        let now = MonotonicInstant.now()
        let unused = state.withLock { state -> [(String, Int)] in
            defer { state.leases = [:] }
            return state.leases.compactMap { $0.value.tokens > 0 && $0.value.expiresAt > now ? ($0.key, $0.value.tokens) : nil }
        }
        for (route, count) in unused { client.send(.budgetReturn(route: route, count: Int32(count))) }
    }
}
