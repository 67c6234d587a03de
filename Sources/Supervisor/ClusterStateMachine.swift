import ClusterCore
import ClusterProtocol

/// How a worker process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): return "exit \(code)"
        case .signaled(let signal): return "signal \(signal)\(signal == 9 ? " (SIGKILL)" : signal == 6 ? " (SIGABRT)" : signal == 15 ? " (SIGTERM)" : "")"
        }
    }
}

/// The signals the supervisor sends a worker, by what they ask.
public enum WorkerSignal: Sendable, Equatable {
    /// SIGTERM: drain and exit.
    case terminate
    /// SIGABRT: a hung worker, for a dump before the SIGKILL.
    case abort
}

/// A worker's lifecycle state, as `botcluster status` shows it.
public enum WorkerState: String, Sendable, Equatable, CaseIterable {
    /// `queued`: waiting for its turn to start (a launch starts at most `startLimit` workers at a time).
    /// `elsewhere`: in a cluster of several hosts, this host does not hold the shard's lease (another one runs it).
    case queued, spawning, connected, identifying, ready, draining, stopped, backoff, failed, elsewhere

    var isLive: Bool { self == .spawning || self == .connected || self == .identifying || self == .ready || self == .draining }
}

/// One worker slot of the cluster (an ordinal and its shard) and the process that fills it now.
public struct WorkerRecord: Sendable {
    public var ordinal: Int
    public var shard: ShardID
    public var state: WorkerState = .stopped
    /// The generation of the process filling the slot; messages from older ones are dropped.
    public var generation: UInt64 = 0
    public var pid: Int32?
    public var startedAt: MonotonicInstant?
    public var readyAt: MonotonicInstant?
    public var lastHeard: MonotonicInstant?
    public var restarts = 0
    public var lastExit: ExitStatus?
    public var progress: WorkerProgress?
    /// When `progress` came.
    public var progressAt: MonotonicInstant?
    /// The session a replacement resumes: its id and the committed seq.
    public var session: (id: String, seq: Int)?
    /// Why the worker is not restarted, when it is failed for good.
    public var failure: String?
    var policy: RestartPolicy
    var abortedAt: MonotonicInstant?
    var killedAt: MonotonicInstant?
    var stopRequestedAt: MonotonicInstant?
    var respawnAt: MonotonicInstant?
    /// A fatal gateway close the worker reported before it exits: no restart loop.
    var fatal: String?
    /// Respawn at once when the process exits (a requested restart, not a crash).
    var respawnWhenExited = false
    /// The shard is being handed to another host: when the process exits, the slot goes `elsewhere`.
    var handingOver = false
    /// The fencing token of the lease this slot runs under (several hosts); nil when it runs none.
    public var leaseToken: Int64?
    /// The slot went `elsewhere` by a handover (not a fence): its last process's session reports still count.
    var handedOver = false

    /// Spawned and not yet ready for the first time: taking a start slot.
    var isStarting: Bool { state.isLive && state != .draining && readyAt == nil }
}

/// A lease this host holds, as the state machine sees it.
public struct LeaseGrant: Sendable, Equatable {
    /// The fencing token.
    public var token: Int64
    /// The session stored with the lease when it was taken (what a new worker resumes).
    public var sessionID: String?
    public var sessionSeq: Int
    /// The shard is placed on another live host: drain it, then release.
    public var handingOver: Bool

    /// A grant of `token`, resuming `sessionID` at `sessionSeq` when there is a session.
    public init(token: Int64, sessionID: String?, sessionSeq: Int, handingOver: Bool) {
        self.token = token
        self.sessionID = sessionID
        self.sessionSeq = sessionSeq
        self.handingOver = handingOver
    }
}

/// The supervisor's decisions about its workers, as a pure state machine: spawns, exits, IPC events and timer
/// ticks in; actions (spawn, signal, kill a process group, persist a session) out. The time is a parameter.
public struct ClusterStateMachine: Sendable {
    /// The time limits for workers: the beat interval and misses, the hello timeout, and the graces before SIGKILL.
    public struct Timings: Sendable {
        public var heartbeatInterval: Duration
        public var heartbeatMisses: Int
        public var helloTimeout: Duration
        public var abortGrace: Duration
        public var stopGrace: Duration

