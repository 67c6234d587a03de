import ClusterCore
import ClusterIPC
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
        let plan = "scale \(current) -> \(target) shards: a new layout of shards [0..\(target - 1)]/\(target) identifies while the current one serves, "
            + "then takes over; \(target) identifies at max_concurrency \(identify.maxConcurrency) take at least \(DurationFormat.human(window * (rounds - 1))); "
            + "session starts left today afterwards: \(identify.remaining - target)"
        if planOnly { return (true, plan) }
        guard target != current else { return (false, "the cluster already runs \(current) shards") }
        guard identify.remaining >= target else {
            return (false, "cannot scale to \(target) shards: the platform allows \(identify.remaining) more session starts today")
        }
        guard beginLayoutChange() else { return (false, "a rescale or rolling restart is already running") }
        defer { endLayoutChange() }
        progress(plan)
        let started = MonotonicInstant.now()
        let incoming = layouts.withLock { layouts in
            layouts.beginIncoming(ClusterStateMachine(
                shards: target, timings: .init(setup.config.supervisor), restart: setup.config.restart,
                seed: UInt64(truncatingIfNeeded: started.nanoseconds), generationBase: layouts.nextGenerationBase
            ))
        }
        dispatch(.start, in: incoming)
        let deadline = started + setup.config.scale.readyTimeout
        var reported = -1
        while !readyLayouts.withLock({ $0.contains(incoming) }) {
            let (readyCount, failure) = layouts.withLock { layouts in
                (layouts.layout(incoming)?.machine.workers.filter { $0.state == .ready }.count ?? 0, layouts.layout(incoming)?.machine.firstFailure)
            }
            if readyCount != reported {
                progress("new shards ready \(readyCount)/\(target)")
                reported = readyCount
            }
            if let failure {
                return await abandon(incoming, current: current, reason: "worker \(failure.ordinal) of the new layout failed: \(failure.reason)")
            }
            if MonotonicInstant.now() >= deadline {
                return await abandon(incoming, current: current, reason: "the new layout was not ready within scale.readyTimeout (\(readyCount)/\(target) ready)")
            }
            await layoutEvents.wait(until: deadline)
        }
        progress("new shards ready \(target)/\(target)")
        guard let retiring = layouts.withLock({ $0.switchOver() }) else { return (false, "no layout to switch from") }
        for connection in workerConnections(of: incoming).values { connection.send(.startDispatch) }
        progress("switched: \(target) shards serve; the old \(current) drain")
        await finishDispatch(of: retiring)
        for connection in workerConnections(of: retiring).values { claims.retire(connection) }
        await stopLayout(retiring)
        store.forgetLayout(total: current)
        return (true, "scaled \(current) -> \(target) shards in \(DurationFormat.human(.now() - started))")
    }

    /// The switch's fence: every worker of the retiring layout handles what the gateway sent it until now (events
    /// the new layout never saw, from before its READY) and says so; the claims keep anything both layouts
    /// received to one handler. A worker that does not answer within the drain timeout plus the stop grace
    /// (its session may be reconnecting) is logged and drained anyway; one that exits needs no answer.
    func finishDispatch(of retiring: Int) async {
        let waiting = workerConnections(of: retiring)
        for connection in waiting.values { connection.send(.finishDispatch) }
        let deadline = MonotonicInstant.now() + setup.config.worker.drainTimeout + setup.config.supervisor.stopGrace
        while true {
            let live = Set(workerConnections(of: retiring).values.map(\.id))
            let pending = finishedDispatch.withLock { finished in
                waiting.filter { live.contains($0.value.id) && !finished.contains($0.value.id) }.keys.sorted()
            }
            if pending.isEmpty { break }
            if MonotonicInstant.now() >= deadline {
                logger.warning("retiring workers did not confirm they handled everything they received; draining them anyway", metadata: ["worker.ordinals": "\(pending)"])
                break
            }
            await layoutEvents.wait(until: deadline)
        }
        finishedDispatch.withLock { finished in
            for connection in waiting.values { finished.remove(connection.id) }
        }
    }

    func abandon(_ incoming: Int, current: Int, reason: String) async -> (Bool, String) {
        _ = layouts.withLock { $0.abandonIncoming() }
        await stopLayout(incoming)
        return (false, "rescale abandoned: \(reason); the \(current)-shard layout keeps serving")
    }

    /// Drains a layout's workers and waits until they have exited.
    func stopLayout(_ id: Int) async {
        dispatch(.stop, in: id)
        let deadline = MonotonicInstant.now() + setup.config.supervisor.stopGrace + .seconds(5)
        while !stoppedLayouts.withLock({ $0.contains(id) }) && MonotonicInstant.now() < deadline {
            await layoutEvents.wait(until: deadline)
        }
        layouts.withLock { $0.remove(id) }
    }

    /// `botcluster restart --rolling`: replaces every worker's process, `maxUnavailable` at a time; each
    /// replacement resumes its predecessor's session (no identify, no event missed). A replacement that does not
    /// become ready pauses the roll.
    func rollingRestart(maxUnavailable: Int, progress: @escaping @Sendable (String) -> Void) async -> (Bool, String) {
        guard beginLayoutChange() else { return (false, "a rescale or rolling restart is already running") }
        defer { endLayoutChange() }
        let count = shardCount
        let batch = max(1, min(maxUnavailable, count))
        let started = MonotonicInstant.now()
        let identifiesBefore = ledger.snapshot.granted
        var replaced = 0
        for first in stride(from: 0, to: count, by: batch) {
            let ordinals = Array(first..<min(first + batch, count))
            let before = layouts.withLock { layouts in ordinals.map { layouts.active.machine.worker(ordinal: $0)?.generation ?? 0 } }
            for ordinal in ordinals { dispatch(.restart(ordinal: ordinal)) }
            let deadline = MonotonicInstant.now() + setup.config.supervisor.stopGrace + setup.config.supervisor.readyTimeout
            while true {
                let states = layouts.withLock { layouts in ordinals.map { layouts.active.machine.worker(ordinal: $0) } }
                let done = zip(states, before).allSatisfy { worker, old in worker.map { $0.generation != old && $0.state == .ready } ?? false }
                if done { break }
                if let stuck = zip(states, before).first(where: { worker, old in
                    worker.map { $0.generation != old && ($0.state == .failed || $0.state == .backoff) } ?? false
                }), let worker = stuck.0 {
                    return (false, "worker \(worker.ordinal) did not come back (\(worker.state.rawValue): \(worker.failure ?? worker.lastExit?.description ?? "crashed")); roll paused after \(replaced) of \(count)")
                }
                if MonotonicInstant.now() >= deadline {
                    return (false, "workers \(ordinals) were not ready in time; roll paused after \(replaced) of \(count)")
                }
                await layoutEvents.wait(until: deadline)
            }
            replaced += ordinals.count
            progress("replaced \(replaced)/\(count)")
        }
        let identifies = ledger.snapshot.granted - identifiesBefore
        return (true, "rolled \(count) workers in \(DurationFormat.human(.now() - started)); identifies spent: \(identifies)")
    }

    /// A shard was closed with 4011 (too many guilds): reshard to the platform's recommendation, unless turned off.
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

    func beginLayoutChange() -> Bool {
        changing.withLock { changing in
            if changing { return false }
            changing = true
            return true
        }
    }

    func endLayoutChange() {
        changing.withLock { $0 = false }
    }
}
