import ClusterCore
import RateBudget
import Testing

@Suite("GCRA")
struct GCRATests {
    let t0 = MonotonicInstant(nanoseconds: 10_000_000_000)

    @Test func burstThenRate() {
        var bucket = GCRA(rate: 10, burst: 5)
        let first = (0..<6).map { _ in bucket.take(now: t0) }
        #expect(first == [true, true, true, true, true, false])
        #expect(bucket.wait(now: t0) == .milliseconds(100))
        let later = [bucket.take(now: t0 + .milliseconds(100)), bucket.take(now: t0 + .milliseconds(150))]
        #expect(later == [true, false])
        #expect(bucket.available(now: t0 + .seconds(10)) == 5)
    }

    @Test func reservationsQueueInOrder() {
        var bucket = GCRA(rate: 10, burst: 2)
        let times = (0..<5).map { _ in bucket.reserve(now: t0) }
        #expect(times.map { ($0 - t0).milliseconds } == [0, 0, 100, 200, 300])
    }

    @Test func refundGivesTokensBack() {
        var bucket = GCRA(rate: 10, burst: 4)
        for _ in 0..<4 { _ = bucket.take(now: t0) }
        bucket.refund(2, now: t0)
        #expect(bucket.available(now: t0) == 2)
        bucket.refund(10, now: t0)
        #expect(bucket.available(now: t0) == 4)
    }

    @Test func longRunRateIsExact() {
        var bucket = GCRA(rate: 50, burst: 10)
        var now = t0
        var taken = 0
        // 10 s in 1 ms steps, taking whenever possible.
        for _ in 0..<10_000 {
            while bucket.take(now: now) { taken += 1 }
            now = now + .milliseconds(1)
        }
        #expect(taken == 10 + 500 - 1 || taken == 10 + 500)
    }
}
