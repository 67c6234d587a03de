import ClusterCore

/// Everything the supervisor decides, as one pure value: the cluster's layouts (each a `ClusterStateMachine`) and
/// the layout change in progress (a rescale or a rolling restart). Every event goes through `handle(_:now:)`, and
/// what to do comes out as actions; the time is a parameter. `ClusterSupervisor` owns one, behind one lock, and
/// carries out the actions.
public struct SupervisorCore: Sendable {
    /// What the core hears: the layouts' events, the fence answers of a layout change, the operator's change commands.
    public enum Event: Sendable {
        /// A worker, process or timer event (a `.tick` also moves a layout change past its deadlines), routed to its
        /// layout by generation, by pid, or to the active layout (`ClusterLayouts`).
        case cluster(ClusterStateMachine.Event)
        /// A worker has handled everything the gateway sent it, its answer to the `finishDispatch` of `fence` (0: the
        /// fence after a switch; else a `LayoutChange.Fence.id`).
        case dispatchFinished(generation: UInt64, fence: UInt64 = 0)
        /// A worker's IPC connection closed (a retiring worker that is gone owes no `dispatchFinished`).
        case disconnected(generation: UInt64)
        /// Start a rescale to `shards`; `plan` is what the operator is told first.
        case beginScale(shards: Int, plan: String, seed: UInt64)
        /// Start replacing every worker of the active layout, `maxUnavailable` at a time.
        case beginRoll(maxUnavailable: Int)
        /// Several hosts: the cluster's layout as a lease round read it from the store (the shard count that
        /// serves, a rescale's target, and whether every shard of the target is ready on some host). The layouts
        /// here follow it: a target starts an incoming layout on leases; the target ready everywhere starts the
        /// fence of the serving workers here (see `LayoutChange.fence`); the target serving switches to it; a
        /// target given up abandons it; a serving count this host does not run (it joined late, or missed a
        /// switch) is taken up at once.
        case storeLayout(serving: Int, next: Int?, nextReady: Bool = false, seed: UInt64)
        /// Several hosts: the leases this host holds of the layout of `total` shards (see
        /// `ClusterStateMachine.Event.leases`), for that layout's workers.
        case leases(total: Int, version: UInt64, held: [Int: LeaseGrant])
    }

    /// What the supervisor carries out: the layouts' worker actions, a layout change's steps, the operator's lines.
    public enum Action: Sendable, Equatable {
        /// What a layout's state machine decided.
        case worker(layout: Int, ClusterStateMachine.Action)
        /// Tell every worker of the layout to hand events to its handler (the switch of a rescale).
        case startDispatch(layout: Int)
        /// Ask every worker of the layout to handle what it received and answer `dispatchFinished` (the fence).
        case finishDispatch(layout: Int)
        /// Ask the one worker of the layout whose process has `generation` for the fence before the switch, `fence`
        /// naming it (see `LayoutChange.fence`).
        case finishDispatchOf(layout: Int, generation: UInt64, fence: UInt64)
        /// Refuse further claims of the layout's workers (after the fence).
        case retireClaims(layout: Int)
        /// Forget the stored sessions of a layout of `total` shards that no longer runs.
        case forgetStoredLayout(total: Int)
        /// A line for the operator who asked for the change.
        case changeProgress(String)
        /// The change is over: whether it did what was asked, and the operator's answer.
        case changeFinished(ok: Bool, String)
        /// Several hosts: this host gave up the rescale to `to` shards: the store is to give it up for every host.
        case cancelStoredRescale(to: Int)
    }

    /// The deadlines of a layout change.
    public struct ChangeTimings: Sendable {
        /// How long a new layout has to become ready before the rescale is abandoned (`scale.readyTimeout`).
        public var readyTimeout: Duration
        /// How long retiring workers have to confirm the fence (`worker.drainTimeout` + `supervisor.stopGrace`).
        public var fenceTimeout: Duration
        /// How long a stopped layout's workers have to exit (`supervisor.stopGrace` + 5 s).
        public var stopTimeout: Duration
        /// How long a rolling restart's batch has to be replaced and ready (`supervisor.stopGrace` + `readyTimeout`).
        public var replaceTimeout: Duration
        /// Several hosts: how much later than the store's deadline this host gives a rescale up on its own (when
        /// the store cannot be reached to say so): a lease's time to live and a round.
        public var storeGrace: Duration

