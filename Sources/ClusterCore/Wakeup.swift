import Dispatch
import Synchronization

/// Lets tasks sleep until a deadline or until another task pokes them, whichever comes first — the timer of a
/// state machine whose next deadline can move earlier, or a wait for "something changed". No polling: a poke
/// resumes every sleeper at once; a poke with nobody asleep makes the next wait return at once.
///
/// A wait is one continuation, resumed by whichever comes first: a poke, cancellation, or a Dispatch timer source
/// for its deadline (cancelled, so disarmed, when something else came first). Not a task group with a sleeping
/// child: an idle cluster's timers wake thousands of times a second across its processes, and every task and
/// timer on the way is paid for.
public final class Wakeup: Sendable {
    /// A deadline's timer; a Dispatch source may be cancelled from any thread.
    private struct Timer: @unchecked Sendable {
        let source: any DispatchSourceTimer
    }

    private struct Waiter {
        let continuation: CheckedContinuation<Void, Never>
        let timer: Timer?
    }

    private struct State {
        var poked = false
        var waiters: [UInt64: Waiter] = [:]
    }

    private let state = Mutex(State())
    private let nextID = Atomic<UInt64>(0)

    /// A wakeup with nobody asleep and no poke pending.
    public init() {}

    /// Tasks waiting now (for tests that must know a waiter is asleep before they poke).
    var sleepers: Int { state.withLock { $0.waiters.count } }

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

    /// Pokes when a deadline moved earlier than `before` (or appeared): a sleeper waiting for `before` must wake to
    /// wait for the new one. A deadline that moved later needs no poke — the sleeper wakes at the old one, finds
    /// nothing due and sleeps again — so an owner whose deadline moves with every message wakes once per deadline,
    /// not once per message.
    public func poke(ifEarlier after: MonotonicInstant?, than before: MonotonicInstant?) {
        guard let after else { return }
        if before.map({ after < $0 }) ?? true { poke() }
    }

    /// Returns at `deadline` (never, when nil), on a poke, or when the task is cancelled.
    public func wait(until deadline: MonotonicInstant?) async {
        let id = nextID.add(1, ordering: .relaxed).newValue
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = MonotonicInstant.now()
                let resumeNow = state.withLock { state -> Bool in
                    if state.poked {
                        state.poked = false
                        return true
                    }
                    if Task.isCancelled { return true }
                    guard let deadline else {
                        state.waiters[id] = Waiter(continuation: continuation, timer: nil)
                        return false
                    }
                    if deadline <= now { return true }
                    // Armed under the lock: whoever takes the waiter out also cancels its timer, and the timer's
                    // handler, which takes the lock, cannot run before the waiter is in.
                    let source = DispatchSource.makeTimerSource(queue: .global())
                    source.schedule(deadline: .now() + .nanoseconds(Int(clamping: (deadline - now).nanoseconds)))
                    source.setEventHandler { [self] in
                        if let waiter = self.state.withLock({ $0.waiters.removeValue(forKey: id) }) { self.resume(waiter) }
                    }
                    state.waiters[id] = Waiter(continuation: continuation, timer: Timer(source: source))
                    source.activate()
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            if let waiter = state.withLock({ $0.waiters.removeValue(forKey: id) }) { resume(waiter) }
        }
    }

    private func resume(_ waiter: Waiter) {
        waiter.timer?.source.cancel()
        waiter.continuation.resume()
    }
}
