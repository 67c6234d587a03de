import ClusterCore
import ClusterProtocol
import Supervisor
import Testing

/// One host of a cluster of several hosts following a rescale that the store carries: the store's layout, as each
/// lease round reads it, decides when the new layout starts, switches or is given up (`SupervisorCore.follow`).
@Suite("a rescale across hosts, as one host follows the store (no processes)")
struct RescaleAcrossHostsTests {
    /// A host of a 2-shard cluster that holds shard 1 and runs it, ready.
    func serving() -> Supervised {
        var s = Supervised(shards: 2, leased: true)
        s.feed(.cluster(.start))
        s.hold([1], of: 2, version: 1)
        s.ready(0)
        return s
    }

    @Test func theNewLayoutStartsOnLeasesAndSwitchesOnlyWhenTheStoreSays() {
        var s = serving()
        #expect(s.workers(0).map(\.state) == [.elsewhere, .ready])
        let begun = s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        #expect(s.layout(1)?.role == .incoming && s.workers(1).allSatisfy { $0.state == .elsewhere })
        #expect(progress(begun) == ["rescale 2 -> 3 shards across hosts: this host starts the new layout's shards it takes", "new shards ready 0 here (3 in all)"])
        // The new layout's leases start its workers (dispatch held: it is incoming); the old one's go to the old.
        let started = s.hold([1, 2], of: 3, version: 1)
        #expect(ClusterStateMachineTests.spawnedOrdinals(started.compactMap { if case .worker(1, let a) = $0 { a } else { nil } }) == [1, 2])
        s.hold([1], of: 2, version: 2)
        #expect(s.workers(0)[1].state == .ready)
        // Every new worker of this host ready: no switch (the other hosts' may not be), until the store flips.
        let ready = s.ready(1)
        #expect(!ready.contains(.startDispatch(layout: 1)))
        #expect(s.feed(.storeLayout(serving: 2, next: 3, seed: 1)).isEmpty)
        let switched = s.feed(.storeLayout(serving: 3, next: nil, seed: 1))
        #expect(switched.contains(.startDispatch(layout: 1)) && switched.contains(.finishDispatch(layout: 0)))
        #expect(s.core.layouts.active.id == 1 && s.layout(0)?.role == .retiring)
        let fenced = s.feed(.dispatchFinished(generation: s.workers(0)[1].generation))
        #expect(terminated(fenced, in: 0) == 1)
        let done = s.exitTerminated(fenced)
        #expect(finished(done)?.ok == true && finished(done)?.text.hasPrefix("scaled 2 -> 3 shards") == true)
        #expect(s.core.layouts.layouts.map(\.id) == [1])
    }

    /// The asks for the fence before the switch in `actions`: the generations asked, in the serving layout (0).
    func fenceAsked(_ actions: [SupervisorCore.Action]) -> [UInt64] {
        actions.compactMap { if case .finishDispatchOf(0, let generation, _) = $0 { generation } else { nil } }
    }

    /// Once the store says every new shard is ready, each serving worker here is asked for the fence once per
    /// process, and its shard is reported fenced once it answered; a worker that comes back (a crash, or a lease
    /// taken over from a host that died) is asked again when ready, and counts only once it answered.
    @Test func theServingWorkersPassTheFenceBeforeTheSwitchEachProcessOnce() throws {
        var s = serving()
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        s.hold([1, 2], of: 3, version: 1)
        s.ready(1)
        // Not every new shard of the cluster is ready: nothing is fenced yet.
        #expect(fenceAsked(s.feed(.storeLayout(serving: 2, next: 3, nextReady: false, seed: 1))).isEmpty)
        #expect(s.core.fencedShards(total: 2).isEmpty)
        let first = s.workers(0)[1].generation
        let asked = s.feed(.storeLayout(serving: 2, next: 3, nextReady: true, seed: 1))
        #expect(fenceAsked(asked) == [first])
        #expect(progress(asked).contains { $0.hasPrefix("every host's new shards ready") })
        #expect(fenceAsked(s.feed(.storeLayout(serving: 2, next: 3, nextReady: true, seed: 1))).isEmpty)
        #expect(s.core.fencedShards(total: 2).isEmpty)
        s.passFence(first)
        #expect(s.core.fencedShards(total: 2) == [1])
        // The worker crashes: its shard is not fenced until its replacement resumed and answered.
        s.feed(.cluster(.exited(pid: s.workers(0)[1].pid!, status: .signaled(9))))
        #expect(s.core.fencedShards(total: 2).isEmpty)
        s.advance(.seconds(2))
        s.feed(.cluster(.tick))
        let second = s.workers(0)[1].generation
        #expect(second != first)
        let again = s.ready(0, ordinals: [1])
        #expect(fenceAsked(again) == [second])
        #expect(s.core.fencedShards(total: 2).isEmpty)
        s.passFence(second)
        // A lease of a host that died, taken over here: its worker (resuming) is asked once ready.
        s.hold([0, 1], of: 2, version: 3)
        #expect(s.core.fencedShards(total: 2) == [1])
        let takenOver = s.ready(0, ordinals: [0])
        #expect(fenceAsked(takenOver) == [s.workers(0)[0].generation])
        s.passFence(s.workers(0)[0].generation)
        #expect(s.core.fencedShards(total: 2) == [0, 1])
        #expect(s.core.fencedShards(total: 3).isEmpty)
        // A new shard not ready any more: the fence is forgotten, and asked again of every serving worker once
        // every new shard is ready again.
        #expect(fenceAsked(s.feed(.storeLayout(serving: 2, next: 3, nextReady: false, seed: 1))).isEmpty)
        #expect(s.core.fencedShards(total: 2).isEmpty)
        #expect(fenceAsked(s.feed(.storeLayout(serving: 2, next: 3, nextReady: true, seed: 1))).sorted() == s.workers(0).map(\.generation).sorted())
        // An answer to the fence forgotten, come late, does not count for the new one.
        let stale = try #require(s.core.change?.fence?.id)
        s.feed(.dispatchFinished(generation: s.workers(0)[0].generation, fence: stale - 1))
        #expect(s.core.fencedShards(total: 2).isEmpty)
        for generation in s.workers(0).map(\.generation) { s.passFence(generation) }
        #expect(s.core.fencedShards(total: 2) == [0, 1])
        // The switch: the fence after it is asked of every serving worker, as on one host.
        let switched = s.feed(.storeLayout(serving: 3, next: nil, seed: 1))
        #expect(switched.contains(.startDispatch(layout: 1)) && switched.contains(.finishDispatch(layout: 0)))
        #expect(s.core.fencedShards(total: 2).isEmpty)
    }

