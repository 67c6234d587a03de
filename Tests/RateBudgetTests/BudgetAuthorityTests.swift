import ClusterCore
import RateBudget
import Testing

@Suite("budget authority")
struct BudgetAuthorityTests {
    let t0 = MonotonicInstant(nanoseconds: 100_000_000_000)

    func authority(rate: Double = 50, burst: Int = 10, lease: Int = 4) -> BudgetAuthority {
        BudgetAuthority(configuration: .init(rate: rate, burst: burst, leaseSize: lease, leaseTTL: .milliseconds(250)))
    }

    func request(_ requester: UInt64, _ id: UInt64, route: String = "r", count: Int = 4) -> BudgetAuthority.Request {
        .init(requester: requester, id: id, route: route, count: count)
    }

    /// Four workers each asking again as soon as a grant comes, for `seconds`: what each got.
    func saturate(_ authority: inout BudgetAuthority, workers: Int, seconds: Int) -> [UInt64: Int] {
        var now = t0
        var nextID: UInt64 = 0
        var got: [UInt64: Int] = [:]
        func ask(_ worker: UInt64) -> [BudgetAuthority.Grant] {
            nextID += 1
            return authority.request(request(worker, nextID), now: now)
        }
        var grants: [BudgetAuthority.Grant] = []
        for worker in 0..<UInt64(workers) { grants += ask(worker) }
        let end = t0 + .seconds(seconds)
        while now < end {
            while let grant = grants.popLast() {
                got[grant.requester, default: 0] += grant.count
                grants += ask(grant.requester)
            }
            guard let deadline = authority.nextDeadline else { break }
            now = max(now, deadline)
            grants = authority.tick(now: now)
        }
        return got
    }

    @Test func theClusterNeverExceedsTheRateAndUsesAllOfIt() {
        var a = authority()
        let got = saturate(&a, workers: 4, seconds: 10)
        let total = got.values.reduce(0, +)
        // At most burst + rate x time, and no less than the rate allows.
        #expect(total <= 10 + 50 * 10)
        #expect(total >= 50 * 10)
    }

    /// Several hosts: each authority spends its share of the whole; the shares' sum never exceeds it.
    @Test func hostsSpendTheirSharesAndTogetherNoMoreThanTheWhole() {
        var a = authority(rate: 60, burst: 12)
        var b = authority(rate: 60, burst: 12)
        a.setShare(1.0 / 3, now: t0)
        b.setShare(2.0 / 3, now: t0)
        let fromA = saturate(&a, workers: 2, seconds: 10).values.reduce(0, +)
        let fromB = saturate(&b, workers: 4, seconds: 10).values.reduce(0, +)
        #expect(fromA >= 20 * 10 && fromA <= 4 + 20 * 10)
        #expect(fromB >= 40 * 10 && fromB <= 8 + 40 * 10)
        #expect(fromA + fromB <= 12 + 60 * 10)
        // A host without shards spends nothing; a smaller share does not refill what was spent.
        var idle = authority(rate: 60, burst: 12)
        idle.setShare(0, now: t0)
        #expect(saturate(&idle, workers: 2, seconds: 10).values.reduce(0, +) <= 1)
        var shrinking = authority(rate: 60, burst: 12)
        #expect(!shrinking.request(request(1, 1, count: 4), now: t0).isEmpty)
        shrinking.setShare(0.5, now: t0)
        #expect(shrinking.share == 0.5)
    }

    @Test func equalDemandGetsEqualShares() {
        var a = authority()
        let got = saturate(&a, workers: 4, seconds: 10)
        let shares = got.values.map(Double.init)
        let mean = shares.reduce(0, +) / 4
        #expect(shares.allSatisfy { abs($0 - mean) <= 0.05 * mean }, "\(got)")
    }

    @Test func aLeaseGetsWhatIsThereAndTheRestWaits() {
        var a = authority(burst: 6)
        #expect(a.request(request(1, 1, count: 4), now: t0).map(\.count) == [4])
        #expect(a.request(request(2, 2, count: 4), now: t0).map(\.count) == [2])
        #expect(a.request(request(3, 3, count: 4), now: t0) == [])
        #expect(a.waiting == 1)
        #expect(a.nextDeadline == t0 + .milliseconds(20))
        #expect(a.tick(now: t0 + .milliseconds(20)).map(\.requester) == [3])
    }

    @Test func returnedTokensServeOthers() {
        var a = authority(burst: 4)
        _ = a.request(request(1, 1, count: 4), now: t0)
        #expect(a.request(request(2, 2, count: 2), now: t0) == [])
        #expect(a.giveBack(requester: 1, route: "r", count: 3, now: t0).map(\.count) == [2])
    }

