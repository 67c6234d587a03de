import ClusterCore
import ClusterIPC
import ClusterProtocol
import Logging
import NIOCore
import QQGateway
import ServiceLifecycle
import Synchronization
import UserCache
#if canImport(Glibc)
import Glibc
#endif

/// One shard under the supervisor, as a `Service`: identify slots and the session hand-off over IPC, beats in the
/// liveness table, progress reports when something changed, the supervisor's messages routed to the runtime's parts (claims, budget pauses, cache
/// invalidations, the rescale switch), a drain on graceful shutdown (SIGTERM), and an exit at once
/// when the supervisor's socket closes (no orphan answers twice).
public final class ClusterWorker: Service {
    /// Why a worker could not join its supervisor.
    public struct JoinError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    let config: ClusterConfig
    let client: IPCClient
    let assignment: Assignment
    let handler: any EventHandler
    let logger: Logger
    /// Where this worker stores its beats, and its slot there (nil: no supervisor watches for hangs).
    let liveness: (table: LivenessTable, slot: Int)?
    /// The exit status the process ends with (see `WorkerExitStatus`), once `run` has returned.
    public let exitStatus = AsyncSignal<Int32>()

    /// Connects to the supervisor at `socket` — only when the kernel says it is the process `supervisorPID` of this
    /// user — says hello as (`ordinal`, `generation`), and returns the connection with the welcome's assignment.
    public static func join(socket: String, ordinal: Int32, generation: UInt64, supervisorPID: Int32) async throws -> (IPCClient, Assignment) {
        let client: IPCClient
        do {
            client = try await IPCClient.connect(
                path: socket, hello: Hello(role: .worker, ordinal: ordinal, generation: generation, pid: getpid()), supervisorPID: supervisorPID
            )
        } catch {
            throw JoinError(description: "cannot reach the supervisor at \(socket): \(error)")
        }
        var inbound = client.inbound.makeAsyncIterator()
        let answer = await inbound.next()
        if case .welcome(let assignment) = answer { return (client, assignment) }
        client.close()
        if case .refused(let reason) = answer { throw JoinError(description: "the supervisor refused this worker: \(reason)") }
        throw JoinError(description: "no welcome from the supervisor")
    }

    /// Creates the worker for the assignment `join` returned; its log lines name the shard. It beats in `liveness`
    /// every `supervisor.heartbeat.interval` while it runs.
    public init(config: ClusterConfig, client: IPCClient, assignment: Assignment, handler: any EventHandler, liveness: (table: LivenessTable, slot: Int)?, logger: Logger) {
        self.config = config
        self.liveness = liveness
        self.client = client
        self.assignment = assignment
        self.handler = handler
        var logger = logger
        logger[metadataKey: "shard.id"] = "\(assignment.shard)/\(assignment.total)"
        self.logger = logger
    }

