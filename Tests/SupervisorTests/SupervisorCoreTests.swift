import ClusterCore
import ClusterProtocol
import Supervisor
import Testing

/// A `SupervisorCore` and the world around it, played by hand: a clock, a spawner handing out pids, workers that
/// say hello and get ready when told.
struct Supervised {
    var core: SupervisorCore
    var now = MonotonicInstant(nanoseconds: 1_000_000_000)
    var nextPID: Int32 = 1000
    static let timings = SupervisorCore.ChangeTimings(
        readyTimeout: .seconds(10), fenceTimeout: .seconds(3), stopTimeout: .seconds(5), replaceTimeout: .seconds(8)
    )

    /// - Parameter leased: a host of a cluster of several hosts (slots start `elsewhere`, leases start workers).
    init(shards: Int = 2, leased: Bool = false) {
        var supervisor = ClusterConfig.defaults.supervisor
        supervisor.heartbeatInterval = .milliseconds(100)
        supervisor.stopGrace = .seconds(3)
        var timings = Self.timings
        if leased { timings.storeGrace = .seconds(4) }
        core = SupervisorCore(
            active: ClusterStateMachine(shards: shards, timings: .init(supervisor), restart: restartConfig, seed: 3, leased: leased),
            changeTimings: timings
        )
    }

    /// Several hosts: this host holds the leases of `shards` (token 1 each) in the layout of `total` shards.
    @discardableResult
    mutating func hold(_ shards: [Int], of total: Int, version: UInt64) -> [SupervisorCore.Action] {
        feed(.leases(total: total, version: version, held: Dictionary(uniqueKeysWithValues: shards.map {
            ($0, LeaseGrant(token: 1, sessionID: nil, sessionSeq: 0, handingOver: false))
        })))
    }

    /// Feeds an event; every spawn it causes is answered with a pid (what the spawner does).
    @discardableResult
    mutating func feed(_ event: SupervisorCore.Event) -> [SupervisorCore.Action] {
        let actions = core.handle(event, now: now)
        var more: [SupervisorCore.Action] = []
        for case .worker(_, .spawn(let ordinal, let generation, _)) in actions {
            nextPID += 1
            more += feed(.cluster(.spawned(ordinal: ordinal, generation: generation, pid: nextPID)))
        }
        return actions + more
    }

    mutating func advance(_ d: Duration) { now = now + d }

    /// The answer of the process of `generation` to the fence before the switch now running.
    @discardableResult
    mutating func passFence(_ generation: UInt64) -> [SupervisorCore.Action] {
        feed(.dispatchFinished(generation: generation, fence: core.change?.fence?.id ?? 0))
    }

    func layout(_ id: Int) -> ClusterLayouts.Layout? { core.layouts.layout(id) }
    func workers(_ id: Int) -> [WorkerRecord] { layout(id)?.machine.workers ?? [] }

    /// Hello and READY from every live worker of a layout (or only `ordinals`).
    @discardableResult
    mutating func ready(_ id: Int, ordinals: [Int]? = nil) -> [SupervisorCore.Action] {
        var actions: [SupervisorCore.Action] = []
        for worker in workers(id) where ordinals?.contains(worker.ordinal) ?? true {
            actions += feed(.cluster(.hello(ordinal: worker.ordinal, generation: worker.generation)))
            actions += feed(.cluster(.gatewayReady(ordinal: worker.ordinal, generation: worker.generation)))
        }
        return actions
    }

    /// The process of every worker told to terminate exits (status 0).
    @discardableResult
    mutating func exitTerminated(_ actions: [SupervisorCore.Action]) -> [SupervisorCore.Action] {
        var more: [SupervisorCore.Action] = []
        for case .worker(_, .signal(let pid, .terminate)) in actions {
            more += feed(.cluster(.exited(pid: pid, status: .exited(0))))
        }
        return more
    }
}

