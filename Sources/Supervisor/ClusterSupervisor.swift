import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Foundation
import Logging
import NIOCore
import NIOPosix
import QQGateway
import RateBudget
import ServiceLifecycle
import Synchronization
import UserCache

/// What the supervisor needs to know before it starts its workers.
public struct SupervisorSetup: Sendable {
    public var config: ClusterConfig
    /// The configuration file workers load (absolute).
    public var configPath: String
    /// Where the platform is (for workers).
    public var apiBase: String
    public var tokenURL: String
    public var gateway: GatewayBotInfo
    public var shards: Int
    /// This host's id in a cluster of several hosts (`store.postgres`); nil on one host.
    public var hostID: Int?
    /// What the other hosts' status shows of this one (its name and status address).
    public var hostAddress: String

    /// A setup from its parts; `configPath` must be absolute, as workers load the file from it.
    public init(config: ClusterConfig, configPath: String, apiBase: String, tokenURL: String, gateway: GatewayBotInfo, shards: Int, hostID: Int? = nil, hostAddress: String = "") {
        self.hostID = hostID
        self.hostAddress = hostAddress
        self.config = config
        self.configPath = configPath
        self.apiBase = apiBase
        self.tokenURL = tokenURL
        self.gateway = gateway
        self.shards = shards
    }
}

/// `botcluster launch`: spawns one worker per shard, answers their IPC (identify slots, sessions, health),
/// restarts them by the policy, serves control commands, and on shutdown drains them all.
public final class ClusterSupervisor: Service, IPCServerDelegate, Sendable {
    /// Everything the supervisor knows that changes, in one place behind one lock: the decisions (`SupervisorCore`:
    /// layouts, workers, the layout change) and what the I/O around them needs to find (connections, requests in
    /// flight). No invariant spans two locks.
    struct State {
        var core: SupervisorCore
        /// Worker connections by layout and ordinal.
        var connections: [Int: [Int: IPCConnection]] = [:]
        /// Event rates by worker generation.
        var rates: [UInt64: (handled: Int64, at: MonotonicInstant, perSecond: Double)] = [:]
        /// Pings and user queries sent to workers, by correlation id.
        var pings: [UInt64: (ordinal: Int, connection: UInt64, sentAt: MonotonicInstant, signal: AsyncSignal<Duration>)] = [:]
        var userQueries: [UInt64: Pending<String?>] = [:]
        var metricsQueries: [UInt64: Pending<WorkerMetrics>] = [:]
        var nextRequestID: UInt64 = 0
        var spawner: ProcessSpawner?
        /// Who asked for the layout change in progress.
        var changeRequester: ChangeRequester?
        /// The deadline the timer task sleeps until (an event that makes an earlier one pokes it).
        var timerDeadline: MonotonicInstant?
        /// Liveness slots by the generation of the process holding it (from before its spawn until it is reaped),
        /// and the free ones: a slot is never shared by two processes, whatever the layouts do.
        var slots: [UInt64: Int] = [:]
        var freeSlots = Array((0..<LivenessTable.slotCount).reversed())

        /// A free slot for the process `generation`, or nil when every slot is held.
        mutating func takeSlot(for generation: UInt64) -> Int? {
            guard let slot = freeSlots.popLast() else { return nil }
            slots[generation] = slot
            return slot
        }

        /// The process `generation` is gone (reaped, or never started): its slot is free again.
        mutating func releaseSlot(of generation: UInt64) {
            if let slot = slots.removeValue(forKey: generation) { freeSlots.append(slot) }
        }
    }

    /// A question sent to one worker: only that worker's connection may answer it (ids are sequential: another
    /// worker could guess them).
    struct Pending<T: Sendable> {
        let connection: UInt64
        let signal: AsyncSignal<T>
    }

    /// The operator (or the 4011 reshard) waiting on a layout change: its progress lines and its answer.
    struct ChangeRequester {
        let progress: @Sendable (String) -> Void
        let answer: AsyncSignal<(Bool, String)>
        /// A rolling restart reports the identifies it spent: the ledger's count when it began.
        let identifiesBefore: Int?
    }

