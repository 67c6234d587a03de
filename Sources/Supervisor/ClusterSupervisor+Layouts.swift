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
    /// Several hosts: the store carries the change (see `carryOut`).
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
        let start = leases.map { ChangeStart.acrossHosts($0, from: current, to: target, plan: plan) }
            ?? .local(.beginScale(shards: target, plan: plan, seed: UInt64(truncatingIfNeeded: MonotonicInstant.now().nanoseconds)))
        // Beside the core's lines as shards get ready: the ledger's estimate, every ten seconds while it comes up.
        return await withDiscardingTaskGroup { group in
            group.addTask { await self.followStartup(every: .seconds(10), incomingOnly: true) { progress("new layout: " + $0) } }
            let answer = await change(start, progress: progress)
            group.cancelAll()
            return answer
        }
    }

    /// `botcluster restart --rolling`: replaces every worker's process, `maxUnavailable` at a time; each
    /// replacement resumes its predecessor's session (no identify, no event missed). A replacement that does not
    /// become ready pauses the roll.
    func rollingRestart(maxUnavailable: Int, progress: @escaping @Sendable (String) -> Void) async -> (Bool, String) {
        await change(.local(.beginRoll(maxUnavailable: maxUnavailable)), progress: progress, identifiesBefore: ledger.snapshot.granted)
    }

    /// How a layout change begins: in this host's core, or (several hosts, a rescale) in the store, which the core of
    /// every host follows (see `carryOut`).
    enum ChangeStart: Sendable {
        case local(SupervisorCore.Event)
        case acrossHosts(LeaseService, from: Int, to: Int, plan: String)
    }

    /// Begins a layout change (`SupervisorCore` carries it through, event by event) and waits for its answer.
    /// One change at a time; every phase of one has a deadline, so the answer comes.
    func change(_ start: ChangeStart, progress: @escaping @Sendable (String) -> Void, identifiesBefore: Int? = nil) async -> (Bool, String) {
        let kind: String
        switch start {
        case .local(.beginScale(let shards, _, _)), .acrossHosts(_, _, let shards, _):
            kind = "scale"
            events.post("rescale", "rescale to \(shards) shards begins")
        default:
            kind = "rolling_restart"
            events.post("rolling", "rolling restart begins")
        }
        let (ok, text, outcome) = await carryOut(start, progress: progress, identifiesBefore: identifiesBefore)
        metrics.layoutChanged(kind: kind, outcome: outcome)
        events.post(kind == "scale" ? "rescale" : "rolling", (ok ? "" : "\(outcome): ") + text)
        return (ok, text)
    }

    /// `change`'s work: the answer, and the outcome for the metrics (done, failed, refused).
    ///
    /// Across hosts the store carries a rescale: `PostgresAuthority.beginRescale` writes the target, which every
    /// host's lease round reads; each host starts the new layout's shards it takes, on leases of that layout
    /// (dispatch held), and reports them ready; the round that finds every new lease held and ready makes the new
    /// layout the serving one, and each host switches as its next round sees it (its old workers finish what they
    /// received, then drain and release their leases). The claims keep each event to one handler meanwhile. This
    /// host's core carries its part like a local change and answers here; should no round ever answer, a deadline
    /// over every phase does.
    func carryOut(_ start: ChangeStart, progress: @escaping @Sendable (String) -> Void, identifiesBefore: Int?) async -> (Bool, String, String) {
        let answer = AsyncSignal<(Bool, String)>()
        let begun = state.withLock { state -> Result<[SupervisorCore.Action], RefusedChange> in
            guard state.core.change == nil, state.changeRequester == nil else { return .failure(RefusedChange("a rescale or rolling restart is already running")) }
            guard !state.core.layouts.active.machine.stopping else { return .failure(RefusedChange("the supervisor is stopping")) }
            state.changeRequester = ChangeRequester(progress: progress, answer: answer, identifiesBefore: identifiesBefore)
            guard case .local(let begin) = start else { return .success([]) }
            return .success(state.core.handle(begin, now: .now()))
        }
        let actions: [SupervisorCore.Action]
        switch begun {
        case .success(let begunActions): actions = begunActions
        case .failure(let refusal): return (false, refusal.reason, "refused")
        }
        timer.poke()
        perform(actions)
        var limit: Duration?
        if case .acrossHosts(let leases, let from, let to, let plan) = start {
            let refusal: String?
            do {
                refusal = try await leases.authority.beginRescale(from: from, to: to, within: setup.config.scale.readyTimeout)
            } catch {
                refusal = "the store did not take it: \(String(describing: error).prefix(300))"
            }
            if let refusal {
                state.withLock { $0.changeRequester = nil }
                return (false, "cannot rescale the cluster: \(refusal)", "refused")
            }
            progress(plan)
            leases.roundWakeup.poke()
            let timings = SupervisorCore.ChangeTimings(setup.config)
            limit = timings.readyTimeout + timings.storeGrace * 2 + timings.fenceTimeout + timings.stopTimeout
        }
        do {
            let (ok, text) = if let limit { try await withTimeout(limit, "the rescale across hosts") { try await answer.wait() } } else { try await answer.wait() }
            return (ok, text, ok ? "done" : "failed")
        } catch let timeout as TimeoutError {
            state.withLock { $0.changeRequester = nil }
            return (false, "no answer from the layout change within \(DurationFormat.human(timeout.limit)): is the store reachable? (botcluster status)", "failed")
        } catch {
            return (false, "the supervisor stopped before the change was over", "failed")
        }
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
