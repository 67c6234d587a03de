import Synchronization

/// One computation for many askers: while it runs, every asker waits for the same result, and a result younger
/// than `freshFor` is handed out again. What an HTTP endpoint open to anyone needs in front of work that asks every
/// worker (a scrape, a status): any number of clients cost one fan-out a period, and two fan-outs never overlap.
public final class SingleFlight<Value: Sendable>: Sendable {
    struct State {
        var running: Task<Value, Never>?
        var last: (at: MonotonicInstant, value: Value)?
    }

    let freshFor: Duration
    let state = Mutex(State())

    /// Results stay fresh for `freshFor`.
    public init(freshFor: Duration) {
        self.freshFor = freshFor
    }

    /// A fresh result, the one being computed, or a new computation of `compute`.
    public func value(_ compute: @escaping @Sendable () async -> Value) async -> Value {
        // One look under the lock: a fresh result, or the computation to wait for (started here if none runs).
        let (fresh, task) = state.withLock { state -> (Value?, Task<Value, Never>?) in
            if let last = state.last, MonotonicInstant.now() - last.at < freshFor { return (last.value, nil) }
            if let running = state.running { return (nil, running) }
            let task = Task {
                let value = await compute()
                self.state.withLock { state in
                    state.last = (.now(), value)
                    state.running = nil
                }
                return value
            }
            state.running = task
            return (nil, task)
        }
        if let fresh { return fresh }
        guard let task else { preconditionFailure("a fresh value or a computation") }
        return await task.value
    }
}
