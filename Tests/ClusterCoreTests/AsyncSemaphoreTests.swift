import ClusterCore
import Synchronization
import Testing

@Suite("async semaphore")
struct AsyncSemaphoreTests {
    final class Counters: Sendable {
        let inside = Atomic<Int>(0)
        let maxInside = Atomic<Int>(0)
    }

    /// Many tasks on two cores take and give back one permit as fast as they can. A `release()` that lands between
    /// an acquirer's "no permit" and its enqueue would leave the permit free and every task asleep: this test
    /// would then never finish (the time limit fails it).
    @Test(.timeLimit(.minutes(1)))
    func noWakeUpIsLostUnderContention() async throws {
        let semaphore = AsyncSemaphore(permits: 1)
        let counters = Counters()
        let rounds = 200_000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    for _ in 0..<rounds {
                        try await semaphore.acquire()
                        let now = counters.inside.add(1, ordering: .relaxed).newValue
                        _ = counters.maxInside.max(now, ordering: .relaxed)
                        counters.inside.subtract(1, ordering: .relaxed)
                        semaphore.release()
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(counters.maxInside.load(ordering: .relaxed) == 1)
        #expect(semaphore.available == 1)
    }

    @Test func aCancelledWaiterLeavesTheQueueAndThePermitStays() async throws {
        let semaphore = AsyncSemaphore(permits: 1)
        try await semaphore.acquire()
        let waiter = Task { try await semaphore.acquire() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        semaphore.release()
        #expect(semaphore.available == 1)
        try await semaphore.acquire()
        #expect(semaphore.available == 0)
    }
}
