@testable import ClusterCore
import Synchronization
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
        let sleepers = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<3 { group.addTask { await wakeup.wait(until: .now() + .seconds(3600)) } }
                group.addTask { await wakeup.wait(until: nil) }
                await group.waitForAll()
            }
        }
        // One poke, once all four are asleep: every one wakes (the hour-long deadlines are far away).
        while wakeup.sleepers < 4 { await Task.yield() }
        wakeup.poke()
        await sleepers.value
    }

    @Test func cancellationEndsTheWait() async {
        let wakeup = Wakeup()
        let sleeper = Task { await wakeup.wait(until: .now() + .seconds(3600)) }
        sleeper.cancel()
        await sleeper.value
    }

    /// A poke racing a deadline that is about to fire resumes the waiter once (a second resume would trap).
    @Test func pokesRacingDeadlinesResumeEachWaitOnce() async {
        let wakeup = Wakeup()
        let poker = Task {
            while !Task.isCancelled {
                wakeup.poke()
                await Task.yield()
            }
        }
        for _ in 0..<5000 { await wakeup.wait(until: .now() + .microseconds(1)) }
        poker.cancel()
        await poker.value
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

@Suite("one computation for many askers")
struct SingleFlightTests {
    @Test func concurrentAskersShareOneComputationAndAFreshResult() async {
        let flight = SingleFlight<Int>(freshFor: .seconds(60))
        let runs = Mutex(0)
        let gate = AsyncSignal<Void>()
        let compute: @Sendable () async -> Int = {
            let run = runs.withLock { runs -> Int in
                runs += 1
                return runs
            }
            _ = try? await gate.wait()
            return run
        }
        async let a = flight.value(compute)
        async let b = flight.value(compute)
        async let c = flight.value(compute)
        // Every asker waits on the one computation; once it ends, all get its result, and a later ask the cached one.
        while runs.withLock({ $0 }) == 0 { await Task.yield() }
        gate.set(())
        let results = await [a, b, c]
        #expect(results == [1, 1, 1])
        #expect(await flight.value(compute) == 1)
        #expect(runs.withLock { $0 } == 1)
    }
}