        /// The timings cluster.json's `supervisor` section sets.
        public init(_ config: SupervisorConfig) {
            heartbeatInterval = config.heartbeatInterval
            heartbeatMisses = config.heartbeatMisses
            helloTimeout = config.helloTimeout
            abortGrace = config.abortGrace
            stopGrace = config.stopGrace
        }

        /// Silence after which a worker counts as hung.
        var hangAfter: Duration { heartbeatInterval * heartbeatMisses }
    }

    /// What the machine hears: worker messages (ignored from a stale generation), exits, ticks and commands.
    public enum Event: Sendable {
        case start
        case spawned(ordinal: Int, generation: UInt64, pid: Int32)
        case spawnFailed(ordinal: Int, generation: UInt64, reason: String)
        case hello(ordinal: Int, generation: UInt64)
        case progress(ordinal: Int, generation: UInt64, WorkerProgress)
        case identifying(ordinal: Int, generation: UInt64)
        case gatewayReady(ordinal: Int, generation: UInt64)
        case sessionCommitted(ordinal: Int, generation: UInt64, id: String, seq: Int)
        case sessionInvalidated(ordinal: Int, generation: UInt64)
        case gatewayFailed(ordinal: Int, generation: UInt64, reason: String)
        case exited(pid: Int32, status: ExitStatus)
        case tick
        /// Replace a worker's process (drain, then respawn at once).
        case restart(ordinal: Int)
        /// The leases this host holds now (several hosts), as of `version` (an older version is ignored): a slot
        /// whose lease is gone or was replaced is fenced (its worker killed now, no restart); a lease being handed
        /// over drains its worker, and the slot is `elsewhere` once it exited; a new lease starts a worker that
        /// resumes the lease's stored session.
        case leases(version: UInt64, held: [Int: LeaseGrant])
        /// Drain every worker and end.
        case stop
    }

    /// What the supervisor is to do: spawn, signal or kill processes, store or forget sessions, log, report.
    public enum Action: Sendable, Equatable {
        case spawn(ordinal: Int, generation: UInt64, shard: ShardID)
        case signal(pid: Int32, signal: WorkerSignal)
        /// SIGKILL to the worker's whole process group (it and anything it started).
        case killGroup(pid: Int32)
        case persistSession(shard: ShardID, id: String, seq: Int)
        case forgetSession(shard: ShardID)
        case log(Level, String)
        /// Every worker is ready (once per start).
        case clusterReady
        /// Every worker has exited after a stop.
        case allStopped
        /// A worker's process ended and is (or will be) replaced, and why (for the metrics).
        case restarted(ordinal: Int, reason: RestartReason)

        /// The severity of a log line.
        public enum Level: Sendable, Equatable { case info, warning, error }

        /// Why a worker's process was replaced.
        public enum RestartReason: String, Sendable, CaseIterable {
            /// It exited or was killed by a signal it was not sent.
            case crash
            /// It stopped beating and was aborted.
            case hang
            /// A restart or rolling restart asked for it.
            case requested
        }
    }

    public let timings: Timings
    let restart: RestartConfig
    /// At most this many workers start at once (spawned, not yet ready for the first time); the others wait
    /// `queued`. Hundreds of processes starting together on a few cores starve one another past the hello and
    /// hang limits; started in turn, each is ready in moments and the identify ledger still always has a queue.
    public let startLimit: Int
    /// Workers `queued` now.
    var queuedCount = 0
    public private(set) var workers: [WorkerRecord]
    var nextGeneration: UInt64 = 0
    public private(set) var stopping = false
    var announcedReady = false
    var rng: SplitMix64
    /// The version of the last lease set applied (several hosts).
    var leaseVersion: UInt64 = 0

    /// - Parameter generationBase: where this layout's generation numbers start (layouts never share one).
    /// - Parameter startLimit: how many workers may be starting at once (see `startLimit`).
    /// - Parameter leased: several hosts share the shards: every slot starts `elsewhere` until its lease is gained.
    public init(shards: Int, timings: Timings, restart: RestartConfig, seed: UInt64 = 1, sessions: [Int: (id: String, seq: Int)] = [:], generationBase: UInt64 = 0, startLimit: Int = .max, leased: Bool = false) {
        self.timings = timings
        self.restart = restart
        self.startLimit = max(1, startLimit)
        nextGeneration = generationBase
        rng = SplitMix64(seed: seed)
        workers = (0..<shards).map { ordinal in
            var record = WorkerRecord(ordinal: ordinal, shard: ShardID(ordinal, of: shards), policy: RestartPolicy(config: restart))
            record.session = sessions[ordinal]
            if leased { record.state = .elsewhere }
            return record
        }
    }