    let setup: SupervisorSetup
    let logger: Logger
    let state: Mutex<State>
    let ledger: IdentifyLedgerService
    let claims: ClaimService
    let budget: BudgetService
    let store: ClusterStore
    let timer = Wakeup()
    let stopped = AsyncSignal<Void>()
    let spawnRequests: AsyncStream<(ordinal: Int, generation: UInt64, shard: ShardID)>
    let spawnContinuation: AsyncStream<(ordinal: Int, generation: UInt64, shard: ShardID)>.Continuation
    let startedAt = MonotonicInstant.now()
    /// Control work that awaits (status pings workers): run beside the supervisor, one task each.
    let controlRequests: AsyncStream<@Sendable () async -> Void>
    let controlContinuation: AsyncStream<@Sendable () async -> Void>.Continuation
    /// Printed once every worker is ready (tests and scripts wait for it).
    public let ready = AsyncSignal<Duration>()
    /// Set when the supervisor begins to drain every worker (a signal, `botcluster stop`, `stop()`).
    public let stopping = AsyncSignal<Void>()
    /// The supervisor's own calls to the platform (`/gateway/bot` when it plans a rescale): one connection and a
    /// small budget of its own, so that they never compete with the workers' replies.
    let platform: PlatformClients
    /// Where workers store their beats (see `LivenessTable`); read when a silence deadline is due.
    let liveness: LivenessTable
    /// What a Prometheus scrape sees (see `metricsText()`).
    public let metrics: ClusterMetrics
    /// The webhook ingress's event streams (`gateway.mode: "webhook"`); nil with websocket sessions.
    public let webhook: WebhookRouter?
    /// The events the router holds are to be written again (the database was made anew).
    let webhookRewrite = Atomic<Bool>(false)
    /// What happened lately, for the status page.
    public let events = ClusterEventFeed()
    /// One metrics collection at a time (see `metricsText`).
    let scrapes = SingleFlight<String>(freshFor: .seconds(1))
    /// This host's shard leases, when several hosts share the cluster through PostgreSQL; nil on one host.
    let leases: LeaseService?
    /// The users this host's workers wrote, told to the other hosts, and theirs applied here (several hosts only;
    /// nil too when this host's user cache cannot be opened).
    let userFeed: UserChangeFeed?

    /// A supervisor for `setup` resuming what `store` holds; throws if the platform clients cannot be set up.
    public init(setup: SupervisorSetup, store: ClusterStore, logger: Logger) throws {
        self.setup = setup
        self.logger = logger
        self.store = store
        if let postgres = setup.config.store.postgres {
            guard let host = setup.hostID else { throw ClusterStoreError(description: "store is PostgreSQL: this host needs an id (--host-id N, or BOTCLUSTER_HOST_ID)") }
            let authority = try PostgresAuthority(config: postgres, cluster: setup.config.app.id, logger: logger)
            leases = LeaseService(authority: authority, config: postgres, host: host, address: setup.hostAddress, shards: setup.shards, logger: logger)
            do {
                let users = try UserStore.open(path: setup.config.supervisor.runDirectory + "/users.sqlite")
                userFeed = UserChangeFeed(authority: authority, host: host, store: users, logger: logger)
            } catch {
                logger.error("user cache unavailable: users changed on other hosts are not applied here", metadata: ["error": "\(error)"])
                userFeed = nil
            }
        } else {
            leases = nil
            userFeed = nil
        }
        // Several hosts: the sessions are the leases' (read when one is gained), never this host's file.
        let sessions = leases == nil ? store.sessions(total: setup.shards) : [:]
        liveness = try LivenessTable.create()
        let metrics = ClusterMetrics(restRate: setup.config.rateBudget.globalRate, mode: setup.config.gateway.mode)
        self.metrics = metrics
        state = Mutex(State(core: SupervisorCore(
            active: ClusterStateMachine(
                shards: setup.shards, timings: .init(setup.config.supervisor), restart: setup.config.restart,
                seed: UInt64(truncatingIfNeeded: MonotonicInstant.now().nanoseconds), sessions: sessions,
                startLimit: Self.startLimit(setup), leased: leases != nil
            ),
            changeTimings: .init(setup.config)
        )))
        state.withLock { $0.core.fencesBeforeSwitch = setup.config.gateway.mode != .webhook }
        if setup.config.gateway.mode == .webhook {
            let router = WebhookRouter(
                layout: state.withLock { $0.core.layouts.active.id }, total: setup.shards,
                limit: setup.config.webhook.queueLimit, streamLimit: setup.config.webhook.streamLimit,
                record: { events in try await store.recordWebhook(events.map { ($0.id, $0.name, $0.payload) }) },
                onHandled: { store.webhookHandled($0) }
            )
            let acknowledged = try store.webhookInbox()
            if !acknowledged.isEmpty {
                logger.info("webhook events acknowledged before the last stop and not handled: their workers get them", metadata: ["events": "\(acknowledged.count)"])
                router.restore(acknowledged.map { WebhookJournal.Event(id: $0.id, name: $0.name, payload: $0.payload) })
            }
            webhook = router
        } else {
            webhook = nil
        }
        var claimLedger = ClaimLedger(ttl: setup.config.exactlyOnce.ttl)
        claimLedger.remember(store.handledEvents(within: setup.config.exactlyOnce.ttl))
        claims = ClaimService(ledger: claimLedger, store: leases.map { leases in
            ClaimService.StoreClaims(
                authority: leases.authority, host: leases.host, ttl: setup.config.exactlyOnce.ttl, logger: logger,
                heldElsewhere: { metrics.claimsHeldElsewhere($0) }
            )
        })
        platform = try PlatformClients(
            config: setup.config, endpoints: GatewayEndpoints(apiBase: setup.apiBase, tokenURL: setup.tokenURL),
            budget: LocalRateBudget(rate: 1, burst: 2), logger: logger, maxConnections: 1
        )
        ledger = IdentifyLedgerService(ledger: IdentifyLedger(
            configuration: .init(
                maxConcurrency: setup.gateway.maxConcurrency, window: setup.config.effectiveIdentifyWindow,
                margin: setup.config.identify.margin, slotTimeout: setup.config.identify.slotTimeout
            ),
            remaining: setup.gateway.remaining
        ), authority: leases.map { IdentifyLedgerService.ClusterSlots(authority: $0.authority, holderPrefix: "\($0.host)/\(UInt32.random(in: 0...UInt32.max))") },
        platformStarts: { [api = platform.api] in
            let info = try await api.gatewayBot()
            return (info.remaining, info.resetAfter)
        }, logger: logger)
        budget = BudgetService(configuration: .init(
            rate: setup.config.rateBudget.globalRate, burst: setup.config.rateBudget.globalBurst,
            leaseSize: setup.config.rateBudget.leaseSize, leaseTTL: setup.config.rateBudget.leaseTTL
        ))
        // Several hosts: nothing to spend until a lease is held (see `runLeases`).
        if leases != nil { budget.setShare(0) }
        (spawnRequests, spawnContinuation) = AsyncStream.makeStream()
        (controlRequests, controlContinuation) = AsyncStream.makeStream()
        if !sessions.isEmpty {
            logger.info("stored sessions found: workers will resume them", metadata: ["sessions": "\(sessions.count)"])
        }
    }

