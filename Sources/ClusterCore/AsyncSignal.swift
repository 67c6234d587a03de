import Synchronization

/// A value that is set once and awaited by any number of tasks (a line printed, a port bound, a state reached).
public final class AsyncSignal<Value: Sendable>: Sendable {
    private struct State {
        var result: Result<Value, any Error>?
        var waiters: [UInt64: CheckedContinuation<Value, any Error>] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A signal with no value yet.
    public init() {}

    /// Sets the value (the first call wins) and wakes every waiter.
    public func set(_ value: Value) { complete(.success(value)) }

    /// Fails every waiter, present and future, with `error` (unless a value was set first).
    public func fail(_ error: any Error) { complete(.failure(error)) }

    private func complete(_ result: Result<Value, any Error>) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value, any Error>] in
            guard state.result == nil else { return [] }
            state.result = result
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    /// The value if it is already set.
    public var current: Value? {
        state.withLock { state in
            if case .success(let value) = state.result { return value }
            return nil
        }
    }

    /// Waits for the value; throws `CancellationError` if the task is cancelled first.
    public func wait() async throws -> Value {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let ready = state.withLock { state -> Result<Value, any Error>? in
                    if let result = state.result { return result }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