        /// Deadlines given one by one; `init(_:)` derives them from a configuration.
        public init(readyTimeout: Duration, fenceTimeout: Duration, stopTimeout: Duration, replaceTimeout: Duration, storeGrace: Duration = .zero) {
            self.readyTimeout = readyTimeout
            self.fenceTimeout = fenceTimeout
            self.stopTimeout = stopTimeout
            self.replaceTimeout = replaceTimeout
            self.storeGrace = storeGrace
        }

        /// The deadlines cluster.json sets.
        public init(_ config: ClusterConfig) {
            self.init(
                readyTimeout: config.scale.readyTimeout,
                fenceTimeout: config.worker.drainTimeout + config.supervisor.stopGrace,
                stopTimeout: config.supervisor.stopGrace + .seconds(5),
                replaceTimeout: config.supervisor.stopGrace + config.supervisor.readyTimeout,
                storeGrace: config.store.postgres.map { $0.leaseTTL + $0.renewInterval } ?? .zero
            )
        }
    }

    /// A rescale or a rolling restart in progress.
    public struct LayoutChange: Sendable, Equatable {
        /// Where a layout change stands.
        public enum Phase: Sendable, Equatable {
            /// A rescale's new layout connects and gets ready while the current one serves.
            case waitingForIncoming(layout: Int, readyReported: Int)
            /// After the switch: the retiring layout's workers that still owe `dispatchFinished`.
            case fencing(retiring: Int, waiting: Set<UInt64>)
            /// A layout drains and exits: the retired one (`abandoned` nil), or a new one given up.
            case stopping(layout: Int, abandoned: String?)
            /// A rolling restart replaces `ordinals`, whose processes had generations `before`.
            case replacing(ordinals: [Int], before: [UInt64], replaced: Int)
        }

        /// The shard count before the change, and after it (the same for a rolling restart).
        public let from: Int
        public let to: Int
        /// A rolling restart's batch size (0 for a rescale).
        public let batch: Int
        public let started: MonotonicInstant
        /// Several hosts: the store decides the switch (every host's new shards ready), not this host's layout.
        public let leased: Bool
        public internal(set) var phase: Phase
        /// Once every new shard is ready (several hosts: once the store says so of every host's): the fence of the
        /// serving workers before the switch. Each ready worker of the serving layout is asked once per process (a
        /// replacement, resumed after a crash, a hang or a takeover, is asked when it is ready). On one host the
        /// switch comes when every serving worker that runs has answered; across hosts the answers are reported in
        /// the leases, and the store switches when every serving lease is held and fenced. Whatever the old layout
        /// alone received (before the new one was ready) is then handled first, even when one of its workers hangs or
        /// dies, or its host does: the worker is replaced or its lease taken over, and the fence waits for the replay.
        public internal(set) var fence: Fence?

        /// The fence before a switch: its id (answers to an earlier fence, forgotten since, do not count), the
        /// serving processes asked, and those that answered.
        public struct Fence: Sendable, Equatable {
            public let id: UInt64
            public internal(set) var asked: Set<UInt64> = []
            public internal(set) var finished: Set<UInt64> = []
        }
        /// When the current phase gives up.
        public internal(set) var deadline: MonotonicInstant
    }

    public private(set) var layouts: ClusterLayouts
    public private(set) var change: LayoutChange?
    let changeTimings: ChangeTimings
    /// Whether a rescale's switch waits for the serving workers' fence (`LayoutChange.fence`): with gateway
    /// sessions, each layout receives events on its own, and what the old one alone received must be handled
    /// first. Webhook delivery turns it off: the ingress routes each event to one layout and keeps what it routed.
    public var fencesBeforeSwitch = true
    /// The id of the last fence before a switch begun (`LayoutChange.Fence.id`).
    var lastFenceID: UInt64 = 0
    /// Several hosts: the target of a rescale this host gave up, while the store may still show it (the cancel is
    /// on its way): a round that reads it then does not start it again here.
    var givenUpTarget: Int?

    /// A core with `active` as its only layout and no change in progress.
    public init(active: ClusterStateMachine, changeTimings: ChangeTimings) {
        layouts = ClusterLayouts(active: active)
        self.changeTimings = changeTimings
    }