func finished(_ actions: [SupervisorCore.Action]) -> (ok: Bool, text: String)? {
    for case .changeFinished(let ok, let text) in actions { return (ok, text) }
    return nil
}

func progress(_ actions: [SupervisorCore.Action]) -> [String] {
    actions.compactMap { if case .changeProgress(let line) = $0 { line } else { nil } }
}

func terminated(_ actions: [SupervisorCore.Action], in layout: Int) -> Int {
    actions.filter { if case .worker(layout, .signal(_, .terminate)) = $0 { true } else { false } }.count
}

@Suite("layout changes (rescale, rolling restart) without processes")
struct SupervisorCoreTests {
    /// The whole rescale: the new layout gets ready while the old one serves, the switch, the fence, the retirement.
    @Test func aRescaleSwitchesOnceEveryNewShardIsReadyAndRetiresTheOldAfterTheFence() throws {
        var s = Supervised(shards: 2)
        s.feed(.cluster(.start))
        s.ready(0)
        let begin = s.feed(.beginScale(shards: 3, plan: "the plan", seed: 1))
        #expect(progress(begin) == ["the plan", "new shards ready 0/3"])
        let spawned = begin.compactMap { if case .worker(1, .spawn(_, let generation, let shard)) = $0 { (generation, shard) } else { nil } }
        #expect(spawned.map(\.1) == [ShardID(0, of: 3), ShardID(1, of: 3), ShardID(2, of: 3)])
        #expect(spawned.allSatisfy { ClusterLayouts.layoutID(ofGeneration: $0.0) == 1 })
        #expect(s.layout(1)?.role == .incoming && s.core.layouts.active.id == 0)

        // Two of three ready: reported, no switch.
        let partly = s.ready(1, ordinals: [0, 1])
        #expect(progress(partly).last == "new shards ready 2/3")
        #expect(!partly.contains(.startDispatch(layout: 1)))

        // Every new shard ready: first the serving workers handle what they received (the fence before the switch).
        let allReady = s.ready(1, ordinals: [2])
        let old = s.workers(0).map(\.generation)
        let fence = try #require(s.core.change?.fence?.id)
        #expect(allReady.contains(.finishDispatchOf(layout: 0, generation: old[0], fence: fence)))
        #expect(allReady.contains(.finishDispatchOf(layout: 0, generation: old[1], fence: fence)))
        #expect(!allReady.contains(.startDispatch(layout: 1)))
        #expect(!s.passFence(old[0]).contains(.startDispatch(layout: 1)))
        let switched = s.passFence(old[1])
        #expect(switched.contains(.startDispatch(layout: 1)) && switched.contains(.finishDispatch(layout: 0)))
        #expect(s.core.layouts.active.id == 1 && s.layout(0)?.role == .retiring)
        // Nothing of the old layout stops before each of its workers has handled what it received.
        #expect(terminated(switched, in: 0) == 0)
        #expect(s.feed(.dispatchFinished(generation: old[0])).isEmpty)
        let fenced = s.feed(.dispatchFinished(generation: old[1]))
        #expect(fenced.contains(.retireClaims(layout: 0)))
        #expect(terminated(fenced, in: 0) == 2)

        let done = s.exitTerminated(fenced)
        #expect(done.contains(.forgetStoredLayout(total: 2)))
        #expect(finished(done)?.ok == true && finished(done)?.text.hasPrefix("scaled 2 -> 3 shards in ") == true)
        #expect(s.core.change == nil && s.core.layouts.layouts.map(\.id) == [1])
    }