    /// Runs the shard until stopped or failed for good, drains, tells the supervisor where it stopped, sets `exitStatus`.
    public func run() async throws {
        // From the first moment: setting up the clients and the cache can take a while on a loaded machine.
        let beating = startBeating()
        defer { beating?.cancel() }
        let shard = ShardID(Int(assignment.shard), of: Int(assignment.total))
        let link = SupervisorLink(client: client)
        let budget = ClusterRateBudget(client: client, leaseSize: config.rateBudget.leaseSize)
        let clients: PlatformClients
        do {
            clients = try PlatformClients(config: config, endpoints: GatewayEndpoints(apiBase: assignment.apiBase, tokenURL: assignment.tokenURL), budget: budget, logger: logger)
        } catch {
            logger.error("cannot set up the platform client", metadata: ["error": "\(error)"])
            exitStatus.set(1)
            return
        }
        let users: UserDirectory?
        do {
            let store = try UserStore.open(path: config.supervisor.runDirectory + "/users.sqlite")
            users = UserDirectory.make(store: store, config: config, shard: shard, api: clients.api, logger: logger) { [client, outbox = config.store.postgres != nil] written in
                // Several hosts: users new to the file are news for the supervisor too (it publishes the outbox).
                guard !written.changed.isEmpty || outbox else { return }
                client.send(.usersChanged(ids: written.changed))
            }
        } catch {
            logger.error("user cache unavailable; running without it", metadata: ["error": "\(error)"])
            users = nil
        }
        let resume = assignment.resumeSessionID.map { (id: $0, seq: Int(assignment.resumeSeq)) }
        let claims = ClusterEventClaims(client: client)
        // Webhook mode: the shard's events come from the supervisor's ingress, not a websocket of its own.
        let feed = config.gateway.mode == .webhook ? WebhookFeed { [client] in client.send(.webhookAttach) } : nil
        let runtime = ShardRuntime.make(
            config: config, clients: clients, gatewayURL: assignment.gatewayURL, shard: shard, handler: handler, resume: resume,
            permit: link, claims: claims, users: users, observer: link, logger: logger, holdDispatch: assignment.holdDispatch,
            source: feed
        )
        link.watch(runtime.sessionMoved)
        let parts = Parts(link: link, budget: budget, users: users, claims: claims, runtime: runtime, rest: clients.api.tally, feed: feed)
        let outcome = await runShard(runtime, drainTimeout: config.worker.drainTimeout, onStop: { link.gatewayState = .draining }, onDeadline: { sessionID, seq in
            self.logger.warning("handlers still running at the drain deadline were abandoned; exiting", metadata: ["session.seq": "\(seq)"])
            _ = try? await self.client.sendFlushed(.drained(sessionID: sessionID, seq: Int64(seq)), within: .milliseconds(500))
            exit(WorkerExitStatus.stopped)
        }, beside: [
            { await self.report(parts) },
            { await users?.run() },
            { await self.follow(parts) },
        ])
        _ = try? await withTimeout(.seconds(1), "the user cache's last write") { await users?.flush() }
        budget.returnUnused()
        await clients.shutdown()
        client.send(.drained(sessionID: outcome.sessionID, seq: Int64(outcome.committedSeq)))
        logger.info("worker stopped", metadata: ["session.seq": "\(outcome.committedSeq)", "handled": "\(outcome.stats.handled)"])
        exitStatus.set(WorkerExitStatus.of(outcome.gateway))
        client.close()
    }

    /// What the supervisor's messages reach.
    struct Parts: Sendable {
        let link: SupervisorLink
        let budget: ClusterRateBudget
        let users: UserDirectory?
        let claims: ClusterEventClaims
        let runtime: ShardRuntime
        let rest: RESTTally
        /// The shard's event stream in webhook mode.
        let feed: WebhookFeed?

        /// What this process counted since it started, for the supervisor's metrics.
        var metrics: WorkerMetrics {
            let stats = runtime.stats
            var metrics = WorkerMetrics()
            metrics.eventsByType = stats.eventsByType
            metrics.duplicates = Int64(stats.duplicatesSkipped)
            metrics.handlerErrors = Int64(stats.handlerErrors)
            metrics.handlerDuration = stats.handlerDuration
            metrics.heartbeatLatency = stats.heartbeatLatencies
            metrics.ipcRoundTrip = claims.roundTrips
            for (key, count) in rest.snapshot { metrics.restRequests[RESTOutcome(route: key.route, status: key.status)] = count }
            if let counters = users?.counters {
                metrics.cacheHits = Int64(counters.hits)
                metrics.cacheMisses = Int64(counters.lookups - counters.hits)
            }
            return metrics
        }
    }

