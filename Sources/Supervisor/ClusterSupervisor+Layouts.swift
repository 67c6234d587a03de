import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Foundation
import Logging
import QQGateway
import Synchronization

extension ClusterSupervisor {
    /// `botcluster scale`: to a count or the platform's recommendation; `planOnly` only says what would happen.
    ///
    /// Blue/green by layout: the new layout (M shards, `[i, M]`) connects and gets ready while the current one
    /// serves; its workers hold dispatch. When every new shard is ready, the new workers start handling, and the old
    /// ones handle everything the gateway sent them until then (a fence; the shared claims keep each event that
    /// both layouts received to one handler), then drain and exit. A new
    /// layout that cannot get ready (budget, timeout, a worker that fails) is abandoned and the old one serves on.
    ///
    /// Several hosts: the store carries the change (see `scaleAcrossHosts`).
    func scale(to requested: ControlCommand.ScaleTarget, planOnly: Bool, progress: @escaping @Sendable (String) -> Void) async -> (Bool, String) {
        // The platform's word now: its recommendation, and the session starts left today (the day may have reset
        // since launch, and the ledger only counts down).
        var info: GatewayBotInfo?
        do {
            info = try await platform.api.gatewayBot()
        } catch {
            logger.warning("cannot ask the platform about the rescale; planning with the ledger's count", metadata: ["error": "\(error)"])
        }
        if let info { ledger.updateRemaining(info.remaining) }
        let target: Int
        switch requested {
        case .recommended:
            guard let info else { return (false, "cannot ask the platform for its recommendation") }
            target = info.shards
        case .count(let n):
            guard (1...ShardsConfig.maxCount).contains(n) else {
                return (false, "scale: give a shard count 1...\(ShardsConfig.maxCount) or auto, got \(n)")
            }
            target = n
        }
        let current = shardCount
        let identify = ledger.snapshot
        let window = setup.config.effectiveIdentifyWindow + setup.config.identify.margin
        let rounds = (target + identify.maxConcurrency - 1) / identify.maxConcurrency
        let webhookMode = setup.config.gateway.mode == .webhook
        let plan = leases != nil
            ? "scale \(current) -> \(target) shards across every host: each host starts the new layout's shards it takes while the current ones serve; "
                + "when every new shard is ready on every host, the store switches the cluster, and each host's old shards drain; "
                + "\(target) identifies at max_concurrency \(identify.maxConcurrency) take at least \(DurationFormat.human(window * (rounds - 1)))"
            : webhookMode
            ? "scale \(current) -> \(target) shards: a new layout of shards [0..\(target - 1)]/\(target) attaches to the webhook ingress while the current one serves, "
                + "then new events go to it and the current one handles what it holds; no gateway session is started"
            : "scale \(current) -> \(target) shards: a new layout of shards [0..\(target - 1)]/\(target) identifies while the current one serves, "
                + "then takes over; \(target) identifies at max_concurrency \(identify.maxConcurrency) take at least \(DurationFormat.human(window * (rounds - 1))); "
                + "session starts left today afterwards: \(identify.remaining - target)"
        if planOnly { return (true, plan) }
        guard target != current else { return (false, "the cluster already runs \(current) shards") }
        guard webhookMode || identify.remaining >= target else {
            return (false, "cannot scale to \(target) shards: the platform allows \(identify.remaining) more session starts today")
        }
        // The new layout's workers start beside the current ones, which the observed usage already counts.
        let (limitErrors, limitWarnings) = SystemLimits.observe(embeddedGateway: setup.config.gateway.embedded).problems(workers: target)
        for warning in limitWarnings { logger.warning("\(warning)") }
        guard limitErrors.isEmpty else {
            return (false, "cannot scale to \(target) shards: " + limitErrors.joined(separator: " "))
        }
        if let leases {
            return await scaleAcrossHosts(leases, from: current, to: target, progress: progress)
        }
        // Beside the core's lines as shards get ready: the ledger's estimate, every ten seconds while it comes up.
        return await withDiscardingTaskGroup { group in
            group.addTask { await self.followStartup(every: .seconds(10), incomingOnly: true) { progress("new layout: " + $0) } }
            let answer = await change(.beginScale(shards: target, plan: plan, seed: UInt64(truncatingIfNeeded: MonotonicInstant.now().nanoseconds)), progress: progress)
            group.cancelAll()
            return answer
        }
    }

    /// `botcluster restart --rolling`: replaces every worker's process, `maxUnavailable` at a time; each
    /// replacement resumes its predecessor's session (no identify, no event missed). A replacement that does not
    /// become ready pauses the roll.
    func rollingRestart(maxUnavailable: Int, progress: @escaping @Sendable (String) -> Void) async -> (Bool, String) {
        await change(.beginRoll(maxUnavailable: maxUnavailable), progress: progress, identifiesBefore: ledger.snapshot.granted)
    }

