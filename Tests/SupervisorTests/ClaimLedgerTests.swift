import ClusterCore
import ClusterProtocol
import Supervisor
import Testing

@Suite("claim ledger")
struct ClaimLedgerTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)

    @Test func oneHandlerPerEvent() {
        var ledger = ClaimLedger(ttl: .seconds(60))
        #expect(ledger.claim(["a", "b"], by: 1, now: t0) == [.handle, .handle])
        // A replay to the same worker, and a duplicate on another: neither starts a second handler.
        #expect(ledger.claim(["a"], by: 1, now: t0) == [.skip])
        #expect(ledger.claim(["a"], by: 2, now: t0) == [.wait])
        #expect(ledger.complete(["a"], by: 1, now: t0) == [.init(requester: 2, key: "a", decision: .skip)])
        #expect(ledger.claim(["a"], by: 3, now: t0) == [.skip])
    }

    @Test func aDeadHoldersEventsGoToTheNextAsker() {
        var ledger = ClaimLedger(ttl: .seconds(60))
        _ = ledger.claim(["a", "b"], by: 1, now: t0)
        _ = ledger.claim(["a"], by: 2, now: t0)
        // Worker 1 is killed: its replacement (3) resumes and asks again; 2 was waiting for "a".
        #expect(ledger.requesterGone(1) == [.init(requester: 2, key: "a", decision: .handle)])
        #expect(ledger.claim(["b"], by: 3, now: t0) == [.handle])
        #expect(ledger.claim(["a"], by: 3, now: t0) == [.wait])
        #expect(ledger.release(["a"], by: 2) == [.init(requester: 3, key: "a", decision: .handle)])
    }

    @Test func aRetiredLayoutStartsNoHandlerButFinishesItsOwn() {
        var ledger = ClaimLedger(ttl: .seconds(60))
        _ = ledger.claim(["a"], by: 1, now: t0)
        ledger.retire(1)
        #expect(ledger.claim(["b"], by: 1, now: t0) == [.skip])
        #expect(ledger.claim(["b"], by: 2, now: t0) == [.handle])
        #expect(ledger.claim(["a"], by: 2, now: t0) == [.wait])
        #expect(ledger.complete(["a"], by: 1, now: t0) == [.init(requester: 2, key: "a", decision: .skip)])
    }

    @Test func handledEventsAreRememberedForTheTimeToLive() {
        var ledger = ClaimLedger(ttl: .seconds(10))
        _ = ledger.claim(["a"], by: 1, now: t0)
        _ = ledger.complete(["a"], by: 1, now: t0)
        #expect(ledger.claim(["a"], by: 2, now: t0 + .seconds(9)) == [.skip])
        #expect(ledger.claim(["a"], by: 2, now: t0 + .seconds(11)) == [.handle])
        #expect(ledger.takeUnpersisted().map(\.key) == ["a"])
        #expect(ledger.takeUnpersisted().isEmpty)
        var restarted = ClaimLedger(ttl: .seconds(10))
        restarted.remember([("x", t0)])
        #expect(restarted.claim(["x"], by: 1, now: t0 + .seconds(1)) == [.skip])
    }
}

@Suite("cluster layouts")
struct ClusterLayoutsTests {
    @Test func eventsGoToTheLayoutOfTheirGeneration() {
        var supervisor = ClusterConfig.defaults.supervisor
        supervisor.helloTimeout = .seconds(5)
        let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)
        var layouts = ClusterLayouts(active: ClusterStateMachine(shards: 2, timings: .init(supervisor), restart: restartConfig))
        _ = layouts.handle(.start, now: t0)
        let base = layouts.nextGenerationBase
        let incoming = layouts.beginIncoming(ClusterStateMachine(shards: 3, timings: .init(supervisor), restart: restartConfig, generationBase: base))
        let spawns = layouts.handle(.start, in: incoming, now: t0)
        #expect(spawns.map(\.0) == [incoming, incoming, incoming])
        guard case .spawn(_, let generation, let shard) = spawns[0].1 else { Issue.record("\(spawns)"); return }
        #expect(ClusterLayouts.layoutID(ofGeneration: generation) == incoming)
        #expect(shard == ShardID(0, of: 3))
        _ = layouts.handle(.spawned(ordinal: 0, generation: generation, pid: 4242), now: t0)
        #expect(layouts.layout(incoming)?.machine.worker(ordinal: 0)?.pid == 4242)
        #expect(layouts.active.machine.worker(ordinal: 0)?.pid == nil)
        #expect(layouts.switchOver() == 0)
        #expect(layouts.active.id == incoming)
        #expect(layouts.handle(.exited(pid: 4242, status: .signaled(9)), now: t0).allSatisfy { $0.0 == incoming })
    }
}