    /// Proves the worker runs: a beat in the liveness table every heartbeat interval, stored by the IPC
    /// connection's event loop only if the cooperative pool the shard's work runs on has run the little job the
    /// previous round gave it. A loop or a pool that is stuck stops the beats, and the supervisor sees a hang.
    ///
    /// A task sleeping on the pool alone would not notice a stuck loop (the gateway, IPC and HTTP all run on it).
    /// Either way a beat costs an idle worker a wake-up, about 0.1 ms of CPU here (128 idle shards, 10 s: 67 ticks
    /// with a sleeping task, 78 with this, at four beats a second; 24 with none): what keeps idle cheap is beating
    /// only as often as the hang limit needs (`heartbeat.interval` 500 ms, 2 misses).
    func startBeating() -> RepeatedTask? {
        guard let liveness else { return nil }
        let rounds = BeatRounds()
        let interval = TimeAmount.nanoseconds(config.supervisor.heartbeatInterval.nanoseconds)
        return client.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { _ in
            let now = MonotonicInstant.now()
            if rounds.poolRan.load(ordering: .acquiring) >= rounds.asked.load(ordering: .relaxed) {
                liveness.table.beat(slot: liveness.slot, now: now)
            }
            rounds.asked.store(now.nanoseconds, ordering: .relaxed)
            Task { rounds.poolRan.store(MonotonicInstant.now().nanoseconds, ordering: .releasing) }
        }
    }

    /// When the loop last asked the pool for a job, and when the pool last ran one.
    final class BeatRounds: Sendable {
        let poolRan = Atomic<Int64>(0)
        let asked = Atomic<Int64>(0)
    }

    /// Progress reports when something changed (at most one per `worker.reportInterval` under load), each with the
    /// committed session: one message per change, however few events it covers. Idle, the loop sleeps until a
    /// dispatch is done with, the gateway state changes, or `progressRefresh` has passed (for the heartbeat latency
    /// `status` shows).
    func report(_ parts: Parts) async {
        var last: WorkerProgress?
        while !Task.isCancelled {
            var progress = parts.link.progress(parts.runtime.stats)
            let (sessionID, seq) = parts.runtime.committed
            progress.session = sessionID.map { .init(id: $0, seq: Int64(seq)) }
            if !progress.sameFigures(as: last) {
                client.send(.heartbeat(progress))
                last = progress
                // Under load: at most one report per reportInterval.
                try? await Task.sleep(for: config.worker.reportInterval)
            } else {
                await parts.runtime.sessionMoved.wait(until: .now() + Self.progressRefresh)
            }
        }
    }

    /// How stale an idle worker's reported figures (the gateway heartbeat latency) may get.
    static let progressRefresh: Duration = .seconds(15)

    /// Routes what the supervisor sends, until its socket closes.
    func follow(_ parts: Parts) async {
        await withDiscardingTaskGroup { group in
            for await message in client.inbound {
                switch message {
                case .budgetPause(let route, let ms):
                    parts.budget.pause(route: route, for: .milliseconds(Int64(ms)))
                case .metricsQuery(let id):
                    client.send(.metricsAnswer(id: id, parts.metrics))
                case .usersInvalidate(let ids):
                    parts.users?.invalidate(ids)
                case .userQuery(let id, let userID):
                    group.addTask {
                        let user = await parts.users?.get(userID)
                        self.client.send(.userAnswer(id: id, username: user?.username))
                    }
                case .claimResults(let id, let decisions):
                    parts.claims.deliver(id: id, decisions: decisions)
                case .claimResolved(let key, let decision):
                    parts.claims.resolved(key: key, decision: decision)
                case .startDispatch:
                    logger.info("switch: handling events")
                    parts.runtime.startDispatch()
                case .finishDispatch(let fence):
                    // Beside this loop: the claims' answers it waits for come through it. Requests are answered in
                    // turn (`finishDispatch` runs one at a time), each with its own fence.
                    group.addTask {
                        await parts.runtime.finishDispatch()
                        self.logger.info("fence passed: everything received is handled")
                        self.client.send(.dispatchFinished(fence: fence))
                    }
                default:
                    parts.feed?.deliver(message)
                }
            }
            group.cancelAll()
        }
        // The supervisor's socket closed: it is gone, and so is this worker (no orphan answers twice).
        parts.claims.abandonAll()
        if !Task.isCancelled && parts.link.gatewayState != .draining {
            logger.error("the supervisor connection closed; exiting")
            exit(WorkerExitStatus.orphaned)
        }
    }
}