    /// When the next `.cluster(.tick)` has something to do: kept as events come, not searched for on every read.
    /// A worker's report (progress, a beat, a session) that leads to nothing can only move its own deadline later,
    /// so it leaves the value as it was: at worst a little early, and the tick it brings finds nothing due and
    /// searches again. The search looks at every worker; skipping it keeps a report's cost flat as shards grow.
    public private(set) var nextDeadline: MonotonicInstant?

    /// The earliest deadline, searched for among every worker (what `nextDeadline` keeps).
    public var searchedNextDeadline: MonotonicInstant? {
        [layouts.nextDeadline, change?.deadline].compactMap { $0 }.min()
    }

    /// Applies one event at `now`; returns the actions to carry out (a change may pass several phases at once).
    public mutating func handle(_ event: Event, now: MonotonicInstant) -> [Action] {
        let actions = apply(event, now: now)
        if !Self.keepsDeadline(after: event, actions) { nextDeadline = searchedNextDeadline }
        return actions
    }

    /// A worker's beat read from the liveness table: only its silence moves (later), so nothing is decided and the
    /// kept deadline stays (the tick the beats come before searches again).
    public mutating func recordBeat(ordinal: Int, generation: UInt64, at: MonotonicInstant, now: MonotonicInstant) {
        layouts.recordBeat(ordinal: ordinal, generation: generation, at: at, now: now)
    }

    mutating func apply(_ event: Event, now: MonotonicInstant) -> [Action] {
        var actions: [Action]
        switch event {
        case .cluster(let event):
            actions = layouts.handle(event, now: now).map { .worker(layout: $0.0, $0.1) }
        case .dispatchFinished(let generation, let fence) where fence != 0:
            actions = []
            if let current = change?.fence, current.id == fence, current.asked.contains(generation) {
                change?.fence?.finished.insert(generation)
            }
        case .dispatchFinished(let generation, _), .disconnected(let generation):
            actions = []
            if case .fencing(let retiring, var waiting)? = change?.phase, waiting.remove(generation) != nil {
                change?.phase = .fencing(retiring: retiring, waiting: waiting)
            }
        case .beginScale(let shards, let plan, let seed):
            guard change == nil, !layouts.active.machine.stopping else { return [] }
            let incoming = beginRescale(to: shards, seed: seed, leased: false, deadline: now + changeTimings.readyTimeout, now: now)
            actions = [.changeProgress(plan)] + layouts.handle(.start, in: incoming, now: now).map { .worker(layout: $0.0, $0.1) }
        case .beginRoll(let maxUnavailable):
            guard change == nil, !layouts.active.machine.stopping else { return [] }
            let count = layouts.active.machine.workers.count
            change = LayoutChange(
                from: count, to: count, batch: max(1, min(maxUnavailable, count)), started: now, leased: false,
                phase: .replacing(ordinals: [], before: [], replaced: 0), deadline: now
            )
            actions = replaceNextBatch(replaced: 0, now: now)
        case .storeLayout(let serving, let next, let nextReady, let seed):
            actions = follow(serving: serving, next: next, nextReady: nextReady, seed: seed, now: now)
        case .leases(let total, let version, let held):
            guard let layout = layouts.layout(total: total) else { return [] }
            actions = layouts.handle(.leases(version: version, held: held), in: layout.id, now: now).map { .worker(layout: $0.0, $0.1) }
        }
        return actions + advance(now: now) + askFence()
    }

    /// Several hosts, during the fence before a switch: asks each ready serving worker not asked yet.
    mutating func askFence() -> [Action] {
        guard var fence = change?.fence, case .waitingForIncoming? = change?.phase else { return [] }
        let active = layouts.active
        let due = active.machine.workers.filter { $0.state == .ready && !fence.asked.contains($0.generation) }.map(\.generation)
        guard !due.isEmpty else { return [] }
        fence.asked.formUnion(due)
        change?.fence = fence
        return due.map { .finishDispatchOf(layout: active.id, generation: $0, fence: fence.id) }
    }

    /// Several hosts: the shards of the serving layout of `total` shards whose worker here passed the fence before
    /// the switch (what the lease round reports).
    public func fencedShards(total: Int) -> Set<Int> {
        guard let fence = change?.fence, case .waitingForIncoming? = change?.phase, layouts.active.machine.workers.count == total else { return [] }
        // A slot of this host's that owes nothing (failed for good, stopped) counts: its lease must not hold the switch.
        return Set(layouts.active.machine.workers.filter { $0.state != .elsewhere && ClusterStateMachine.owesNoFence($0, fence) }.map(\.ordinal))
    }

