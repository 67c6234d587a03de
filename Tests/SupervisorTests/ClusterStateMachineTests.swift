import ClusterCore
import ClusterIPC
import ClusterProtocol
import Supervisor
import Testing

let restartConfig = ClusterConfig.defaults.restart  // 500ms base, x2, 30s cap, 5 crashes per 60s, reset after 30s

struct Cluster {
    var machine: ClusterStateMachine
    var now = MonotonicInstant(nanoseconds: 1_000_000_000)
    var nextPID: Int32 = 1000

    init(shards: Int = 2, sessions: [Int: (id: String, seq: Int)] = [:], startLimit: Int = .max, leased: Bool = false) {
        var supervisor = ClusterConfig.defaults.supervisor
        supervisor.heartbeatInterval = .milliseconds(100)
        supervisor.heartbeatMisses = 4
        supervisor.helloTimeout = .seconds(2)
        supervisor.abortGrace = .milliseconds(300)
        supervisor.stopGrace = .seconds(3)
        machine = ClusterStateMachine(shards: shards, timings: .init(supervisor), restart: restartConfig, seed: 7, sessions: sessions, startLimit: startLimit, leased: leased)
    }

    mutating func feed(_ event: ClusterStateMachine.Event) -> [ClusterStateMachine.Action] {
        machine.handle(event, now: now)
    }

    /// Plays the spawner: every spawn action gets a pid.
    mutating func spawned(_ actions: [ClusterStateMachine.Action]) -> [ClusterStateMachine.Action] {
        var more: [ClusterStateMachine.Action] = []
        for case .spawn(let ordinal, let generation, _) in actions {
            nextPID += 1
            more += feed(.spawned(ordinal: ordinal, generation: generation, pid: nextPID))
        }
        return more
    }

    mutating func advance(_ d: Duration) { now = now + d }

    func gen(_ ordinal: Int) -> UInt64 { machine.worker(ordinal: ordinal)!.generation }
    func pid(_ ordinal: Int) -> Int32 { machine.worker(ordinal: ordinal)!.pid! }
    func state(_ ordinal: Int) -> WorkerState { machine.worker(ordinal: ordinal)!.state }

    /// start, spawn, hello, ready for every worker.
    mutating func bringUp() -> [ClusterStateMachine.Action] {
        let start = feed(.start)
        _ = spawned(start)
        var actions: [ClusterStateMachine.Action] = []
        for ordinal in machine.workers.indices {
            _ = feed(.hello(ordinal: ordinal, generation: gen(ordinal)))
            actions += feed(.gatewayReady(ordinal: ordinal, generation: gen(ordinal)))
        }
        return actions
    }

    mutating func heartbeatAll() {
        for w in machine.workers where w.state == .ready {
            _ = feed(.progress(ordinal: w.ordinal, generation: w.generation, WorkerProgress(state: .ready)))
        }
    }
}