    @Test func whatAPeerSendsIsBoundedAndCannotTrap() {
        var a = authority(rate: 100, burst: 10)
        _ = a.request(request(1, 1, count: 4), now: t0)
        // Returning more than was granted, or far more than an Int32 holds, gives back what was granted: no trap,
        // no tokens out of thin air.
        #expect(a.giveBack(requester: 1, route: "r", count: Int(Int32.max), now: t0) == [])
        #expect(a.giveBack(requester: 2, route: "r", count: 1 << 40, now: t0) == [])
        // Tokens granted more than a lease TTL ago cannot be returned.
        _ = a.request(request(3, 2, count: 4), now: t0)
        _ = a.request(request(4, 3, count: 8), now: t0)
        #expect(a.giveBack(requester: 3, route: "r", count: 4, now: t0 + .seconds(1)).isEmpty)
        // A lease request for 2^31 tokens asks for one lease.
        var b = authority(rate: 100, burst: 100)
        #expect(b.request(request(1, 1, count: Int(Int32.max)), now: t0).map(\.count) == [4])
        #expect(b.request(request(1, 2, count: -5), now: t0).map(\.count) == [1])
        // A 429 report of 2^31 ms pauses for at most a minute.
        let until = b.rateLimited(route: "r", retryAfter: .milliseconds(Int64(Int32.max)), now: t0)
        #expect(until == t0 + BudgetAuthority.maxPause)
        // Route names from a peer are bounded in length and in number.
        for i in 0..<1000 { _ = b.request(request(1, UInt64(10 + i), route: "route-\(i)-" + String(repeating: "x", count: 500)), now: t0) }
        #expect(b.knownRoutes.count <= BudgetAuthority.maxRoutes + 1)
        #expect(b.knownRoutes.allSatisfy { $0.utf8.count <= BudgetAuthority.maxRouteLength })
    }

    @Test func aPauseFromAnotherHostHoldsTheRouteAndTellsOnlyWhatIsNew() {
        var a = authority(rate: 100, burst: 100)
        let first = a.pause(route: "hot", until: t0 + .seconds(2), now: t0)
        #expect(first)
        #expect(a.request(request(1, 1, route: "hot"), now: t0 + .milliseconds(10)) == [])
        #expect(a.request(request(1, 2, route: "cold"), now: t0 + .milliseconds(10)).map(\.id) == [2])
        // The same pause again, or a shorter one, is nothing new (the workers were told); a longer one is.
        let again = a.pause(route: "hot", until: t0 + .seconds(2), now: t0 + .milliseconds(20))
        let shorter = a.pause(route: "hot", until: t0 + .seconds(1), now: t0 + .milliseconds(20))
        let longer = a.pause(route: "hot", until: t0 + .seconds(3), now: t0 + .milliseconds(20))
        #expect(!again && !shorter && longer)
        #expect(a.nextDeadline == t0 + .seconds(3))
        #expect(a.tick(now: t0 + .seconds(3)).map(\.id) == [1])
        // At most a minute, whatever the store says; a pause already over is nothing.
        let far = a.pause(route: "far", until: t0 + .seconds(3600), now: t0)
        #expect(far)
        #expect(a.request(request(1, 3, route: "far"), now: t0 + BudgetAuthority.maxPause).map(\.id) == [3])
        let past = a.pause(route: "past", until: t0, now: t0 + .seconds(1))
        #expect(!past)
    }

    @Test func aRateLimitedRoutePausesAndLearnsItsLimit() {
        var a = authority(rate: 100, burst: 100)
        // 20 tokens went to route "hot" just before its 429.
        for i in 0..<5 { _ = a.request(request(1, UInt64(i), route: "hot", count: 4), now: t0) }
        let until = a.rateLimited(route: "hot", retryAfter: .seconds(1), now: t0 + .milliseconds(10))
        #expect(until == t0 + .milliseconds(1010))
        // Paused for everyone; other routes still go.
        #expect(a.request(request(2, 10, route: "hot"), now: t0 + .milliseconds(20)) == [])
        #expect(a.request(request(2, 11, route: "cold"), now: t0 + .milliseconds(20)).map(\.id) == [11])
        #expect(a.nextDeadline == until)
        // After the pause the route is held below the 20/s it had reached.
        var granted = a.tick(now: until).reduce(0) { $0 + $1.count }
        var now = until
        for i in 0..<200 {
            now = now + .milliseconds(5)
            granted += a.request(request(3, UInt64(100 + i), route: "hot", count: 1), now: now).count
            granted += a.tick(now: now).count
        }
        #expect(granted <= 18 + 4 + 1, "\(granted) grants in one second on a route learned at 18/s")
    }

    @Test func requestsOfAGoneWorkerLeave() {
        var a = authority(burst: 1)
        _ = a.request(request(1, 1, count: 1), now: t0)
        _ = a.request(request(2, 2, count: 1), now: t0)
        _ = a.request(request(3, 3, count: 1), now: t0)
        #expect(a.requesterGone(2, now: t0) == [])
        #expect(a.cancel(requester: 3, id: 3, now: t0) == [])
        #expect(a.waiting == 0)
    }
}