    /// Every worker this host runs is ready (a slot another host holds does not count).
    public var allReady: Bool { workers.allSatisfy { $0.state == .ready || $0.state == .elsewhere } }

    /// A worker of this layout is failed for good or stuck in a crash loop.
    public var firstFailure: (ordinal: Int, reason: String)? {
        workers.first { $0.state == .failed }.map { ($0.ordinal, $0.failure ?? "failed") }
    }

    /// Whether a process of this layout has `pid`.
    public func owns(pid: Int32) -> Bool {
        workers.contains { $0.pid == pid && $0.state.isLive }
    }

    /// The worker slot `ordinal`, or nil when the layout has no such slot.
    public func worker(ordinal: Int) -> WorkerRecord? {
        workers.indices.contains(ordinal) ? workers[ordinal] : nil
    }

    /// The worker whose current process has `generation`, if any.
    func index(_ ordinal: Int, _ generation: UInt64) -> Int? {
        guard workers.indices.contains(ordinal), workers[ordinal].generation == generation, workers[ordinal].state.isLive else { return nil }
        return ordinal
    }

    /// The slot whose last process, `generation`, exited after a handover (its last words still arrive).
    func handedOver(_ ordinal: Int, _ generation: UInt64) -> Int? {
        guard workers.indices.contains(ordinal), workers[ordinal].generation == generation, workers[ordinal].state == .elsewhere,
            workers[ordinal].handedOver
        else { return nil }
        return ordinal
    }

    /// The worker spoke after its hello: it is not hung (silence is measured from here on, never back in time).
    mutating func heard(_ i: Int, now: MonotonicInstant) {
        if let last = workers[i].lastHeard { workers[i].lastHeard = max(last, now) }
    }

    /// The worker's latest beat in the liveness table: the time it last ran (counted from its hello on, never
    /// later than `now`). Decides nothing: a beat only moves a silence deadline later.
    public mutating func recordBeat(ordinal: Int, generation: UInt64, at: MonotonicInstant, now: MonotonicInstant) {
        guard let i = index(ordinal, generation) else { return }
        heard(i, now: min(at, now))
    }

    /// Workers spawned and not ready yet for the first time (those a start slot is taken by).
    var starting: Int {
        workers.reduce(0) { $0 + ($1.isStarting ? 1 : 0) }
    }

    /// Applies one event at `now`; returns the actions to carry out (starting queued workers as slots free up).
    public mutating func handle(_ event: Event, now: MonotonicInstant) -> [Action] {
        let actions = apply(event, now: now)
        guard queuedCount > 0, !stopping else { return actions }
        return actions + startQueued(now: now)
    }

    /// Starts queued workers while start slots are free: those with a session to resume first (a crashed worker
    /// is back before new shards join), then by ordinal.
    mutating func startQueued(now: MonotonicInstant) -> [Action] {
        var free = startLimit - starting
        guard free > 0 else { return [] }
        var actions: [Action] = []
        let queued = workers.indices.filter { workers[$0].state == .queued }
        for i in queued.filter({ workers[$0].session != nil }) + queued.filter({ workers[$0].session == nil }) {
            guard free > 0 else { break }
            queuedCount -= 1
            actions += launch(i, now: now)
            free -= 1
        }
        return actions
    }

