import Synchronization

/// A counting semaphore for async code: `acquire` suspends (first come, first served) while no permit is free;
/// a cancelled waiter leaves the queue. Used for backpressure: a bounded number of handlers in flight.
///
/// Whether to wait is decided once, under the lock, in the same critical section that enqueues the waiter (as
/// swift-nio's `TokenBucket` does): a `release()` can never slip between "no permit" and "waiting", which would
/// leave a free permit and a sleeping acquirer.
public final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
        var closed = false
    }

    /// Thrown by `acquire` once the semaphore is closed.
    public struct Closed: Error, Sendable {}

    private let state: Mutex<State>

    /// A semaphore with `permits` permits free and nobody waiting.
    public init(permits: Int) {
        state = Mutex(State(available: permits))
    }

    /// Permits free right now.
    public var available: Int { state.withLock { $0.available } }

    /// Takes a permit, waiting in line while none is free; throws `Closed` once closed, or `CancellationError`.
    public func acquire() async throws {
        // The fast path: a permit is free and nobody queues before us.
        let taken = try state.withLock { state throws(Closed) -> Bool in
            if state.closed { throw Closed() }
            guard state.available > 0 && state.waiters.isEmpty else { return false }
            state.available -= 1
            return true
        }
        if taken { return }
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Outcome { case acquired, cancelled, closed, queued }
                let outcome = state.withLock { state -> Outcome in
                    if state.closed { return .closed }
                    if Task.isCancelled { return .cancelled }
                    // Checked again here: a permit released since the fast path is ours (when nobody queues first).
                    if state.available > 0 && state.waiters.isEmpty {
                        state.available -= 1
                        return .acquired
                    }
                    state.waiters.append((id, continuation))
                    return .queued
                }
                switch outcome {
                case .acquired: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .closed: continuation.resume(throwing: Closed())
                case .queued: break
                }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Fails every waiter, and every later `acquire`, with `Closed` (permits already held are released as usual):
    /// what a stopping shard does so that nothing waits for a slot it will never use.
    public func close() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.closed = true
            defer { state.waiters = [] }
            return state.waiters.map(\.continuation)
        }
        for waiter in waiters { waiter.resume(throwing: Closed()) }
    }

    /// Returns a permit: the first waiter in line takes it, or else it becomes free.
    public func release() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            if state.waiters.isEmpty {
                state.available += 1
                return nil
            }
            return state.waiters.removeFirst().continuation
        }
        waiter?.resume()
    }
}