    /// Moves the layout change as far as the layouts allow now (several phases at once when nothing is left to
    /// wait for).
    mutating func advance(now: MonotonicInstant) -> [Action] {
        var actions: [Action] = []
        while let change {
            if layouts.active.machine.stopping {
                self.change = nil
                return actions + [.changeFinished(ok: false, "stopped: the supervisor is shutting down")]
            }
            let step = advance(change, now: now)
            actions += step.actions
            if !step.moved { break }
        }
        return actions
    }

    /// One step of the change: its actions, and whether its phase moved (so that the next one is looked at too).
    mutating func advance(_ change: LayoutChange, now: MonotonicInstant) -> (actions: [Action], moved: Bool) {
        switch change.phase {
        case .waitingForIncoming(let incoming, let reported):
            guard let machine = layouts.layout(incoming)?.machine else { return (finish(ok: false, "the new layout is gone"), true) }
            let ready = machine.workers.filter { $0.state == .ready }.count
            // Several hosts: every host's new shards must be ready, which only the store knows (`storeLayout`).
            if machine.announcedReady && !change.leased {
                guard fencesBeforeSwitch else { return (switchOver(to: incoming, change, now: now), true) }
                if ready == change.to {
                    guard let fence = change.fence else {
                        // Asked of the serving workers at the end of this event (`askFence`).
                        let fence = newFence()
                        self.change?.fence = fence
                        return ([.changeProgress("new shards ready \(change.to)/\(change.to): the serving shards handle what they received (the fence before the switch)")], true)
                    }
                    if layouts.active.machine.passed(fence) { return (switchOver(to: incoming, change, now: now), true) }
                } else if change.fence != nil {
                    // A new worker is not ready any more (it restarted and identifies anew): what arrives until it
                    // is reaches the serving layout alone, so the fence is passed again once every one is ready.
                    self.change?.fence = nil
                }
            }
            let cancel: [Action] = change.leased ? [.cancelStoredRescale(to: change.to)] : []
            if let failure = machine.firstFailure {
                if change.leased { givenUpTarget = change.to }
                return (cancel + abandon(incoming, reason: "worker \(failure.ordinal) of the new layout failed: \(failure.reason)", now: now), true)
            }
            if now >= change.deadline {
                if change.leased { givenUpTarget = change.to }
                // Several hosts: the store decides; this host gives up when even the store's deadline is long past
                // (it could not hear the store say so): the layout it runs next is the store's, as a round reads it.
                let reason = change.leased
                    ? "this host heard nothing from the store past the rescale's deadline (\(ready) new shards ready here)"
                    : "the new layout was not ready within scale.readyTimeout (\(ready)/\(change.to) ready)"
                return (cancel + abandon(incoming, reason: reason, now: now), true)
            }
            guard ready != reported else { return ([], false) }
            self.change?.phase = .waitingForIncoming(layout: incoming, readyReported: ready)
            let of = change.leased ? "\(ready) here (\(change.to) in all)" : "\(ready)/\(change.to)"
            return ([.changeProgress("new shards ready \(of)")], false)

        case .fencing(let retiring, let waiting):
            let workers = layouts.layout(retiring)?.machine.workers ?? []
            // A worker that exited owes nothing.
            let pending = workers.filter { waiting.contains($0.generation) && $0.state.isLive }
            var actions: [Action] = []
            if !pending.isEmpty {
                guard now >= change.deadline else { return ([], false) }
                actions.append(.worker(layout: retiring, .log(.warning, "retiring workers \(pending.map(\.ordinal)) did not confirm they handled everything they received; draining them anyway")))
            }
            self.change?.phase = .stopping(layout: retiring, abandoned: nil)
            self.change?.deadline = now + changeTimings.stopTimeout
            return (actions + [.retireClaims(layout: retiring)] + layouts.handle(.stop, in: retiring, now: now).map { .worker(layout: $0.0, $0.1) }, true)

        case .stopping(let layout, let abandoned):
            let stopped = layouts.layout(layout)?.machine.workers.allSatisfy { !$0.state.isLive } ?? true
            guard stopped || now >= change.deadline else { return ([], false) }
            layouts.remove(layout)
            if let abandoned {
                // Several hosts: which layout serves is the store's to say (this host follows it at its next round).
                let serving = change.leased ? "the cluster's layout is the store's (botcluster status)" : "the \(change.from)-shard layout keeps serving"
                return (finish(ok: false, "rescale abandoned: \(abandoned); \(serving)"), true)
            }
            return ([.forgetStoredLayout(total: change.from)] + finish(ok: true, "scaled \(change.from) -> \(change.to) shards in \(DurationFormat.human(now - change.started))"), true)

        case .replacing(let ordinals, let before, let replaced):
            let machine = layouts.active.machine
            let states = ordinals.map { machine.worker(ordinal: $0) }
            // A slot another host holds (several hosts) is not this host's to replace: it counts as done.
            if zip(states, before).allSatisfy({ worker, old in worker.map { $0.state == .elsewhere || ($0.generation != old && $0.state == .ready) } ?? false }) {
                let done = replaced + ordinals.count
                if done >= change.from {
                    return ([.changeProgress("replaced \(done)/\(change.from)")] + finish(ok: true, "rolled \(change.from) workers in \(DurationFormat.human(now - change.started))"), true)
                }
                return ([.changeProgress("replaced \(done)/\(change.from)")] + replaceNextBatch(replaced: done, now: now), true)
            }
            if let stuck = zip(states, before).compactMap({ worker, old in worker.flatMap { $0.generation != old && ($0.state == .failed || $0.state == .backoff) ? $0 : nil } }).first {
                let why = stuck.failure ?? stuck.lastExit?.description ?? "crashed"
                return (finish(ok: false, "worker \(stuck.ordinal) did not come back (\(stuck.state.rawValue): \(why)); roll paused after \(replaced) of \(change.from)"), true)
            }
            if now >= change.deadline {
                return (finish(ok: false, "workers \(ordinals) were not ready in time; roll paused after \(replaced) of \(change.from)"), true)
            }
            return ([], false)
        }
    }