    mutating func apply(_ event: Event, now: MonotonicInstant) -> [Action] {
        switch event {
        case .start:
            // Everyone queues, and the first `startLimit` start at once: those with a session to resume first.
            return workers.indices.filter { workers[$0].state != .elsewhere }.flatMap { enqueue($0) }
        case .spawned(let ordinal, let generation, let pid):
            if workers.indices.contains(ordinal), workers[ordinal].generation != generation || workers[ordinal].state == .elsewhere {
                // Not the slot's process (fenced while its spawn was under way, and maybe started again since): it
                // must not run.
                return [.killGroup(pid: pid)]
            }
            guard let i = index(ordinal, generation) else { return [] }
            workers[i].pid = pid
            if workers[i].handingOver, workers[i].stopRequestedAt == nil { return drain(i, pid: pid, now: now) }
            // Told to drain while its spawn was under way (a stop): it had no pid to be signalled then.
            if workers[i].state == .draining, workers[i].stopRequestedAt != nil { return [.signal(pid: pid, signal: .terminate)] }
            return []
        case .spawnFailed(let ordinal, let generation, let reason):
            guard let i = index(ordinal, generation) else { return [] }
            return [.log(.error, "worker \(ordinal): cannot spawn: \(reason)")] + exited(i, status: .exited(127), now: now)
        case .hello(let ordinal, let generation):
            guard let i = index(ordinal, generation) else { return [] }
            workers[i].lastHeard = now
            if workers[i].state == .spawning { workers[i].state = .connected }
            return []
        case .progress(let ordinal, let generation, let progress):
            guard let i = index(ordinal, generation) else {
                // A worker handed over may be reaped before its last report is read: its session still counts.
                if let i = handedOver(ordinal, generation), let session = progress.session { return commit(i, id: session.id, seq: Int(max(0, session.seq))) }
                return []
            }
            heard(i, now: now)
            workers[i].progress = progress
            workers[i].progressAt = now
            var actions: [Action] = []
            if let session = progress.session {
                actions += commit(i, id: session.id, seq: Int(max(0, session.seq)))
            }
            if workers[i].state != .draining {
                switch progress.state {
                case .connecting: if workers[i].state != .ready { workers[i].state = .connected }
                case .identifying: workers[i].state = .identifying
                case .ready: actions += markReady(i, now: now)
                case .draining: workers[i].state = .draining
                }
            }
            return actions
        case .identifying(let ordinal, let generation):
            guard let i = index(ordinal, generation) else { return [] }
            heard(i, now: now)
            if workers[i].state != .draining { workers[i].state = .identifying }
            return []
        case .gatewayReady(let ordinal, let generation):
            guard let i = index(ordinal, generation) else { return [] }
            heard(i, now: now)
            return markReady(i, now: now)
        case .sessionCommitted(let ordinal, let generation, let id, let seq):
            guard let i = index(ordinal, generation) else {
                if let i = handedOver(ordinal, generation) { return commit(i, id: id, seq: seq) }
                return []
            }
            heard(i, now: now)
            return commit(i, id: id, seq: seq)
        case .sessionInvalidated(let ordinal, let generation):
            guard let i = index(ordinal, generation) else { return [] }
            workers[i].session = nil
            return [.forgetSession(shard: workers[i].shard)]
        case .gatewayFailed(let ordinal, let generation, let reason):
            guard let i = index(ordinal, generation) else { return [] }
            workers[i].fatal = reason
            return [.log(.error, "worker \(ordinal) (shard \(workers[i].shard)): \(reason)")]
        case .exited(let pid, let status):
            guard let i = workers.firstIndex(where: { $0.pid == pid && $0.state.isLive }) else { return [] }
            return exited(i, status: status, now: now)
        case .tick:
            return tick(now)
        case .restart(let ordinal):
            guard workers.indices.contains(ordinal), !stopping else { return [] }
            switch workers[ordinal].state {
            case .queued:
                return []
            case .elsewhere:
                return [.log(.info, "worker \(ordinal): not restarted: another host holds the shard's lease")]
            case .backoff, .failed, .stopped:
                workers[ordinal].failure = nil
                workers[ordinal].policy = RestartPolicy(config: restart)
                return [.log(.info, "worker \(ordinal): restarting on request")] + spawn(ordinal)
            case .draining:
                workers[ordinal].respawnWhenExited = true
                return []
            default:
                guard let pid = workers[ordinal].pid else {
                    workers[ordinal].respawnWhenExited = true
                    return []
                }
                workers[ordinal].respawnWhenExited = !workers[ordinal].handingOver
                return [.log(.info, "worker \(ordinal): restarting on request (draining pid \(pid))")] + drain(ordinal, pid: pid, now: now)
            }
        case .leases(let version, let held):
            guard version > leaseVersion else { return [] }
            leaseVersion = version
            var actions: [Action] = []
            for i in workers.indices {
                actions += reconcile(i, with: held[workers[i].ordinal], now: now)
            }
            return actions
        case .stop:
            guard !stopping else { return [] }
            stopping = true
            var actions: [Action] = []
            for i in workers.indices {
                switch workers[i].state {
                case .elsewhere:
                    continue
                case .queued, .backoff, .failed, .stopped:
                    workers[i].state = .stopped
                    workers[i].respawnAt = nil
                default:
                    workers[i].state = .draining
                    workers[i].stopRequestedAt = now
                    if let pid = workers[i].pid { actions.append(.signal(pid: pid, signal: .terminate)) }
                }
            }
            queuedCount = 0
            if workers.allSatisfy({ !$0.state.isLive }) { actions.append(.allStopped) }
            return actions
        }
    }