    /// A serving worker failed for good here (a fatal close: 4011 is what asks for a reshard) owes no fence: its
    /// lease counts as fenced, or the rescale that would mend it could never switch.
    @Test func aServingWorkerFailedForGoodDoesNotHoldTheSwitch() {
        var s = serving()
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        s.feed(.cluster(.gatewayFailed(ordinal: 1, generation: s.workers(0)[1].generation, reason: "4011: too many guilds")))
        s.feed(.cluster(.exited(pid: s.workers(0)[1].pid!, status: .exited(WorkerExitStatus.banned))))
        #expect(s.workers(0)[1].state == .failed)
        s.feed(.storeLayout(serving: 2, next: 3, nextReady: true, seed: 1))
        #expect(s.core.fencedShards(total: 2) == [1])
    }

    @Test func aRescaleGivenUpInTheStoreIsAbandonedHereWithoutCancellingAgain() {
        var s = serving()
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        s.hold([2], of: 3, version: 1)
        let given = s.feed(.storeLayout(serving: 2, next: nil, seed: 1))
        #expect(!given.contains(.cancelStoredRescale(to: 3)))
        #expect(terminated(given, in: 1) == 1 && s.layout(1)?.role == .retiring)
        let done = s.exitTerminated(given)
        #expect(finished(done)?.ok == false && finished(done)?.text.contains("given up in the store") == true)
        #expect(s.core.layouts.active.id == 0 && s.workers(0)[1].state == .ready)
    }

    @Test func aNewWorkerFailingHereGivesTheRescaleUpInTheStoreForEveryHost() {
        var s = serving()
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        s.hold([2], of: 3, version: 1)
        let failed = s.feed(.cluster(.exited(pid: s.workers(1)[2].pid!, status: .exited(WorkerExitStatus.banned))))
        #expect(failed.contains(.cancelStoredRescale(to: 3)))
        // Nothing of the new layout runs any more: it is gone at once, and the old one serves on.
        #expect(finished(failed)?.text.contains("worker 2 of the new layout failed") == true)
        #expect(s.layout(1) == nil && s.core.layouts.active.id == 0)
        // A round that still reads the target (the cancel is on its way) does not start it again here; once the
        // store shows it gone, a new rescale to it starts.
        #expect(s.feed(.storeLayout(serving: 2, next: 3, seed: 1)).isEmpty && s.core.change == nil)
        s.feed(.storeLayout(serving: 2, next: nil, seed: 1))
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        #expect(s.core.change?.to == 3)
    }

    @Test func theLocalDeadlineIsTheStoresPlusAGraceAndCancelsInTheStore() {
        var s = serving()
        s.feed(.storeLayout(serving: 2, next: 3, seed: 1))
        s.advance(Supervised.timings.readyTimeout + .seconds(1))
        #expect(!s.feed(.cluster(.tick)).contains(.cancelStoredRescale(to: 3)))
        #expect(s.layout(1)?.role == .incoming)
        s.advance(.seconds(4))
        let late = s.feed(.cluster(.tick))
        #expect(late.contains(.cancelStoredRescale(to: 3)) && finished(late)?.ok == false && s.layout(1) == nil)
    }

    /// A host that missed the switch (or joined configured for the old count) takes the serving layout up at once:
    /// the new layout is active before its first lease, so its workers dispatch from the start.
    @Test func aHostOutOfStepTakesUpTheServingLayoutAtOnce() {
        var s = serving()
        let adopted = s.feed(.storeLayout(serving: 4, next: nil, seed: 1))
        #expect(s.core.layouts.active.machine.workers.count == 4 && s.layout(0)?.role == .retiring)
        #expect(adopted.contains(.finishDispatch(layout: 0)))
        let started = s.hold([3], of: 4, version: 1)
        #expect(ClusterStateMachineTests.spawnedOrdinals(started.compactMap { if case .worker(1, let a) = $0 { a } else { nil } }) == [3])
        // A lease of the old count (still renewed while its worker drains) goes to the retiring layout, not the new.
        s.hold([1], of: 2, version: 2)
        #expect(s.workers(0)[1].state == .ready && s.workers(1).count == 4)
    }

    @Test func aRollingRestartIsNotInterruptedByARescaleItsHostHasNotStarted() {
        var s = serving()
        s.feed(.beginRoll(maxUnavailable: 1))
        #expect(s.feed(.storeLayout(serving: 2, next: 3, seed: 1)).isEmpty)
        #expect(s.layout(1) == nil)
    }
}