    /// How many workers start at once: `supervisor.maxStarting`, and at least twice `max_concurrency` so that
    /// every identify window finds workers waiting for it.
    static func startLimit(_ setup: SupervisorSetup) -> Int {
        max(setup.config.supervisor.maxStarting, 2 * setup.gateway.maxConcurrency)
    }

    /// Runs the cluster until it stops, draining every worker on shutdown; throws if the IPC socket cannot be bound.
    public func run() async throws {
        var serverConfiguration = IPCServer.Configuration(path: setup.config.supervisor.socket)
        serverConfiguration.helloTimeout = setup.config.supervisor.helloTimeout
        serverConfiguration.controlIdleTimeout = setup.config.supervisor.controlIdleTimeout
        // Enough connections waiting for their hello for every worker to restart at once, and no more.
        serverConfiguration.maxHandshaking = max(256, 2 * ShardsConfig.maxCount)
        let server = IPCServer(configuration: serverConfiguration, delegate: self, logger: logger)
        try await server.start()
        let spawner = ProcessSpawner(
            executable: ProcessSpawner.currentExecutable(), inherited: [(liveness.descriptor, LivenessTable.inheritedDescriptor)], logger: logger
        ) { pid, generation, status in
            self.handle(.cluster(.exited(pid: pid, status: status))) { state, _ in state.releaseSlot(of: generation) }
        }
        state.withLock { $0.spawner = spawner }
        // The store's connections outlive the workers: the leases are released after the last one stopped. Detached,
        // so that the graceful shutdown (which the pool obeys) does not close it before then.
        let storePool = Task.detached { [leases] in await leases?.authority.run() }
        logger.info("supervisor started", metadata: ["shards": "\(setup.shards)", "socket": "\(setup.config.supervisor.socket)", "max_concurrency": "\(setup.gateway.maxConcurrency)"])
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.ledger.run() }
                group.addTask { await self.budget.run() }
                group.addTask { await self.runTimer() }
                group.addTask { await self.runStoreFlusher() }
                if leases != nil {
                    group.addTask { await self.runLeases() }
                    group.addTask { await self.claims.runStore(lease: self.lease(generation:ordinal:)) }
                }
                group.addTask { await self.showLaunchProgress() }
                group.addTask {
                    await withDiscardingTaskGroup { outputs in
                        for await request in self.spawnRequests {
                            await self.spawn(request, spawner: spawner, group: &outputs)
                        }
                    }
                }
                group.addTask {
                    await withDiscardingTaskGroup { requests in
                        for await work in self.controlRequests { requests.addTask { await work() } }
                    }
                }
                dispatch(.start)
                _ = try? await stopped.wait()
                spawnContinuation.finish()
                controlContinuation.finish()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.logger.info("stopping: draining every worker")
            self.dispatch(.stop)
        }
        // The last flush runs in a task of its own: cancelled by a shutdown that ran out of time, this task's writes
        // would end at once, and what was pending would be lost.
        await Task {
            await self.persist()
            await self.claims.flushStore()
            await self.leases?.releaseAll(session: self.storedSession)
        }.value
        storePool.cancel()
        await storePool.value
        await server.close()
        await platform.shutdown()
        logger.info("supervisor stopped")
    }

    /// Whether the supervisor's own machinery answers: every IPC event loop runs a job that takes the state lock,
    /// within `deadline` (what the service manager's watchdog is fed on). A stuck loop or a lock never released
    /// answers false when the deadline passes; nothing here waits for them.
    public func isResponsive(within deadline: Duration) async -> Bool {
        let loops = Array(MultiThreadedEventLoopGroup.singleton.makeIterator())
        let answers = loops.map { loop -> AsyncSignal<Void> in
            let answered = AsyncSignal<Void>()
            loop.execute {
                _ = self.state.withLock { $0.nextRequestID }
                answered.set(())
            }
            return answered
        }
        do {
            _ = try await withTimeout(deadline, "the supervisor's event loops") { () async throws -> Bool in
                for answer in answers { try await answer.wait() }
                return true
            }
            return true
        } catch {
            return false
        }
    }

    /// Asks the supervisor to drain every worker and end (as SIGTERM does).
    public func stop() {
        dispatch(.stop)
    }

    // MARK: the state machine

    /// A worker, process or timer event.
    func dispatch(_ event: ClusterStateMachine.Event) {
        if case .stop = event {
            stopping.set(())
            leases?.stop()
        }
        handle(.cluster(event))
    }

    /// Feeds the core one event and carries out what it decides; `also` runs in the same critical section.
    func handle(_ event: SupervisorCore.Event, also: (inout State, MonotonicInstant) -> Void = { _, _ in }) {
        let (actions, armed, next) = state.withLock { state -> ([SupervisorCore.Action], MonotonicInstant?, MonotonicInstant?) in
            let now = MonotonicInstant.now()
            also(&state, now)
            let actions = state.core.handle(event, now: now)
            return (actions, state.timerDeadline, state.core.nextDeadline)
        }
        // Every heartbeat moves a silence deadline later; only one earlier than the timer's wakes it.
        timer.poke(ifEarlier: next, than: armed)
        perform(actions)
    }

    func perform(_ actions: [SupervisorCore.Action]) {
        for action in actions {
            switch action {
            case .worker(let layout, let action):
                perform(action, in: layout)
            case .startDispatch(let layout):
                // Webhook mode: new events go to the new layout from here on; what the old one's streams hold, its
                // workers handle before they answer the fence (sent after this).
                if let webhook, let total = state.withLock({ $0.core.layouts.layout(layout)?.machine.workers.count }) {
                    webhook.serve(layout: layout, total: total)
                }
                for connection in workerConnections(of: layout).values { connection.send(.startDispatch) }
            case .finishDispatch(let layout):
                let connections = workerConnections(of: layout).values
                for connection in connections {
                    // Webhook mode: queued behind the stream's events already queued for the worker, so that its fence
                    // (the last seq it got) covers them.
                    if webhook != nil { WebhookRouter.send(.finishDispatch(fence: 0), to: connection) } else { connection.send(.finishDispatch(fence: 0)) }
                }
                // A retiring worker whose connection closed before the switch cannot answer: the fence does not
                // wait for it (its `.disconnected` came while no fence was running).
                let connected = Set(connections.compactMap { $0.hello?.generation })
                let unreachable = state.withLock { state -> Set<UInt64> in
                    guard case .fencing(_, let waiting)? = state.core.change?.phase else { return [] }
                    return waiting.subtracting(connected)
                }
                for generation in unreachable { handle(.disconnected(generation: generation)) }
            case .finishDispatchOf(let layout, let generation, let fence):
                // Before the switch (websocket sessions only): the answer, naming `fence`, lets the switch come.
                workerConnections(of: layout).values.first { $0.hello?.generation == generation }?.send(.finishDispatch(fence: fence))
            case .retireClaims(let layout):
                // Webhook mode, first: what the retiring workers' streams still hold goes to the serving layout. Only
                // then are their claims refused: an event they claim from here on is skipped and committed past,
                // which must trim nothing that is not also in a serving stream.
                webhook?.retire(layout: layout)
                for connection in workerConnections(of: layout).values { claims.retire(connection) }
            case .forgetStoredLayout(let total):
                store.forgetLayout(total: total)
            case .cancelStoredRescale(let to):
                guard let leases else { break }
                Task {
                    do {
                        try await leases.authority.cancelRescale(to: to)
                        leases.roundWakeup.poke()
                    } catch {
                        // The store gives it up at its deadline anyway.
                        self.logger.warning("cannot give the rescale up in the store: the other hosts give it up at its deadline", metadata: ["error": "\(String(describing: error).prefix(300))"])
                    }
                }
            case .changeProgress(let line):
                // A change nobody here asked for (another host's rescale) is told to the log instead.
                if let requester = state.withLock({ $0.changeRequester }) { requester.progress(line) } else { logger.info("layout change: \(line)") }
            case .changeFinished(let ok, var text):
                guard let requester = state.withLock({ state in defer { state.changeRequester = nil }; return state.changeRequester }) else {
                    if ok { logger.info("layout change: \(text)") } else { logger.warning("layout change: \(text)") }
                    events.post("rescale", (ok ? "" : "failed: ") + text)
                    break
                }
                if ok, let before = requester.identifiesBefore { text += "; identifies spent: \(ledger.snapshot.granted - before)" }
                requester.answer.set((ok, text))
            }
        }
    }

    func perform(_ action: ClusterStateMachine.Action, in layout: Int) {
        switch action {
        case .spawn(let ordinal, let generation, let shard):
            spawnContinuation.yield((ordinal, generation, shard))
        case .signal(let pid, let signal):
            kill(pid, signal == .abort ? SIGABRT : SIGTERM)
        case .killGroup(let pid):
            kill(-pid, SIGKILL)
        case .persistSession(let shard, let id, let seq):
            store.save(shard: shard, id: id, seq: seq)
            leases?.sessionMoved(shard: shard, id: id, seq: seq)
            // Webhook mode: the session is the shard's stream, and what it committed leaves the stream (worker K
            // runs shard K, so the shard names the stream in its layout).
            webhook?.commit(layout: layout, ordinal: shard.id, streamID: id, seq: Int64(seq))
        case .forgetSession(let shard):
            store.forget(shard: shard)
            leases?.sessionMoved(shard: shard, id: "", seq: 0)
        case .log(let level, let message):
            switch level {
            case .info: logger.info("\(message)")
            case .warning: logger.warning("\(message)")
            case .error:
                logger.error("\(message)")
                events.post("failed", message)
            }
        case .clusterReady:
            if layout == 0 {
                let elapsed = MonotonicInstant.now() - startedAt
                // On an IPC event loop: queued, never a write that could block on a stdout nobody reads.
                let clear = isatty(STDOUT_FILENO) == 1 ? Self.clearLine : ""
                // Several hosts: this host is ready with the shards it holds (the others report their own).
                let (held, total) = state.withLock { state in
                    let workers = state.core.layouts.active.machine.workers
                    return (workers.filter { $0.state != .elsewhere }.map(\.ordinal), workers.count)
                }
                let line = leases.map { "host \($0.host) ready: \(held.count) of \(total) shards \(held) in \(DurationFormat.human(elapsed))" }
                    ?? "cluster ready: \(setup.shards) shards in \(DurationFormat.human(elapsed))"
                OutputWriter.standardOutput.write(clear + line + "\n")
                ready.set(elapsed)
                events.post("ready", line)
            }
        case .allStopped:
            if layout == state.withLock({ $0.core.layouts.active.id }) { stopped.set(()) }
        case .restarted(let ordinal, let reason):
            metrics.restarted(reason)
            switch reason {
            case .crash: events.post("crash", "worker \(ordinal) crashed; replaced")
            case .hang: events.post("hang", "worker \(ordinal) stopped beating; killed and replaced")
            case .requested: events.post("restart", "worker \(ordinal) replaced on request")
            }
        }
    }

    /// Several hosts: this host's lease for the worker of `ordinal` whose process has `generation`: the shard count
    /// of the worker's layout and the lease's token, nil when none is held.
    @Sendable func lease(generation: UInt64, ordinal: Int) -> (shards: Int, token: Int64)? {
        guard let leases, let total = state.withLock({ $0.core.layouts.layout(ClusterLayouts.layoutID(ofGeneration: generation))?.machine.workers.count }),
            let token = leases.token(total: total, shard: ordinal)
        else { return nil }
        return (total, token)
    }

    /// The active layout's shard count.
    var shardCount: Int { state.withLock { $0.core.layouts.active.machine.workers.count } }

    func spawn(_ request: (ordinal: Int, generation: UInt64, shard: ShardID), spawner: ProcessSpawner, group: inout DiscardingTaskGroup) async {
        // A request the slot has moved past (fenced, or started again, while it waited): nothing to start.
        let current = state.withLock { state in
            state.core.layouts.layout(ClusterLayouts.layoutID(ofGeneration: request.generation))?.machine.worker(ordinal: request.ordinal)
                .map { $0.generation == request.generation && $0.state == .spawning } ?? false
        }
        guard current else { return }
        // A slot no living process holds: nothing else writes it now.
        guard let slot = state.withLock({ $0.takeSlot(for: request.generation) }) else {
            dispatch(.spawnFailed(ordinal: request.ordinal, generation: request.generation, reason: "all \(LivenessTable.slotCount) liveness slots are held"))
            return
        }
        liveness.clear(slot: slot)
        let environment = [
            WorkerEnvironment.livenessSlot: String(slot),
            WorkerEnvironment.socket: setup.config.supervisor.socket,
            WorkerEnvironment.ordinal: String(request.ordinal),
            WorkerEnvironment.generation: String(request.generation),
            WorkerEnvironment.supervisorPID: String(getpid()),
        ]
        do {
            let (pid, output) = try await spawner.spawn(arguments: ["worker", "--config", setup.configPath], environment: environment, tag: request.generation)
            dispatch(.spawned(ordinal: request.ordinal, generation: request.generation, pid: pid))
            let prefix = "[worker \(request.ordinal) \(request.shard) pid \(pid)] "
            group.addTask { await followOutput(of: output, prefix: prefix) }
        } catch {
            handle(.cluster(.spawnFailed(ordinal: request.ordinal, generation: request.generation, reason: "\(error)"))) { state, _ in
                state.releaseSlot(of: request.generation)
            }
        }
    }

    func runTimer() async {
        while !Task.isCancelled {
            let deadline = state.withLock { state in
                state.timerDeadline = state.core.nextDeadline
                return state.timerDeadline
            }
            await timer.wait(until: deadline)
            if Task.isCancelled { return }
            if let deadline, MonotonicInstant.now() >= deadline { handle(.cluster(.tick), also: readBeats) }
        }
    }

    /// Gives the core every worker's latest beat from the liveness table (before a tick judges silences): the time
    /// each last ran, exactly, however late this supervisor got to look.
    func readBeats(_ state: inout State, now: MonotonicInstant) {
        var beats: [(ordinal: Int, generation: UInt64, at: MonotonicInstant)] = []
        for layout in state.core.layouts.layouts {
            for worker in layout.machine.workers where worker.state.isLive {
                guard let heard = worker.lastHeard, let slot = state.slots[worker.generation],
                    let beat = liveness.lastBeat(slot: slot), beat > heard
                else { continue }
                beats.append((worker.ordinal, worker.generation, beat))
            }
        }
        for beat in beats { state.core.recordBeat(ordinal: beat.ordinal, generation: beat.generation, at: beat.at, now: now) }
    }

    func runStoreFlusher() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: setup.config.worker.reportInterval)
            await persist()
        }
    }

    /// Writes what changed to cluster.sqlite; after the file was damaged and made anew, everything held in memory.
    func persist() async {
        let ttl = setup.config.exactlyOnce.ttl
        store.saveHandled(claims.takeUnpersisted(), ttl: ttl)
        await store.flush()
        if store.takeRecovered() {
            logger.warning("writing every session and handled event again to the new cluster database")
            let sessions = state.withLock { state in
                state.core.layouts.layouts.flatMap { layout in layout.machine.workers.compactMap { worker in worker.session.map { (worker.shard, $0) } } }
            }
            for (shard, session) in sessions { store.save(shard: shard, id: session.id, seq: session.seq) }
            store.saveHandled(claims.allRemembered(), ttl: ttl)
            await store.flush()
            if webhook != nil { webhookRewrite.store(true, ordering: .relaxed) }
        }
        // The events held, into a database made anew: tried at every flush until it works (a crash meanwhile would
        // lose what has no row).
        if let webhook, webhookRewrite.load(ordering: .relaxed) {
            do {
                try await store.recordWebhook(webhook.held.map { ($0.id, $0.name, $0.payload) })
                webhookRewrite.store(false, ordering: .relaxed)
            } catch {
                logger.error("cannot write the webhook events held to the new cluster database yet; trying again at the next flush", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: IPC

    /// Welcomes a control client, or a worker that is the current process this supervisor started; else says why not.
    public func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
        switch hello.role {
        case .control:
            connection.send(.helloAck(supervisorPID: getpid()))
            return nil
        case .worker:
            let ordinal = Int(hello.ordinal)
            let layoutID = ClusterLayouts.layoutID(ofGeneration: hello.generation)
            // Only the process this supervisor started for the slot, by the kernel's word: any process of the same
            // user can read an ordinal and a generation from `status --json` and claim them.
            guard let spawnedAs = state.withLock({ $0.spawner })?.tag(of: connection.peerPID), spawnedAs == hello.generation else {
                return "pid \(connection.peerPID) is not the process this supervisor started for worker \(ordinal) generation \(hello.generation)"
            }
            // One critical section: the slot and the connection are checked and taken together.
            let verdict = state.withLock { state -> Result<Assignment, RefusedHello> in
                guard let layout = state.core.layouts.layout(layoutID), let worker = layout.machine.worker(ordinal: ordinal),
                    worker.generation == hello.generation, worker.state.isLive
                else {
                    return .failure(RefusedHello("worker \(ordinal) generation \(hello.generation) is not a current worker of this cluster"))
                }
                // Once: a second hello for a slot that has a connection is refused.
                if let existing = state.connections[layoutID]?[ordinal], existing.hello?.generation == hello.generation, existing.channel.isActive {
                    return .failure(RefusedHello("worker \(ordinal) generation \(hello.generation) is already connected"))
                }
                state.connections[layoutID, default: [:]][ordinal] = connection
                // A new layout's worker holds dispatch until the switch, and a held worker cannot resume: the
                // platform replays what the session missed before it confirms the resume, and the replay waits at
                // the held gate, so the confirmation is never read (seen: a shard of a rescale's new layout handed to
                // another host mid-rescale never got ready, and the rescale ran out of time). It identifies anew:
                // until the switch the serving layout receives every event too, so nothing is lost.
                let session = layout.role == .incoming ? nil : worker.session
                return .success(Assignment(
                    shard: Int32(worker.shard.id), total: Int32(worker.shard.total), generation: worker.generation,
                    resumeSessionID: session?.id, resumeSeq: Int64(session?.seq ?? 0),
                    apiBase: setup.apiBase, tokenURL: setup.tokenURL, gatewayURL: setup.gateway.url,
                    // A new layout connects and gets ready, but hands nothing to the handler until the switch.
                    holdDispatch: layout.role == .incoming
                ))
            }
            let assignment: Assignment
            switch verdict {
            case .success(let granted): assignment = granted
            case .failure(let refusal): return refusal.reason
            }
            connection.send(.welcome(assignment))
            dispatch(.hello(ordinal: ordinal, generation: hello.generation))
            return nil
        }
    }

    /// Handles one message from a worker or a control client, on the connection's event loop.
    public func received(_ message: IPCMessage, on connection: IPCConnection) {
        guard let hello = connection.hello else { return }
        if hello.role == .control {
            handleControl(message, on: connection)
            return
        }
        let ordinal = Int(hello.ordinal)
        let generation = hello.generation
        switch message {
        case .heartbeat(let progress):
            handle(.cluster(.progress(ordinal: ordinal, generation: generation, progress))) { state, now in
                Self.recordRate(&state, generation, progress, now: now)
            }
        case .webhookAttach:
            guard let webhook else {
                logger.warning("webhookAttach from a worker while the gateway mode is websocket, ignored", metadata: ["worker.ordinal": "\(ordinal)"])
                return
            }
            webhook.attach(layout: ClusterLayouts.layoutID(ofGeneration: generation), ordinal: ordinal, connection: connection)
        case .ping(let id):
            connection.send(.pong(id: id))
        case .pong(let id):
            // Only from the worker pinged: another could answer for a hung one.
            let entry = state.withLock { state -> (sentAt: MonotonicInstant, signal: AsyncSignal<Duration>)? in
                guard let entry = state.pings[id], entry.connection == connection.id else { return nil }
                state.pings[id] = nil
                return (entry.sentAt, entry.signal)
            }
            entry?.signal.set(.now() - entry!.sentAt)
        case .identifyRequest(let id, let shard):
            // A worker identifies for its own shard only (the ledger's bucket comes from the shard number).
            guard Int(shard) == assignedShard(ordinal, generation) else {
                connection.send(.identifyDenied(id: id, reason: "shard \(shard) is not this worker's"))
                return
            }
            dispatch(.identifying(ordinal: ordinal, generation: generation))
            ledger.request(from: connection, correlation: id, shard: shard)
        case .identifySent(let shard):
            ledger.sent(from: connection, shard: shard)
        case .identifyCancel(let id):
            ledger.cancel(from: connection, correlation: id)
        case .sessionCommitted(let id, let seq):
            dispatch(.sessionCommitted(ordinal: ordinal, generation: generation, id: id, seq: Int(max(0, seq))))
        case .sessionInvalidated:
            dispatch(.sessionInvalidated(ordinal: ordinal, generation: generation))
        case .gatewayState(.ready), .gatewayState(.resumed):
            var resumed = false
            if case .gatewayState(.resumed) = message { resumed = true }
            if webhook == nil {
                metrics.sessionStarted(resumed: resumed)
                if resumed { events.post("resume", "worker \(ordinal) resumed its session") }
            } else if resumed {
                events.post("resume", "worker \(ordinal) took over its shard's event stream")
            }
            dispatch(.gatewayReady(ordinal: ordinal, generation: generation))
        case .gatewayState(.failed(let failure, let code)):
            let what: String
            switch failure {
            case .configuration: what = "the gateway refused the configuration (close \(code))"
            case .reshardRequired: what = "too many guilds for this shard count (close \(code))"
            case .banned: what = "the bot is delisted or banned (close \(code))"
            }
            dispatch(.gatewayFailed(ordinal: ordinal, generation: generation, reason: what))
            if failure == .reshardRequired { reshardAfter4011() }
        case .gatewayState(.disconnected):
            break
        case .dispatchFinished(let fence):
            handle(.dispatchFinished(generation: generation, fence: fence))
            // Before a switch across hosts, the store hears of it at once (the switch waits for every fence).
            leases?.roundWakeup.poke()
        case .drained(let id, let seq):
            if let id { dispatch(.sessionCommitted(ordinal: ordinal, generation: generation, id: id, seq: Int(max(0, seq)))) }
        case .budgetRequest(let id, let route, let count):
            budget.request(from: connection, id: id, route: route, count: Int(count))
        case .budgetCancel(let id):
            budget.cancel(from: connection, id: id)
        case .budgetReturn(let route, let count):
            budget.giveBack(from: connection, route: route, count: Int(count))
        case .budgetRateLimited(let route, let retryAfter):
            let pause = budget.rateLimited(route: route, retryAfter: .clamped(milliseconds: Int64(retryAfter), to: .milliseconds(50)...BudgetAuthority.maxPause))
            metrics.rateLimitedOnce()
            events.post("429", "\(route.prefix(BudgetAuthority.maxRouteLength)) paused for \(DurationFormat.human(pause)) (worker \(ordinal))")
            logger.warning("429 from the platform: route paused for every worker", metadata: ["route": "\(route.prefix(BudgetAuthority.maxRouteLength))", "worker.ordinal": "\(ordinal)", "pause": "\(DurationFormat.human(pause))"])
            broadcast(.budgetPause(route: route, forMillis: Int32(clamping: pause.nanoseconds / 1_000_000)), except: connection)
            leases?.rateLimited(route: route, for: pause)
        case .usersChanged(let ids):
            if !ids.isEmpty { broadcast(.usersInvalidate(ids: ids), except: connection) }
            // Several hosts: the worker's outbox has users to publish.
            userFeed?.written()
        case .userAnswer(let id, let username):
            answer(id, username, from: connection, pending: \.userQueries)
        case .metricsAnswer(let id, let metrics):
            answer(id, metrics, from: connection, pending: \.metricsQueries)
        case .claims(let id, let keys):
            connection.send(.claimResults(id: id, decisions: claims.claim(keys, by: connection)))
        case .claimsDone(let keys):
            claims.complete(keys, by: connection)
        case .claimsReleased(let keys):
            claims.release(keys, by: connection)
        default:
            logger.warning("unexpected IPC message from a worker, ignored", metadata: ["worker.ordinal": "\(ordinal)", "message": "\(message.name)"])
        }
    }

    /// The shard number of a current worker (nil for a process that is not one).
    func assignedShard(_ ordinal: Int, _ generation: UInt64) -> Int? {
        state.withLock { state in
            guard let worker = state.core.layouts.layout(ClusterLayouts.layoutID(ofGeneration: generation))?.machine.worker(ordinal: ordinal),
                worker.generation == generation
            else { return nil }
            return worker.shard.id
        }
    }

    /// Sends a message to every connected worker (of every layout) but one.
    func broadcast(_ message: IPCMessage, except sender: IPCConnection?) {
        for connection in state.withLock({ $0.connections.values.flatMap(\.values) }) where connection != sender {
            connection.send(message)
        }
    }

    /// The connected workers of one layout, by ordinal.
    func workerConnections(of layout: Int) -> [Int: IPCConnection] {
        state.withLock { $0.connections[layout] ?? [:] }
    }

    /// A connection closed: its identify, budget and claim requests are dropped; its worker counts as disconnected.
    public func closed(_ connection: IPCConnection, reason: String?) {
        ledger.connectionClosed(connection)
        budget.connectionClosed(connection)
        claims.connectionClosed(connection)
        webhook?.detach(connection)
        guard let hello = connection.hello, hello.role == .worker else { return }
        let layout = ClusterLayouts.layoutID(ofGeneration: hello.generation)
        state.withLock { state in
            if state.connections[layout]?[Int(hello.ordinal)] == connection { state.connections[layout]?[Int(hello.ordinal)] = nil }
            state.rates[hello.generation] = nil
        }
        // A retiring worker that is gone owes no `dispatchFinished`.
        handle(.disconnected(generation: hello.generation))
    }

    static func recordRate(_ state: inout State, _ generation: UInt64, _ progress: WorkerProgress, now: MonotonicInstant) {
        if let previous = state.rates[generation], now > previous.at {
            let perSecond = Double(max(0, progress.handled.saturatingSubtract(previous.handled))) / (now - previous.at).seconds
            // Smooth over a few reports.
            state.rates[generation] = (progress.handled, now, previous.perSecond * 0.5 + perSecond * 0.5)
        } else {
            state.rates[generation] = (progress.handled, now, 0)
        }
    }
}

/// Why a worker's hello is refused.
struct RefusedHello: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}
