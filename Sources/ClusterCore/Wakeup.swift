import Synchronization

/// Lets tasks sleep until a deadline or until another task pokes them, whichever comes first — the timer of a
/// state machine whose next deadline can move earlier, or a wait for "something changed". No polling: a poke
/// resumes every sleeper at once; a poke with nobody asleep makes the next wait return at once.
public final class Wakeup: Sendable {
    private struct State {
        var poked = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A wakeup with nobody asleep and no poke pending.
    public init() {}

    /// Wakes every sleeper (or makes the next wait return at once).
    public func poke() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if state.waiters.isEmpty {
                state.poked = true
                return []
            }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns at `deadline` (never, when nil), on a poke, or when the task is cancelled.
    public func wait(until deadline: MonotonicInstant?) async {
        await withTaskGroup(of: Void.self) { group in
            if let deadline {
                group.addTask {
                    let wait = deadline - MonotonicInstant.now()
                    if wait > .zero { try? await Task.sleep(for: wait) }
                }
            }
            group.addTask { await self.waitForPoke() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForPoke() async {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.poked {
                        state.poked = false
                        return true
                    }
                    if Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