    /// The incoming layout serves from now on; the active one finishes what it received (the fence), then drains.
    mutating func switchOver(to incoming: Int, _ change: LayoutChange, now: MonotonicInstant) -> [Action] {
        guard let retiring = layouts.switchOver() else { return finish(ok: false, "no layout to switch from") }
        let waiting = Set(layouts.layout(retiring)?.machine.workers.filter { $0.state.isLive && $0.lastHeard != nil }.map(\.generation) ?? [])
        self.change?.phase = .fencing(retiring: retiring, waiting: waiting)
        self.change?.deadline = now + changeTimings.fenceTimeout
        let ready = change.leased ? "every host's new shards ready" : "new shards ready \(change.to)/\(change.to)"
        return [
            .changeProgress(ready), .startDispatch(layout: incoming),
            .changeProgress("switched: \(change.to) shards serve; the old \(change.from) drain"), .finishDispatch(layout: retiring),
        ]
    }

    /// A fence before a switch with an id of its own.
    mutating func newFence() -> LayoutChange.Fence {
        lastFenceID += 1
        return LayoutChange.Fence(id: lastFenceID)
    }

    /// Several hosts: follows the store's layout (see `Event.storeLayout`).
    mutating func follow(serving: Int, next: Int?, nextReady: Bool, seed: UInt64, now: MonotonicInstant) -> [Action] {
        let active = layouts.active.machine
        guard !active.stopping else { return [] }
        if let change {
            guard change.leased, case .waitingForIncoming(let incoming, _) = change.phase else {
                // A rolling restart, or the end of a switch: what the store says is looked at again next round.
                return []
            }
            if serving == change.to { return switchOver(to: incoming, change, now: now) }
            if next != change.to {
                return abandon(incoming, reason: "it was given up in the store (its deadline passed, or a host could not get its new shards ready)", now: now)
            }
            guard nextReady else {
                // A new shard is not ready any more (it restarted, or its host died): the store forgot every serving
                // fence, and this host's workers pass it again once every new shard is ready again.
                self.change?.fence = nil
                return []
            }
            guard change.fence == nil else { return [] }
            // Asked of the serving workers at the end of this event (`askFence`).
            let fence = newFence()
            self.change?.fence = fence
            return [.changeProgress("every host's new shards ready: the serving shards here handle what they received (the fence before the switch)")]
        }
        if serving != active.workers.count {
            // This host runs a layout the cluster left (it missed the switch, or was configured for another count):
            // the cluster's serves here at once; what the old one still runs finishes what it received and drains.
            let incoming = beginRescale(to: serving, seed: seed, leased: true, deadline: now, now: now)
            return [.worker(layout: layouts.active.id, .log(.warning, "the cluster runs \(serving) shards and this host ran \(active.workers.count): it takes up the \(serving)-shard layout now"))]
                + switchOver(to: incoming, change!, now: now)
        }
        guard let next, next != serving else {
            givenUpTarget = nil
            return []
        }
        // A rescale this host gave up, still in the store until its cancel lands: not begun again.
        if next == givenUpTarget { return [] }
        givenUpTarget = nil
        _ = beginRescale(to: next, seed: seed, leased: true, deadline: now + changeTimings.readyTimeout + changeTimings.storeGrace, now: now)
        return [.changeProgress("rescale \(serving) -> \(next) shards across hosts: this host starts the new layout's shards it takes")]
    }