@Suite("cluster state machine")
struct ClusterStateMachineTests {
    @Test func launchSpawnsEveryShardAndAnnouncesReadyOnce() {
        var c = Cluster(shards: 3)
        let start = c.feed(.start)
        #expect(start == [
            .spawn(ordinal: 0, generation: 1, shard: ShardID(0, of: 3)),
            .spawn(ordinal: 1, generation: 2, shard: ShardID(1, of: 3)),
            .spawn(ordinal: 2, generation: 3, shard: ShardID(2, of: 3)),
        ])
        _ = c.spawned(start)
        #expect(c.state(0) == .spawning)
        _ = c.feed(.hello(ordinal: 0, generation: 1))
        #expect(c.state(0) == .connected)
        _ = c.feed(.identifying(ordinal: 0, generation: 1))
        #expect(c.state(0) == .identifying)
        var ready: [ClusterStateMachine.Action] = []
        for o in 0..<3 { ready += c.feed(.gatewayReady(ordinal: o, generation: c.gen(o))) }
        #expect(ready == [.clusterReady])
        #expect(c.feed(.gatewayReady(ordinal: 0, generation: 1)) == [])
    }

    /// A stop that comes while a worker's spawn is under way (no pid yet) drains it once its pid is known, rather
    /// than leaving it running until the stop grace kills it.
    @Test func aWorkerSpawnedDuringAStopIsToldToDrain() {
        var c = Cluster(shards: 1)
        let start = c.feed(.start)
        _ = c.feed(.stop)
        #expect(c.state(0) == .draining)
        guard case .spawn(_, let generation, _)? = start.first else { Issue.record("no spawn"); return }
        #expect(c.feed(.spawned(ordinal: 0, generation: generation, pid: 4242)) == [.signal(pid: 4242, signal: .terminate)])
    }

    @Test func aCrashRestartsAtOnceThenWithGrowingBackoffThenFails() {
        var c = Cluster(shards: 1)
        _ = c.bringUp()
        var delays: [String] = []
        for attempt in 1...7 {
            let pid = c.pid(0)
            let actions = c.feed(.exited(pid: pid, status: .signaled(9)))
            #expect(actions.contains(.killGroup(pid: pid)))
            if actions.contains(where: { if case .spawn = $0 { return true } else { return false } }) {
                delays.append("now")
            } else if c.state(0) == .backoff {
                let deadline = c.machine.nextDeadline!
                delays.append(DurationFormat.human(deadline - c.now))
                c.now = deadline
                _ = c.spawned(c.feed(.tick))
            } else {
                #expect(c.state(0) == .failed, "attempt \(attempt)")
                delays.append("failed")
                break
            }
            _ = c.spawned([])
            if c.machine.worker(ordinal: 0)!.pid == nil {
                _ = c.spawned([.spawn(ordinal: 0, generation: c.gen(0), shard: ShardID(0, of: 1))])
            }
            _ = c.feed(.hello(ordinal: 0, generation: c.gen(0)))
        }
        #expect(delays.first == "now")
        #expect(delays.count == 6)
        #expect(delays.last == "failed")
        #expect(c.machine.worker(ordinal: 0)!.failure?.contains("more than 5 times") == true)
        // Failed workers are retried at the cap.
        #expect(c.machine.nextDeadline == c.now + restartConfig.maxDelay)
    }

    @Test func backoffResetsOnlyAfterStayingReady() {
        var policy = RestartPolicy(config: restartConfig)
        var rng = SplitMix64(seed: 1)
        let t0 = MonotonicInstant(nanoseconds: 0)
        #expect(policy.crashed(now: t0, rng: &rng) == .now)
        guard case .after = policy.crashed(now: t0 + .seconds(1), rng: &rng) else { Issue.record("no backoff"); return }
        policy.ready(now: t0 + .seconds(2))
        // Ready for 10 s only: the next crash still backs off.
        guard case .after = policy.crashed(now: t0 + .seconds(12), rng: &rng) else { Issue.record("reset too early"); return }
        policy.ready(now: t0 + .seconds(13))
        #expect(policy.crashed(now: t0 + .seconds(50), rng: &rng) == .now)
    }

    @Test func aSilentWorkerIsAbortedThenItsGroupKilled() {
        var c = Cluster(shards: 2)
        _ = c.bringUp()
        let pid1 = c.pid(1)
        // Worker 0 keeps beating, worker 1 goes silent (SIGSTOP).
        for _ in 0..<4 {
            c.advance(.milliseconds(100))
            c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: c.now, now: c.now)
            #expect(c.feed(.tick).isEmpty)
        }
        c.advance(.milliseconds(10))
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: c.now, now: c.now)
        // Past the limit: SIGABRT at once (a beat is read from memory, so nothing of it can still be unread).
        let hung = c.feed(.tick)
        #expect(hung.contains(.signal(pid: pid1, signal: .abort)))
        #expect(!hung.contains(.signal(pid: c.pid(0), signal: .abort)))
        #expect(c.machine.nextDeadline == c.now + .milliseconds(300))
        c.advance(.milliseconds(300))
        #expect(c.feed(.tick).contains(.killGroup(pid: pid1)))
        // The kill shows up as an exit: replaced at once, with its session for resume.
        let exit = c.feed(.exited(pid: pid1, status: .signaled(9)))
        #expect(exit.contains(.spawn(ordinal: 1, generation: c.gen(1), shard: ShardID(1, of: 2))))
        #expect(!exit.contains(.killGroup(pid: pid1)), "the group was killed already")
    }

    /// A supervisor that looks late (its loop fell behind) judges by when the worker last ran, not by when it looked.
    @Test func aBeatReadLateCountsAtTheTimeItWasStored() {
        var c = Cluster(shards: 1)
        _ = c.bringUp()
        let start = c.now
        c.advance(.milliseconds(600))
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: start + .milliseconds(350), now: c.now)
        #expect(c.feed(.tick).isEmpty)
        #expect(c.machine.nextDeadline == start + .milliseconds(751))
        // A beat from the future (a clock read after the supervisor's) counts as now, no later.
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: c.now + .seconds(60), now: c.now)
        #expect(c.machine.nextDeadline == c.now + .milliseconds(401))
    }

    /// Before its hello a worker has the hello timeout; a beat then (or the last process's, left in the slot) does
    /// not shorten it, and a beat never moves a worker's silence back in time.
    @Test func beatsCountOnlyAfterTheHelloAndOnlyForward() {
        var c = Cluster(shards: 1)
        _ = c.spawned(c.feed(.start))
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: c.now, now: c.now)
        #expect(c.machine.worker(ordinal: 0)!.lastHeard == nil)
        _ = c.feed(.hello(ordinal: 0, generation: c.gen(0)))
        let hello = c.now
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0), at: hello - .seconds(5), now: c.now)
        #expect(c.machine.worker(ordinal: 0)!.lastHeard == hello)
        // A beat of an older generation is dropped.
        c.advance(.milliseconds(300))
        c.machine.recordBeat(ordinal: 0, generation: c.gen(0) - 1, at: c.now, now: c.now)
        #expect(c.machine.worker(ordinal: 0)!.lastHeard == hello)
    }

    @Test func aWorkerThatNeverSaysHelloIsAborted() {
        var c = Cluster(shards: 1)
        _ = c.spawned(c.feed(.start))
        c.advance(.seconds(2) + .milliseconds(2))
        #expect(c.feed(.tick).contains(.signal(pid: c.pid(0), signal: .abort)))
    }

    @Test func sessionsAreKeptForTheReplacement() {
        var c = Cluster(shards: 1, sessions: [0: ("old", 5)])
        _ = c.bringUp()
        #expect(c.machine.worker(ordinal: 0)!.session! == ("old", 5))
        #expect(c.feed(.sessionCommitted(ordinal: 0, generation: c.gen(0), id: "s1", seq: 40)) == [.persistSession(shard: ShardID(0, of: 1), id: "s1", seq: 40)])
        // A message from an older generation is dropped.
        #expect(c.feed(.sessionCommitted(ordinal: 0, generation: c.gen(0) - 1, id: "stale", seq: 1)) == [])
        _ = c.feed(.exited(pid: c.pid(0), status: .signaled(9)))
        #expect(c.machine.worker(ordinal: 0)!.session! == ("s1", 40))
        #expect(c.feed(.sessionInvalidated(ordinal: 0, generation: c.gen(0))) == [.forgetSession(shard: ShardID(0, of: 1))])
    }

    @Test func aProgressReportCarriesTheSessionAndStoresItOnlyWhenItMoved() {
        var c = Cluster(shards: 1)
        _ = c.bringUp()
        let shard = ShardID(0, of: 1)
        func report(_ session: WorkerProgress.CommittedSession?) -> [ClusterStateMachine.Action] {
            c.feed(.progress(ordinal: 0, generation: c.gen(0), WorkerProgress(state: .ready, session: session)))
        }
        #expect(report(.init(id: "s1", seq: 7)) == [.persistSession(shard: shard, id: "s1", seq: 7)])
        #expect(report(.init(id: "s1", seq: 7)) == [])
        #expect(report(nil) == [])
        #expect(c.machine.worker(ordinal: 0)!.session! == ("s1", 7))
        #expect(report(.init(id: "s1", seq: 9)) == [.persistSession(shard: shard, id: "s1", seq: 9)])
        // The session report at ready says the same: nothing to store again.
        #expect(c.feed(.sessionCommitted(ordinal: 0, generation: c.gen(0), id: "s1", seq: 9)) == [])
    }

    @Test(arguments: [WorkerExitStatus.configurationError, WorkerExitStatus.banned])
    func fatalExitsAreNotRestartedInALoop(code: Int32) {
        var c = Cluster(shards: 2)
        _ = c.bringUp()
        let actions = c.feed(.exited(pid: c.pid(0), status: .exited(code)))
        #expect(c.state(0) == .failed)
        #expect(!actions.contains { if case .spawn = $0 { return true } else { return false } })
        #expect(c.state(1) == .ready)
        // Nothing brings it back by itself: an hour later it is still failed.
        c.advance(.seconds(3600))
        #expect(!c.feed(.tick).contains { if case .spawn(0, _, _) = $0 { return true } else { return false } })
        #expect(c.state(0) == .failed)
        #expect(c.machine.worker(ordinal: 0)!.failure != nil)
    }

    @Test func restartDrainsThenRespawnsWithoutCountingACrash() {
        var c = Cluster(shards: 1)
        _ = c.bringUp()
        let pid = c.pid(0)
        #expect(c.feed(.restart(ordinal: 0)).contains(.signal(pid: pid, signal: .terminate)))
        #expect(c.state(0) == .draining)
        let actions = c.feed(.exited(pid: pid, status: .exited(0)))
        #expect(actions.contains(.spawn(ordinal: 0, generation: c.gen(0), shard: ShardID(0, of: 1))))
        #expect(c.machine.worker(ordinal: 0)!.restarts == 1)
    }

    @Test func stopDrainsEveryoneAndKillsWhoIgnoresIt() {
        var c = Cluster(shards: 2)
        _ = c.bringUp()
        let (p0, p1) = (c.pid(0), c.pid(1))
        let stop = c.feed(.stop)
        #expect(stop == [.signal(pid: p0, signal: .terminate), .signal(pid: p1, signal: .terminate)])
        #expect(c.feed(.exited(pid: p0, status: .exited(0))) == [.killGroup(pid: p0)])
        c.advance(.seconds(3))
        #expect(c.feed(.tick).contains(.killGroup(pid: p1)))
        #expect(c.feed(.exited(pid: p1, status: .signaled(9))) == [.allStopped])
        #expect(c.machine.workers.allSatisfy { $0.state == .stopped })
    }

    /// Spawned ordinals among `actions`.
    static func spawnedOrdinals(_ actions: [ClusterStateMachine.Action]) -> [Int] {
        actions.compactMap { if case .spawn(let ordinal, _, _) = $0 { ordinal } else { nil } }
    }

    /// A launch starts `startLimit` workers; each one ready (or gone) lets the next start, by ordinal.
    @Test func aLaunchStartsWorkersInTurn() {
        var c = Cluster(shards: 5, startLimit: 2)
        let start = c.feed(.start)
        #expect(Self.spawnedOrdinals(start) == [0, 1])
        #expect((2..<5).allSatisfy { c.state($0) == .queued })
        _ = c.spawned(start)
        _ = c.feed(.hello(ordinal: 0, generation: c.gen(0)))
        #expect(Self.spawnedOrdinals(c.feed(.identifying(ordinal: 0, generation: c.gen(0)))).isEmpty, "identifying still takes its slot")
        let next = c.feed(.gatewayReady(ordinal: 0, generation: c.gen(0)))
        #expect(Self.spawnedOrdinals(next) == [2])
        _ = c.spawned(next)
        // A worker that could not start frees its slot, and its replacement waits its turn like everyone else
        // (by ordinal: here it is first again).
        let crash = c.feed(.exited(pid: c.pid(1), status: .exited(1)))
        #expect(Self.spawnedOrdinals(crash) == [1])
        _ = c.spawned(crash)
        // Ready once, a worker's later reconnects take no slot: with 0 and 1 ready, 3 and 4 start.
        _ = c.feed(.progress(ordinal: 0, generation: c.gen(0), WorkerProgress(state: .connecting)))
        let more = c.feed(.gatewayReady(ordinal: 1, generation: c.gen(1))) + c.feed(.gatewayReady(ordinal: 2, generation: c.gen(2)))
        #expect(Self.spawnedOrdinals(more) == [3, 4])
        _ = c.spawned(more)
        for o in [3, 4] { _ = c.feed(.gatewayReady(ordinal: o, generation: c.gen(o))) }
        #expect(c.machine.allReady)
        #expect(c.machine.workers.allSatisfy { $0.state == .ready })
    }

    /// A crashed worker with a session to resume goes before shards that have not started yet.
    @Test func aResumeGoesBeforeTheQueuedIdentifies() {
        var c = Cluster(shards: 4, startLimit: 1)
        _ = c.spawned(c.feed(.start))
        _ = c.feed(.sessionCommitted(ordinal: 0, generation: c.gen(0), id: "s0", seq: 3))
        _ = c.spawned(c.feed(.gatewayReady(ordinal: 0, generation: c.gen(0))))
        #expect(c.state(1) == .spawning)
        // Worker 0 crashes while 1 starts: it waits, then goes first.
        #expect(Self.spawnedOrdinals(c.feed(.exited(pid: c.pid(0), status: .signaled(9)))).isEmpty)
        #expect(Self.spawnedOrdinals(c.feed(.gatewayReady(ordinal: 1, generation: c.gen(1)))) == [0])
    }

    /// Queued workers have no process: a stop ends them at once, and a restart request leaves them in turn.
    @Test func queuedWorkersStopAtOnceAndWaitOnRestart() {
        var c = Cluster(shards: 3, startLimit: 1)
        _ = c.spawned(c.feed(.start))
        #expect(c.feed(.restart(ordinal: 2)).isEmpty)
        #expect(c.state(2) == .queued)
        let stop = c.feed(.stop)
        #expect(stop == [.signal(pid: c.pid(0), signal: .terminate)])
        #expect(c.state(1) == .stopped && c.state(2) == .stopped)
        #expect(c.feed(.exited(pid: c.pid(0), status: .exited(0))).contains(.allStopped))
    }
}
