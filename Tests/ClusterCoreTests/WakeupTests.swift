import ClusterCore
import Testing

@Suite("wakeup", .timeLimit(.minutes(1)))
struct WakeupTests {
    @Test func aPokeWithNobodyAsleepMakesTheNextWaitReturnAtOnce() async {
        let wakeup = Wakeup()
        wakeup.poke()
        await wakeup.wait(until: nil)  // would never return without the pending poke
    }

    @Test func aDeadlineEndsTheWait() async {
        let wakeup = Wakeup()
        let start = MonotonicInstant.now()
        await wakeup.wait(until: start + .milliseconds(20))
        #expect(MonotonicInstant.now() - start >= .milliseconds(20))
        await wakeup.wait(until: start)  // already past: at once
    }

    @Test func aPokeWakesEverySleeperBeforeItsDeadline() async {
        let wakeup = Wakeup()
        let woken = AsyncSignal<Void>()
        let sleepers = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<3 { group.addTask { await wakeup.wait(until: .now() + .seconds(3600)) } }
                group.addTask { await wakeup.wait(until: nil) }
                await group.waitForAll()
            }
            woken.set(())
        }
        // Poke until every sleeper is woken (a poke before one is asleep only wakes those asleep, plus the next wait).
        while woken.current == nil {
            wakeup.poke()
            await Task.yield()
        }
        await sleepers.value
    }

    @Test func cancellationEndsTheWait() async {
        let wakeup = Wakeup()
        let sleeper = Task { await wakeup.wait(until: .now() + .seconds(3600)) }
        sleeper.cancel()
        await sleeper.value
    }

    @Test func manyShortWaitsEachEndAtTheirDeadline() async {
        let wakeup = Wakeup()
        for _ in 0..<200 {
            let deadline = MonotonicInstant.now() + .microseconds(200)
            await wakeup.wait(until: deadline)
            #expect(MonotonicInstant.now() >= deadline)
        }
    }
}