    /// Begins a layout change (`SupervisorCore` carries it through, event by event) and waits for its answer.
    /// One change at a time; every phase of one has a deadline, so the answer comes.
    func change(_ begin: SupervisorCore.Event, progress: @escaping @Sendable (String) -> Void, identifiesBefore: Int? = nil) async -> (Bool, String) {
        let kind: String
        if case .beginScale(let shards, _, _) = begin {
            kind = "scale"
            events.post("rescale", "rescale to \(shards) shards begins")
        } else {
            kind = "rolling_restart"
            events.post("rolling", "rolling restart begins")
        }
        let (ok, text, outcome) = await carryOut(begin, progress: progress, identifiesBefore: identifiesBefore)
        metrics.layoutChanged(kind: kind, outcome: outcome)
        events.post(kind == "scale" ? "rescale" : "rolling", (ok ? "" : "\(outcome): ") + text)
        return (ok, text)
    }

    /// `change`'s work: the answer, and the outcome for the metrics (done, failed, refused).
    func carryOut(_ begin: SupervisorCore.Event, progress: @escaping @Sendable (String) -> Void, identifiesBefore: Int?) async -> (Bool, String, String) {
        let answer = AsyncSignal<(Bool, String)>()
        let begun = state.withLock { state -> Result<[SupervisorCore.Action], RefusedChange> in
            guard state.core.change == nil, state.changeRequester == nil else { return .failure(RefusedChange("a rescale or rolling restart is already running")) }
            guard !state.core.layouts.active.machine.stopping else { return .failure(RefusedChange("the supervisor is stopping")) }
            state.changeRequester = ChangeRequester(progress: progress, answer: answer, identifiesBefore: identifiesBefore)
            return .success(state.core.handle(begin, now: .now()))
        }
        let actions: [SupervisorCore.Action]
        switch begun {
        case .success(let begunActions): actions = begunActions
        case .failure(let refusal): return (false, refusal.reason, "refused")
        }
        timer.poke()
        perform(actions)
        do {
            let (ok, text) = try await answer.wait()
            return (ok, text, ok ? "done" : "failed")
        } catch {
            return (false, "the supervisor stopped before the change was over", "failed")
        }
    }

    /// A rescale of a cluster of several hosts: written to the store, which every host's lease round reads; each
    /// host starts the new layout's shards it takes on leases of that layout (dispatch held), and reports them
    /// ready; the round that finds every new lease held and ready makes the new layout the serving one, and each
    /// host switches as its next round sees it (its old workers finish what they received, then drain and release
    /// their leases). The claims keep each event to one handler meanwhile, across layouts and hosts. This host
    /// answers the operator; the change ends here like a local one (`SupervisorCore`), or when the store gives it
    /// up (its deadline, or a host whose new shards failed).
    func scaleAcrossHosts(_ leases: LeaseService, from current: Int, to target: Int, progress: @escaping @Sendable (String) -> Void) async -> (Bool, String) {
        let answer = AsyncSignal<(Bool, String)>()
        let registered = state.withLock { state -> String? in
            guard state.core.change == nil, state.changeRequester == nil else { return "a rescale or rolling restart is already running on this host" }
            guard !state.core.layouts.active.machine.stopping else { return "the supervisor is stopping" }
            state.changeRequester = ChangeRequester(progress: progress, answer: answer, identifiesBefore: nil)
            return nil
        }
        if let registered { return (false, registered) }
        let unregister = { [self] in state.withLock { $0.changeRequester = nil } }
        events.post("rescale", "rescale to \(target) shards across hosts begins")
        let refusal: String?
        do {
            refusal = try await leases.authority.beginRescale(from: current, to: target, within: setup.config.scale.readyTimeout)
        } catch {
            unregister()
            return (false, "cannot begin the rescale in the store: \(String(describing: error).prefix(300))")
        }
        if let refusal {
            unregister()
            metrics.layoutChanged(kind: "scale", outcome: "refused")
            return (false, "cannot rescale the cluster: \(refusal)")
        }
        leases.roundWakeup.poke()
        // Every phase has its deadline in the store and here; this one covers them all, should no round ever answer.
        let timings = SupervisorCore.ChangeTimings(setup.config)
        let limit = timings.readyTimeout + timings.storeGrace * 2 + timings.fenceTimeout + timings.stopTimeout
        let (ok, text): (Bool, String)
        do {
            (ok, text) = try await withTimeout(limit, "the rescale across hosts") { try await answer.wait() }
        } catch {
            unregister()
            (ok, text) = (false, "no answer from the layout change within \(DurationFormat.human(limit)): is the store reachable? (botcluster status)")
        }
        metrics.layoutChanged(kind: "scale", outcome: ok ? "done" : "failed")
        events.post("rescale", (ok ? "" : "failed: ") + text)
        return (ok, text)
    }

    /// A shard was closed with 4011 (too many guilds): reshard to the platform's recommendation, unless turned off.
    /// Several hosts: each host that sees the 4011 asks; the store begins one rescale and refuses the others.
    func reshardAfter4011() {
        guard setup.config.scale.reshardOn4011 else {
            logger.error("a shard needs more shards (4011) and scale.reshardOn4011 is off: run botcluster scale")
            return
        }
        controlContinuation.yield {
            self.logger.warning("4011: resharding to the platform's recommendation")
            let (ok, text) = await self.scale(to: .recommended, planOnly: false) { self.logger.info("reshard: \($0)") }
            if ok { self.logger.info("reshard done: \(text)") } else { self.logger.error("reshard: \(text)") }
        }
    }
}

/// Why a layout change cannot begin now.
struct RefusedChange: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}