    /// Adds a new layout of `shards` shards beside the active one (with its timings; several hosts: `leased`, its
    /// slots `elsewhere` until leases come, switched when the store says) and the rescale that waits for it until
    /// `deadline`; returns the new layout's id.
    mutating func beginRescale(to shards: Int, seed: UInt64, leased: Bool, deadline: MonotonicInstant, now: MonotonicInstant) -> Int {
        let active = layouts.active.machine
        let incoming = layouts.beginIncoming(ClusterStateMachine(
            shards: shards, timings: active.timings, restart: active.restart, seed: seed, generationBase: layouts.nextGenerationBase,
            startLimit: active.startLimit, leased: leased
        ))
        change = LayoutChange(
            from: active.workers.count, to: shards, batch: 0, started: now, leased: leased,
            phase: .waitingForIncoming(layout: incoming, readyReported: -1), deadline: deadline
        )
        return incoming
    }

    /// Restarts the next batch of a rolling restart, which has replaced `replaced` workers so far.
    mutating func replaceNextBatch(replaced: Int, now: MonotonicInstant) -> [Action] {
        guard let change else { return [] }
        let ordinals = Array(replaced..<min(replaced + change.batch, change.from))
        let before = ordinals.map { layouts.active.machine.worker(ordinal: $0)?.generation ?? 0 }
        self.change?.phase = .replacing(ordinals: ordinals, before: before, replaced: replaced)
        self.change?.deadline = now + changeTimings.replaceTimeout
        let active = layouts.active.id
        return ordinals.flatMap { layouts.handle(.restart(ordinal: $0), in: active, now: now).map { .worker(layout: $0.0, $0.1) } }
    }

    /// Gives up a rescale's new layout: it drains and exits while the current one keeps serving.
    mutating func abandon(_ incoming: Int, reason: String, now: MonotonicInstant) -> [Action] {
        _ = layouts.abandonIncoming()
        change?.phase = .stopping(layout: incoming, abandoned: reason)
        change?.deadline = now + changeTimings.stopTimeout
        return layouts.handle(.stop, in: incoming, now: now).map { .worker(layout: $0.0, $0.1) }
    }

    mutating func finish(ok: Bool, _ text: String) -> [Action] {
        change = nil
        return [.changeFinished(ok: ok, text)]
    }
}

extension SupervisorCore {
    /// Whether the kept next deadline still holds after `event` led to `actions`: a worker's report that decided
    /// nothing but what to store moves only the worker's own silence deadline, and only later. This is what keeps
    /// the supervisor's work per event flat as shards grow (no search of every worker per report).
    public static func keepsDeadline(after event: Event, _ actions: [Action]) -> Bool {
        event.isReport && actions.allSatisfy(\.isBookkeeping)
    }
}

extension SupervisorCore.Event {
    /// A worker's report, which moves nothing but its own silence deadline (later).
    public var isReport: Bool {
        switch self {
        case .cluster(.progress), .cluster(.sessionCommitted): return true
        default: return false
        }
    }
}

extension SupervisorCore.Action {
    /// Whether the action only records (a session to store): it starts, stops or times nothing.
    public var isBookkeeping: Bool {
        switch self {
        case .worker(_, .persistSession): return true
        default: return false
        }
    }
}