    /// Whether every worker that runs, or will run again, has answered `fence` in its current process: a slot
    /// failed for good or stopped owes nothing (nothing runs there, nor will); one backing off or starting owes its
    /// next process's answer.
    func passed(_ fence: SupervisorCore.LayoutChange.Fence) -> Bool {
        workers.allSatisfy { Self.owesNoFence($0, fence) }
    }

    /// Whether `worker`'s slot owes `fence` nothing: it answered in its current process, or nothing runs there nor
    /// will (failed for good, stopped, another host's).
    static func owesNoFence(_ worker: WorkerRecord, _ fence: SupervisorCore.LayoutChange.Fence) -> Bool {
        switch worker.state {
        case .failed, .stopped, .elsewhere: return true
        default: return worker.state.isLive && worker.state != .draining && fence.finished.contains(worker.generation)
        }
    }

    /// Queues worker `i` to start: `handle` starts it at once when a start slot is free (one way to start a
    /// process, in turn, whatever asked for it).
    mutating func spawn(_ i: Int) -> [Action] {
        enqueue(i)
    }

    mutating func enqueue(_ i: Int) -> [Action] {
        if workers[i].state != .queued { queuedCount += 1 }
        workers[i].state = .queued
        workers[i].pid = nil
        workers[i].readyAt = nil
        workers[i].respawnAt = nil
        return []
    }

    mutating func launch(_ i: Int, now: MonotonicInstant) -> [Action] {
        nextGeneration += 1
        workers[i].generation = nextGeneration
        workers[i].state = .spawning
        workers[i].pid = nil
        workers[i].startedAt = now
        workers[i].readyAt = nil
        workers[i].lastHeard = nil
        workers[i].progress = nil
        workers[i].abortedAt = nil
        workers[i].killedAt = nil
        workers[i].stopRequestedAt = nil
        workers[i].respawnAt = nil
        workers[i].fatal = nil
        workers[i].respawnWhenExited = false
        return [.spawn(ordinal: i, generation: nextGeneration, shard: workers[i].shard)]
    }

    /// Brings slot `i` in line with the lease this host holds for it (nil: none).
    mutating func reconcile(_ i: Int, with lease: LeaseGrant?, now: MonotonicInstant) -> [Action] {
        var actions: [Action] = []
        if workers[i].state != .elsewhere, lease?.token != workers[i].leaseToken || lease == nil {
            actions += fence(i, reason: lease == nil ? "the lease is lost" : "the lease was replaced (token \(workers[i].leaseToken.map(String.init) ?? "none") → \(lease!.token))", now: now)
        }
        guard let lease else { return actions }
        if workers[i].state == .elsewhere {
            guard !lease.handingOver, !stopping else { return actions }
            workers[i].leaseToken = lease.token
            workers[i].handedOver = false
            workers[i].session = lease.sessionID.map { ($0, lease.sessionSeq) }
            workers[i].failure = nil
            workers[i].handingOver = false
            workers[i].policy = RestartPolicy(config: restart)
            let resume = lease.sessionID.map { "; resuming session \(String($0.prefix(8))) at seq \(lease.sessionSeq)" } ?? ""
            return actions + [.log(.info, "shard \(workers[i].shard): lease gained (token \(lease.token))\(resume)")] + enqueue(i)
        }
        if lease.handingOver && !workers[i].handingOver {
            actions += handOver(i, now: now)
        }
        return actions
    }

    /// Hands slot `i`'s shard to another host: its worker drains; once it exited the slot is `elsewhere`.
    mutating func handOver(_ i: Int, now: MonotonicInstant) -> [Action] {
        workers[i].handingOver = true
        workers[i].respawnWhenExited = false
        guard workers[i].state.isLive, let pid = workers[i].pid else {
            // Nothing runs (queued, backing off, failed), or its spawn is under way (`spawned` drains it).
            if workers[i].state.isLive { return [] }
            return settleElsewhere(i) + [.log(.info, "shard \(workers[i].shard): handed over")]
        }
        guard workers[i].stopRequestedAt == nil else { return [] }
        return [.log(.info, "shard \(workers[i].shard): handing over to another host (draining pid \(pid))")] + drain(i, pid: pid, now: now)
    }

