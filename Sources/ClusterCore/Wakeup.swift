import Dispatch
import Synchronization

/// Lets tasks sleep until a deadline or until another task pokes them, whichever comes first — the timer of a
/// state machine whose next deadline can move earlier, or a wait for "something changed". No polling: a poke
/// resumes every sleeper at once; a poke with nobody asleep makes the next wait return at once.
///
/// A wait is one continuation, resumed by whichever comes first: a poke, cancellation, or a Dispatch timer for its
/// deadline (cancelled when something else came first). Not a task group with a sleeping child: an idle cluster's
/// timers wake thousands of times a second across its processes, and every task scheduled on the way is paid for.
public final class Wakeup: Sendable {
    /// A deadline's timer; `DispatchWorkItem.cancel()` may be called from any thread.
    private struct Timer: @unchecked Sendable {
        let item: DispatchWorkItem
    }

    private struct Waiter {
        let continuation: CheckedContinuation<Void, Never>
        var timer: Timer?
    }

    private struct State {
        var poked = false
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A wakeup with nobody asleep and no poke pending.
    public init() {}

    /// Wakes every sleeper (or makes the next wait return at once).
    public func poke() {
        let waiters = state.withLock { state -> [Waiter] in
            if state.waiters.isEmpty {
                state.poked = true
                return []
            }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { resume(waiter) }
    }

    /// Returns at `deadline` (never, when nil), on a poke, or when the task is cancelled.
    public func wait(until deadline: MonotonicInstant?) async {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = MonotonicInstant.now()
                let resumeNow = state.withLock { state -> Bool in
                    if state.poked {
                        state.poked = false
                        return true
                    }
                    if Task.isCancelled { return true }
                    if let deadline, deadline <= now { return true }
                    state.waiters[id] = Waiter(continuation: continuation)
                    return false
                }
                if resumeNow {
                    continuation.resume()
                    return
                }
                guard let deadline else { return }
                let timer = Timer(item: DispatchWorkItem { [self] in
                    if let waiter = state.withLock({ $0.waiters.removeValue(forKey: id) }) { waiter.continuation.resume() }
                })
                // Registered under the lock, so that whoever takes the waiter also cancels its timer.
                let armed = state.withLock { state -> Bool in
                    guard state.waiters[id] != nil else { return false }
                    state.waiters[id]?.timer = timer
                    return true
                }
                if armed {
                    DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: (deadline - now).nanoseconds)), execute: timer.item)
                }
            }
        } onCancel: {
            if let waiter = state.withLock({ $0.waiters.removeValue(forKey: id) }) { resume(waiter) }
        }
    }

    private func resume(_ waiter: Waiter) {
        waiter.timer?.item.cancel()
        waiter.continuation.resume()
    }
}
