import ClusterCore
import Testing

@Suite("identify ledger")
struct IdentifyLedgerTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)

    func ledger(mc: Int, remaining: Int = 1000) -> IdentifyLedger {
        IdentifyLedger(configuration: .init(maxConcurrency: mc, window: .seconds(5), margin: .milliseconds(50), slotTimeout: .seconds(10)), remaining: remaining)
    }

    /// Runs a launch of `shards` where every holder acknowledges at once; returns the grant time of each shard.
    func launch(shards: Int, mc: Int) -> [Int: MonotonicInstant] {
        var l = ledger(mc: mc)
        var now = t0
        var grants: [Int: MonotonicInstant] = [:]
        var pending = l.tick(now: now)
        for shard in 0..<shards { pending += l.request(UInt64(shard), shard: shard, now: now) }
        while grants.count < shards {
            for decision in pending {
                guard case .granted(let id) = decision else { Issue.record("\(decision)"); return grants }
                grants[Int(id)] = now
                pending = []
                _ = l.sent(id, now: now)
            }
            pending = l.tick(now: now)
            if pending.isEmpty, let next = l.nextDeadline { now = next; pending = l.tick(now: now) }
        }
        return grants
    }

    @Test func maxConcurrencyOneSpacesEveryIdentifyByAWindow() {
        let grants = launch(shards: 4, mc: 1)
        let times = (0..<4).map { grants[$0]!.nanoseconds }
        #expect(times == [0, 1, 2, 3].map { t0.nanoseconds + Int64($0) * 5_050_000_000 })
    }

    @Test func maxConcurrencyAtLeastNGrantsAllAtOnce() {
        let grants = launch(shards: 16, mc: 16)
        #expect(Set(grants.values) == [t0])
    }

    @Test func bucketsAreShardModConcurrency() {
        let grants = launch(shards: 8, mc: 4)
        for shard in 0..<4 { #expect(grants[shard] == t0) }
        for shard in 4..<8 { #expect(grants[shard] == t0 + .milliseconds(5050)) }
    }

    @Test func theWindowStartsWhenTheIdentifyLeaves() {
        var l = ledger(mc: 1)
        #expect(l.request(1, shard: 0, now: t0) == [.granted(1)])
        #expect(l.request(2, shard: 1, now: t0) == [])
        // The holder needed 2 s to send its Identify.
        #expect(l.sent(1, now: t0 + .seconds(2)) == [])
        #expect(l.nextDeadline == t0 + .seconds(2) + .milliseconds(5050))
        #expect(l.tick(now: t0 + .milliseconds(5050)) == [])
        #expect(l.tick(now: t0 + .milliseconds(7050)) == [.granted(2)])
    }

    @Test func aStuckHolderBlocksOnlyItsBucketAndOnlyUntilTheSlotTimeout() {
        var l = ledger(mc: 2)
        #expect(l.request(1, shard: 0, now: t0) == [.granted(1)])
        #expect(l.request(2, shard: 2, now: t0) == [])
        // Another bucket is unaffected.
        #expect(l.request(3, shard: 1, now: t0) == [.granted(3)])
        // Shard 0 never acknowledges: after the slot timeout the grant counts as used then.
        #expect(l.nextDeadline == t0 + .seconds(10))
        #expect(l.tick(now: t0 + .seconds(10)) == [])
        #expect(l.tick(now: t0 + .seconds(10) + .milliseconds(5050)) == [.granted(2)])
    }

    @Test func aDeadHolderCountsItsGrantAsUsedAtDeath() {
        var l = ledger(mc: 1)
        _ = l.request(1, shard: 0, now: t0)
        _ = l.request(2, shard: 1, now: t0)
        #expect(l.cancel(1, now: t0 + .seconds(1)) == [])
        #expect(l.tick(now: t0 + .seconds(1) + .milliseconds(5050)) == [.granted(2)])
        // A queued request that is cancelled never gets a grant.
        _ = l.request(3, shard: 2, now: t0 + .seconds(7))
        _ = l.cancel(3, now: t0 + .seconds(7))
        #expect(l.tick(now: t0 + .seconds(60)) == [])
    }

    @Test func theDailyBudgetIsNeverExceeded() {
        var l = ledger(mc: 4, remaining: 2)
        var decisions: [IdentifyLedger.Decision] = []
        for shard in 0..<4 { decisions += l.request(UInt64(shard), shard: shard, now: t0) }
        #expect(decisions.filter { if case .granted = $0 { return true } else { return false } }.count == 2)
        #expect(decisions.filter { if case .denied = $0 { return true } else { return false } }.count == 2)
        #expect(l.remaining == 0)
    }

    @Test func theDailyBudgetFollowsThePlatformAfterAReset() {
        var l = ledger(mc: 4, remaining: 1)
        _ = l.request(0, shard: 0, now: t0)
        #expect(l.request(1, shard: 1, now: t0) == [.denied(1, reason: "the daily session start limit is spent")])
        // The platform's day reset: a fresh /gateway/bot says so.
        l.updateRemaining(1000)
        #expect(l.request(2, shard: 2, now: t0) == [.granted(2)])
        #expect(l.remaining == 999)
    }

    @Test func minimumLaunchDuration() {
        #expect(IdentifyLedger.minimumDuration(identifies: 16, maxConcurrency: 1, window: .seconds(5)) == .seconds(75))
        #expect(IdentifyLedger.minimumDuration(identifies: 16, maxConcurrency: 4, window: .seconds(1)) == .seconds(3))
        #expect(IdentifyLedger.minimumDuration(identifies: 16, maxConcurrency: 16, window: .seconds(1)) == .zero)
    }
}