    /// SIGTERM to worker `i`'s process `pid`: it drains and exits; the stop grace runs from now.
    mutating func drain(_ i: Int, pid: Int32, now: MonotonicInstant) -> [Action] {
        workers[i].state = .draining
        workers[i].stopRequestedAt = now
        return [.signal(pid: pid, signal: .terminate)]
    }

    /// The slot is no longer this host's: nothing runs or waits in it.
    mutating func settleElsewhere(_ i: Int) -> [Action] {
        if workers[i].state == .queued { queuedCount -= 1 }
        workers[i].state = .elsewhere
        workers[i].leaseToken = nil
        workers[i].pid = nil
        workers[i].respawnAt = nil
        workers[i].readyAt = nil
        workers[i].respawnWhenExited = false
        return []
    }

    /// The lease is lost (or about to expire unrenewed): the worker dies now, before another host can take the
    /// shard, and the slot is `elsewhere` at once. A process-group kill is immediate; its gateway socket closes
    /// with it, so two sessions of one shard never overlap.
    mutating func fence(_ i: Int, reason: String, now: MonotonicInstant) -> [Action] {
        workers[i].handedOver = false
        var actions: [Action] = [.log(.warning, "shard \(workers[i].shard): \(reason); fencing: worker \(workers[i].ordinal) stopped")]
        if workers[i].state.isLive, let pid = workers[i].pid {
            actions.append(.killGroup(pid: pid))
        }
        let wasLive = workers[i].state.isLive
        actions += settleElsewhere(i)
        workers[i].handingOver = false
        workers[i].progress = nil
        workers[i].killedAt = wasLive ? now : nil
        if stopping, workers.allSatisfy({ !$0.state.isLive }) { actions.append(.allStopped) }
        return actions
    }

    /// The worker's committed session, to store when it moved (a report repeats it while it stands still).
    mutating func commit(_ i: Int, id: String, seq: Int) -> [Action] {
        if let session = workers[i].session, session.id == id, session.seq == seq { return [] }
        workers[i].session = (id, seq)
        return [.persistSession(shard: workers[i].shard, id: id, seq: seq)]
    }

    mutating func markReady(_ i: Int, now: MonotonicInstant) -> [Action] {
        guard workers[i].state != .draining else { return [] }
        workers[i].state = .ready
        if workers[i].readyAt == nil { workers[i].readyAt = now }
        workers[i].policy.ready(now: now)
        if !announcedReady && allReady {
            announcedReady = true
            return [.clusterReady]
        }
        return []
    }

    mutating func exited(_ i: Int, status: ExitStatus, now: MonotonicInstant) -> [Action] {
        let ordinal = workers[i].ordinal
        let hadPID = workers[i].pid
        workers[i].lastExit = status
        workers[i].pid = nil
        workers[i].progress = nil
        var actions: [Action] = []
        if let pid = hadPID, workers[i].killedAt == nil {
            // Anything the worker started dies with it.
            actions.append(.killGroup(pid: pid))
        }
        if stopping {
            workers[i].state = workers[i].handingOver ? .elsewhere : .stopped
            if workers.allSatisfy({ !$0.state.isLive }) { actions.append(.allStopped) }
            return actions
        }
        if workers[i].handingOver {
            defer { workers[i].handedOver = true }
            return actions + settleElsewhere(i) + [.log(.info, "shard \(workers[i].shard): handed over (worker \(ordinal) ended with \(status))")]
        }
        if workers[i].respawnWhenExited {
            workers[i].restarts += 1
            return actions + [.restarted(ordinal: ordinal, reason: .requested), .log(.info, "worker \(ordinal): replaced after \(status)")] + spawn(i)
        }
        let fatal: String? = {
            if let reason = workers[i].fatal { return reason }
            if case .exited(let code) = status, WorkerExitStatus.isFatal(code) {
                switch code {
                case WorkerExitStatus.configurationError: return "the gateway refused the configuration"
                case WorkerExitStatus.reshardRequired: return "the gateway needs more shards (4011)"
                default: return "the bot is delisted or banned"
                }
            }
            return nil
        }()
        if let fatal {
            workers[i].state = .failed
            workers[i].failure = fatal
            return actions + [.log(.error, "worker \(ordinal) (shard \(workers[i].shard)) ended with \(status): \(fatal); not restarted")]
        }
        workers[i].restarts += 1
        actions.append(.restarted(ordinal: ordinal, reason: workers[i].abortedAt != nil ? .hang : .crash))
        switch workers[i].policy.crashed(now: now, rng: &rng) {
        case .now:
            return actions + [.log(.warning, "worker \(ordinal) (shard \(workers[i].shard)) ended with \(status); restarting now")] + spawn(i)
        case .after(let delay):
            workers[i].state = .backoff
            workers[i].respawnAt = now + delay
            return actions + [.log(.warning, "worker \(ordinal) (shard \(workers[i].shard)) ended with \(status); restarting in \(DurationFormat.human(delay))")]
        case .failed(let retryAfter):
            workers[i].state = .failed
            workers[i].failure = "crashed more than \(restart.maxCrashes) times in \(DurationFormat.format(restart.crashWindow))"
            workers[i].respawnAt = now + retryAfter
            return actions + [.log(.error, "worker \(ordinal) (shard \(workers[i].shard)) failed: \(workers[i].failure!); next try in \(DurationFormat.human(retryAfter))")]
        }
    }