    @Test func aNewWorkerThatFailsForGoodAbandonsTheRescaleAndTheOldLayoutServesOn() {
        var s = Supervised(shards: 2)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 4, plan: "plan", seed: 1))
        let doomed = s.workers(1)[2]
        let failed = s.feed(.cluster(.exited(pid: doomed.pid!, status: .exited(WorkerExitStatus.banned))))
        #expect(terminated(failed, in: 1) == 3)
        #expect(s.core.layouts.active.id == 0 && s.layout(1)?.role == .retiring)
        let done = s.exitTerminated(failed)
        #expect(finished(done)?.ok == false)
        #expect(finished(done)?.text == "rescale abandoned: worker 2 of the new layout failed: the bot is delisted or banned; the 2-shard layout keeps serving")
        #expect(!done.contains(.forgetStoredLayout(total: 2)))
        #expect(s.core.layouts.layouts.map(\.id) == [0] && s.workers(0).allSatisfy { $0.state == .ready })
    }

    @Test func aNewLayoutNotReadyInTimeIsAbandonedAtTheDeadline() {
        var s = Supervised(shards: 1)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 2, plan: "plan", seed: 1))
        s.ready(1, ordinals: [0])
        s.advance(.seconds(9))
        #expect(finished(s.feed(.cluster(.tick))) == nil)
        s.advance(.seconds(2))
        let abandoned = s.feed(.cluster(.tick))
        #expect(terminated(abandoned, in: 1) == 2)
        let done = s.exitTerminated(abandoned)
        #expect(finished(done)?.text == "rescale abandoned: the new layout was not ready within scale.readyTimeout (1/2 ready); the 1-shard layout keeps serving")
    }

    /// A serving worker that crashes before it passed the fence holds the switch: its replacement resumes the session
    /// (and the replay), is asked when ready, and the switch comes with its answer. One failed for good owes
    /// nothing. A fence never passed ends with the rescale's deadline: abandoned, the old layout serves on.
    @Test func theSwitchWaitsForEveryServingWorkerToPassTheFenceEvenAfterACrash() throws {
        var s = Supervised(shards: 2)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 3, plan: "plan", seed: 1))
        let first = s.workers(0).map(\.generation)
        let asked = s.ready(1)
        #expect(progress(asked).contains("new shards ready 3/3: the serving shards handle what they received (the fence before the switch)"))
        #expect(asked.filter { if case .finishDispatchOf(0, _, _) = $0 { true } else { false } }.count == 2)
        s.passFence(first[0])
        // Worker 1 crashes before it answered: no switch while it comes back.
        let crashed = s.feed(.cluster(.exited(pid: s.workers(0)[1].pid!, status: .signaled(9))))
        #expect(!crashed.contains(.startDispatch(layout: 1)) && s.core.layouts.active.id == 0)
        s.advance(.seconds(1))
        s.feed(.cluster(.tick))
        let second = s.workers(0)[1].generation
        #expect(second != first[1])
        #expect(s.ready(0, ordinals: [1]).contains(.finishDispatchOf(layout: 0, generation: second, fence: s.core.change!.fence!.id)))
        // The crashed process's answer, should one come late, is not its replacement's.
        #expect(!s.passFence(first[1]).contains(.startDispatch(layout: 1)))
        let switched = s.passFence(second)
        #expect(switched.contains(.startDispatch(layout: 1)) && s.core.layouts.active.id == 1)

        // A new worker that restarts during the fence (it identifies anew): the fence is asked again, with a new id,
        // once every new worker is ready again; answers to the first do not count.
        var gap = Supervised(shards: 1)
        gap.feed(.cluster(.start))
        gap.ready(0)
        gap.feed(.beginScale(shards: 2, plan: "plan", seed: 1))
        gap.ready(1)
        let firstFence = try #require(gap.core.change?.fence?.id)
        gap.feed(.cluster(.exited(pid: gap.workers(1)[1].pid!, status: .signaled(9))))
        #expect(gap.core.change?.fence == nil)
        gap.feed(.dispatchFinished(generation: gap.workers(0)[0].generation, fence: firstFence))
        gap.advance(.seconds(1))
        gap.feed(.cluster(.tick))
        let again = gap.ready(1, ordinals: [1])
        let secondFence = try #require(gap.core.change?.fence?.id)
        #expect(secondFence != firstFence && again.contains(.finishDispatchOf(layout: 0, generation: gap.workers(0)[0].generation, fence: secondFence)))
        #expect(gap.core.layouts.active.id == 0)
        #expect(gap.passFence(gap.workers(0)[0].generation).contains(.startDispatch(layout: 1)))

        var hung = Supervised(shards: 1)
        hung.feed(.cluster(.start))
        hung.ready(0)
        hung.feed(.beginScale(shards: 2, plan: "plan", seed: 1))
        hung.ready(1)
        hung.advance(Supervised.timings.readyTimeout)
        let given = hung.feed(.cluster(.tick))
        #expect(terminated(given, in: 1) == 2 && hung.core.layouts.active.id == 0)
        #expect(finished(hung.exitTerminated(given))?.ok == false)
    }

    /// A retiring worker whose socket closed owes no answer; one that says nothing is drained at the deadline.
    @Test func theFenceWaitsForLiveWorkersOnlyAndNotPastItsDeadline() {
        var s = Supervised(shards: 3)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 2, plan: "plan", seed: 1))
        s.ready(1)
        let old = s.workers(0).map(\.generation)
        // The fence before the switch, answered by all three: the switch, and the fence after it.
        for generation in old { s.passFence(generation) }
        #expect(s.core.layouts.active.id == 1)
        #expect(s.feed(.disconnected(generation: old[0])).isEmpty)
        #expect(s.feed(.dispatchFinished(generation: old[1])).isEmpty)
        s.advance(.seconds(4))
        let drained = s.feed(.cluster(.tick))
        #expect(drained.contains(.retireClaims(layout: 0)))
        #expect(drained.contains { if case .worker(0, .log(.warning, let text)) = $0 { text.contains("[2]") } else { false } })
        #expect(terminated(drained, in: 0) == 3)
    }

    /// A layout whose workers do not exit in time is dropped anyway: the change always ends.
    @Test func aRetiredLayoutThatDoesNotExitIsDroppedAtTheStopDeadline() {
        var s = Supervised(shards: 1)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 2, plan: "plan", seed: 1))
        s.ready(1)
        // Before the switch and after it.
        s.passFence(s.workers(0)[0].generation)
        s.feed(.dispatchFinished(generation: s.workers(0)[0].generation))
        s.advance(.seconds(6))
        let done = s.feed(.cluster(.tick))
        #expect(finished(done)?.ok == true)
        #expect(s.core.layouts.layouts.map(\.id) == [1])
    }

    @Test func aRollingRestartReplacesBatchByBatchEachResumingItsSession() {
        var s = Supervised(shards: 3)
        s.feed(.cluster(.start))
        s.ready(0)
        for worker in s.workers(0) {
            s.feed(.cluster(.sessionCommitted(ordinal: worker.ordinal, generation: worker.generation, id: "s\(worker.ordinal)", seq: 10)))
        }
        let first = s.feed(.beginRoll(maxUnavailable: 2))
        #expect(terminated(first, in: 0) == 2)
        let respawned = s.exitTerminated(first)
        #expect(respawned.filter { if case .worker(0, .spawn) = $0 { true } else { false } }.count == 2)
        #expect(s.workers(0)[0].session?.id == "s0")
        let second = s.ready(0, ordinals: [0, 1])
        #expect(progress(second) == ["replaced 2/3"])
        #expect(terminated(second, in: 0) == 1)
        s.exitTerminated(second)
        let done = s.ready(0, ordinals: [2])
        #expect(progress(done) == ["replaced 3/3"])
        #expect(finished(done)?.ok == true && finished(done)?.text.hasPrefix("rolled 3 workers in ") == true)
        #expect(s.workers(0).allSatisfy { $0.restarts == 1 && $0.state == .ready })
    }

    @Test func aReplacementThatCrashesPausesTheRoll() {
        var s = Supervised(shards: 2)
        s.feed(.cluster(.start))
        s.ready(0)
        let first = s.feed(.beginRoll(maxUnavailable: 1))
        s.exitTerminated(first)
        // A first crash is restarted at once (the roll waits on); the next ones back off, and the roll pauses.
        var paused: [SupervisorCore.Action] = []
        for _ in 0..<5 where s.core.change != nil {
            paused = s.feed(.cluster(.exited(pid: s.workers(0)[0].pid!, status: .signaled(11))))
        }
        #expect(finished(paused)?.ok == false)
        #expect(finished(paused)?.text.hasPrefix("worker 0 did not come back (backoff: signal 11); roll paused after 0 of 2") == true)
        #expect(s.core.change == nil)
    }

    @Test func oneChangeAtATimeAndAStopEndsIt() {
        var s = Supervised(shards: 2)
        s.feed(.cluster(.start))
        s.ready(0)
        s.feed(.beginScale(shards: 3, plan: "plan", seed: 1))
        let during = s.core.change
        #expect(s.feed(.beginRoll(maxUnavailable: 1)).isEmpty && s.core.change == during)
        #expect(s.feed(.beginScale(shards: 5, plan: "other", seed: 2)).isEmpty && s.core.layouts.layouts.count == 2)
        let stopped = s.feed(.cluster(.stop))
        #expect(finished(stopped)?.text == "stopped: the supervisor is shutting down")
        #expect(terminated(stopped, in: 0) == 2 && terminated(stopped, in: 1) == 3)
        #expect(s.feed(.beginRoll(maxUnavailable: 1)).isEmpty && s.core.change == nil)
    }

    /// The kept deadline is the searched one after every event that did something, and never later than it after a
    /// report that did nothing (a late wake-up would miss a hang).
    @Test func theKeptDeadlineIsNeverLaterThanTheSearchedOne() {
        var s = Supervised(shards: 6)
        var rng = SplitMix64(seed: 11)
        s.feed(.cluster(.start))
        for _ in 0..<3000 {
            s.advance(.milliseconds(Int64(rng.next() % 120)))
            let workers = s.workers(s.core.layouts.active.id)
            let worker = workers[Int(rng.next() % UInt64(workers.count))]
            let event: SupervisorCore.Event
            switch rng.next() % 9 {
            case 0: event = .cluster(.hello(ordinal: worker.ordinal, generation: worker.generation))
            case 1: event = .cluster(.gatewayReady(ordinal: worker.ordinal, generation: worker.generation))
            case 2:
                s.core.recordBeat(ordinal: worker.ordinal, generation: worker.generation, at: s.now, now: s.now)
                event = .cluster(.progress(ordinal: worker.ordinal, generation: worker.generation, WorkerProgress(state: .connecting)))
            case 3:
                let session = rng.next() % 2 == 0 ? WorkerProgress.CommittedSession(id: "s", seq: Int64(rng.next() % 50)) : nil
                event = .cluster(.progress(ordinal: worker.ordinal, generation: worker.generation, WorkerProgress(state: .ready, session: session)))
            case 4: event = .cluster(.sessionCommitted(ordinal: worker.ordinal, generation: worker.generation, id: "s", seq: 1))
            case 5: event = .cluster(.exited(pid: worker.pid ?? -1, status: .signaled(9)))
            case 6: event = .cluster(.restart(ordinal: worker.ordinal))
            case 7: event = .beginRoll(maxUnavailable: 2)
            default: event = .cluster(.tick)
            }
            let actions = s.feed(event)
            let kept = s.core.nextDeadline
            let searched = s.core.searchedNextDeadline
            if !SupervisorCore.keepsDeadline(after: event, actions) {
                #expect(kept == searched)
            } else if let searched {
                #expect(kept.map { $0 <= searched } ?? false, "kept \(String(describing: kept)), searched \(searched)")
            }
        }
    }
}