    mutating func tick(_ now: MonotonicInstant) -> [Action] {
        var actions: [Action] = []
        for i in workers.indices {
            let worker = workers[i]
            if worker.state.isLive, let pid = worker.pid {
                if let killedAt = worker.killedAt {
                    _ = killedAt
                } else if let aborted = worker.abortedAt, now - aborted >= timings.abortGrace {
                    workers[i].killedAt = now
                    actions.append(.killGroup(pid: pid))
                } else if let stopAt = worker.stopRequestedAt, now - stopAt >= timings.stopGrace {
                    workers[i].killedAt = now
                    actions.append(.log(.warning, "worker \(worker.ordinal) did not drain within \(DurationFormat.format(timings.stopGrace)); killing it"))
                    actions.append(.killGroup(pid: pid))
                } else if worker.abortedAt == nil && worker.stopRequestedAt == nil {
                    actions += abortIfSilent(i, now: now)
                }
            } else if !stopping, worker.state == .backoff || worker.state == .failed, let at = worker.respawnAt, now >= at {
                actions += spawn(i)
            }
        }
        return actions
    }

    /// SIGABRT (then SIGKILL after the abort grace) for a worker still silent past its limit.
    mutating func abortIfSilent(_ i: Int, now: MonotonicInstant) -> [Action] {
        let worker = workers[i]
        guard let pid = worker.pid else { return [] }
        let silentSince = worker.lastHeard ?? worker.startedAt ?? now
        let limit = worker.lastHeard == nil ? timings.helloTimeout : timings.hangAfter
        guard now - silentSince > limit else { return [] }
        workers[i].abortedAt = now
        let what = worker.lastHeard == nil ? "never said hello" : "sent nothing"
        return [
            .log(.warning, "worker \(worker.ordinal) (pid \(pid)) \(what) for \(DurationFormat.human(now - silentSince)): hung; SIGABRT, then SIGKILL after \(DurationFormat.format(timings.abortGrace))"),
            .signal(pid: pid, signal: .abort),
        ]
    }

    /// When the next tick has something to do.
    public var nextDeadline: MonotonicInstant? {
        var deadline: MonotonicInstant?
        func consider(_ t: MonotonicInstant?) {
            if let t { deadline = deadline.map { min($0, t) } ?? t }
        }
        for worker in workers {
            if worker.state.isLive, worker.pid != nil, worker.killedAt == nil {
                if let aborted = worker.abortedAt {
                    consider(aborted + timings.abortGrace)
                } else if let stop = worker.stopRequestedAt {
                    consider(stop + timings.stopGrace)
                } else {
                    let since = worker.lastHeard ?? worker.startedAt
                    let limit = worker.lastHeard == nil ? timings.helloTimeout : timings.hangAfter
                    consider(since.map { $0 + limit + .milliseconds(1) })
                }
            } else if !stopping, worker.state == .backoff || worker.state == .failed {
                consider(worker.respawnAt)
            }
        }
        return deadline
    }
}
