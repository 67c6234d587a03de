import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Foundation
import QQGateway
import Synchronization

extension ClusterSupervisor {
    func handleControl(_ message: IPCMessage, on connection: IPCConnection) {
        guard case .controlRequest(let id, let command) = message else {
            if case .ping(let id) = message { connection.send(.pong(id: id)) }
            return
        }
        /// Work that awaits runs beside the supervisor; the connection is not idle meanwhile.
        func work(_ body: @escaping @Sendable () async -> Void) {
            connection.beginWork()
            controlContinuation.yield {
                await body()
                connection.endWork()
            }
        }
        let progress: @Sendable (String) -> Void = { line in connection.send(.controlProgress(id: id, line: line)) }
        switch command {
        case .status:
            work { await connection.send(.controlReply(id: id, ok: true, body: Self.encode(self.status()))) }
        case .restart(let ordinal):
            let (ok, text) = restart(ordinal: ordinal)
            connection.send(.controlReply(id: id, ok: ok, body: text))
        case .user(let userID):
            work {
                let (answers, missing) = await self.askWorkers(about: userID, deadline: .milliseconds(500))
                let body = JSONValue.object([
                    ("user", .string(userID)),
                    ("workers", .object(answers.sorted { $0.key < $1.key }.map { (String($0.key), $0.value.map { .string($0) } ?? .null) })),
                    ("unresponsive", .array(missing.map { .number(Double($0)) })),
                ])
                connection.send(.controlReply(id: id, ok: true, body: body.serialized()))
            }
        case .stop:
            // `botcluster stop` returns when this connection closes with the supervisor: never idle until then.
            connection.beginWork()
            connection.send(.controlReply(id: id, ok: true, body: "stopping \(shardCount) workers (supervisor pid \(getpid()))"))
            dispatch(.stop)
        case .scale(let target, let planOnly):
            work {
                let (ok, text) = await self.scale(to: target, planOnly: planOnly, progress: progress)
                connection.send(.controlReply(id: id, ok: ok, body: text))
            }
        case .rollingRestart(let maxUnavailable):
            // The core clamps it to 1...the worker count.
            work {
                let (ok, text) = await self.rollingRestart(maxUnavailable: maxUnavailable, progress: progress)
                connection.send(.controlReply(id: id, ok: ok, body: text))
            }
        }
    }

    /// A status as JSON text (the reply body of `status`).
    static func encode(_ status: ClusterStatus) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(status)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// Restarts one worker (worker `ordinal` runs shard `ordinal`).
    func restart(ordinal: Int) -> (Bool, String) {
        let count = shardCount
        guard (0..<count).contains(ordinal) else {
            return (false, "no worker \(ordinal): ordinals and shards are 0...\(count - 1)")
        }
        dispatch(.restart(ordinal: ordinal))
        return (true, "restarting worker \(ordinal) (shard \(ordinal)/\(count))")
    }

    /// Pings every connected worker and waits up to `deadline`: round trips of those that answered, and the
    /// ordinals that did not (a fan-out with partial results).
    func pingWorkers(deadline: Duration) async -> (rtt: [Int: Duration], missing: [Int]) {
        let targets = workerConnections(of: state.withLock { $0.core.layouts.active.id })
        var signals: [(Int, AsyncSignal<Duration>)] = []
        var ids: [UInt64] = []
        for (ordinal, connection) in targets {
            let signal = AsyncSignal<Duration>()
            let id = state.withLock { state in
                state.nextRequestID += 1
                state.pings[state.nextRequestID] = (ordinal, connection.id, .now(), signal)
                return state.nextRequestID
            }
            signals.append((ordinal, signal))
            ids.append(id)
            connection.send(.ping(id: id))
        }
        let answers = await firstAnswers(signals, within: deadline)
        // What did not answer in time is forgotten: a worker that never answers grows nothing.
        state.withLock { state in for id in ids { state.pings[id] = nil } }
        return (answers, runHere.filter { answers[$0] == nil })
    }

    /// The active layout's ordinals this host runs (all of them, unless another host holds some).
    var runHere: [Int] {
        state.withLock { $0.core.layouts.active.machine.workers.filter { $0.state != .elsewhere }.map(\.ordinal) }
    }

    /// Asks every connected worker what its cache serves for a user, waiting up to `deadline`: the answers (nil =
    /// not cached) and the ordinals that did not answer.
    func askWorkers(about userID: String, deadline: Duration) async -> (answers: [Int: String?], missing: [Int]) {
        let targets = workerConnections(of: state.withLock { $0.core.layouts.active.id })
        let answers = await ask(targets, within: deadline, pending: \.userQueries) { .userQuery(id: $0, userID: userID) }
        return (answers, runHere.filter { answers[$0] == nil })
    }

    /// Sends each of `targets` (by any key) the question `message` makes of a correlation id and waits up to
    /// `deadline`: the answers that came, by key. The question waits in `pending` until its answer comes (the
    /// message handler completes it) or the deadline passes (it is forgotten: a worker that never answers grows
    /// nothing).
    func ask<Key: Hashable & Sendable, T: Sendable>(
        _ targets: [Key: IPCConnection], within deadline: Duration, pending: WritableKeyPath<State, [UInt64: Pending<T>]>,
        _ message: (UInt64) -> IPCMessage
    ) async -> [Key: T] {
        var signals: [(Int, AsyncSignal<T>)] = []
        var keys: [Key] = []
        var ids: [UInt64] = []
        for (key, connection) in targets {
            let signal = AsyncSignal<T>()
            let id = state.withLock { state in
                state.nextRequestID += 1
                state[keyPath: pending][state.nextRequestID] = Pending(connection: connection.id, signal: signal)
                return state.nextRequestID
            }
            signals.append((keys.count, signal))
            keys.append(key)
            ids.append(id)
            connection.send(message(id))
        }
        let answers = await firstAnswers(signals, within: deadline)
        state.withLock { state in for id in ids { state[keyPath: pending][id] = nil } }
        var byKey: [Key: T] = [:]
        for (index, answer) in answers { byKey[keys[index]] = answer }
        return byKey
    }

    /// Completes the question `id` in `pending` with `value`, when `connection` is the one it was sent to.
    func answer<T: Sendable>(_ id: UInt64, _ value: T, from connection: IPCConnection, pending: WritableKeyPath<State, [UInt64: Pending<T>]>) {
        let entry = state.withLock { state -> Pending<T>? in
            guard let entry = state[keyPath: pending][id], entry.connection == connection.id else { return nil }
            state[keyPath: pending][id] = nil
            return entry
        }
        entry?.signal.set(value)
    }

    /// The Prometheus text exposition of the cluster: every worker process (of every layout) is asked for its
    /// counts and waited for up to a second; one that does not answer counts with its last answer. Scrapes never
    /// overlap (one collection at a time, its result shared for a second): the workers' answers are merged in order.
    public func metricsText() async -> String {
        await scrapes.value { await self.collectMetrics(deadline: .seconds(1)) }
    }

    func collectMetrics(deadline: Duration) async -> String {
        let (targets, shards, snapshot) = state.withLock { state in
            var targets: [UInt64: IPCConnection] = [:]
            var shards: [UInt64: Int] = [:]
            for layout in state.core.layouts.layouts {
                for worker in layout.machine.workers where worker.pid != nil {
                    shards[worker.generation] = worker.shard.id
                    if let connection = state.connections[layout.id]?[worker.ordinal], connection.hello?.generation == worker.generation {
                        targets[worker.generation] = connection
                    }
                }
            }
            let serving = state.core.layouts.active.machine.workers.map { (ordinal: $0.ordinal, state: $0.state, pid: $0.pid) }
            return (targets, shards, serving)
        }
        let answers = await ask(targets, within: deadline, pending: \.metricsQueries) { .metricsQuery(id: $0) }
        var collected: [UInt64: (shard: Int, metrics: WorkerMetrics)] = [:]
        for (generation, answer) in answers { collected[generation] = (shards[generation] ?? 0, answer) }
        // Who lives now, after the answers: a process that ended meanwhile is retired with its last answer.
        let live = state.withLock { state in
            Set(state.core.layouts.layouts.flatMap { $0.machine.workers.filter { $0.pid != nil }.map(\.generation) })
        }
        metrics.collect(collected, live: live)
        return metrics.render(.init(workers: snapshot, startsRemaining: ledger.snapshot.remaining, budgetGranted: budget.snapshot.granted, now: .now(), webhookQueued: webhook?.queued ?? 0))
    }

    /// Waits for each worker's answer until `deadline`: the answers that came, by ordinal (a fan-out's partial
    /// result; the callers name the rest).
    func firstAnswers<T: Sendable>(_ signals: [(Int, AsyncSignal<T>)], within deadline: Duration) async -> [Int: T] {
        await withTaskGroup(of: (Int, T?).self) { group in
            for (ordinal, signal) in signals {
                group.addTask {
                    await withTaskGroup(of: T?.self) { race in
                        race.addTask { try? await signal.wait() }
                        race.addTask {
                            try? await Task.sleep(for: deadline)
                            return nil
                        }
                        let first = await race.next() ?? nil
                        race.cancelAll()
                        return (ordinal, first)
                    }
                }
            }
            var answers: [Int: T] = [:]
            for await (ordinal, answer) in group {
                if let answer { answers[ordinal] = answer }
            }
            return answers
        }
    }

    /// A worker's event rate now: a worker reports only when its counters move, so a rate whose last report is
    /// older than ten seconds is the rate of a worker that stopped handling: zero.
    func currentRate(_ rate: (handled: Int64, at: MonotonicInstant, perSecond: Double)?, now: MonotonicInstant) -> Double {
        guard let rate, now - rate.at <= max(.seconds(10), setup.config.worker.reportInterval * 3) else { return 0 }
        return rate.perSecond
    }

    /// The cluster as `botcluster status --json` prints it.
    public func status() async -> ClusterStatus {
        let (rtt, missing) = await pingWorkers(deadline: .milliseconds(500))
        let now = MonotonicInstant.now()
        let (activeID, all, rates) = state.withLock { state in
            (state.core.layouts.active.id, state.core.layouts.layouts.map { ($0.id, $0.role, $0.machine.workers) }, state.rates)
        }
        let identify = ledger.snapshot
        let tokens = budget.grantedTo
        func rounded(_ value: Double) -> Double { (value * 10).rounded() / 10 }
        func entries(_ layout: Int, _ workers: [WorkerRecord], role: ClusterLayouts.Role) -> [ClusterStatus.Worker] {
            let connectionIDs = workerConnections(of: layout).mapValues(\.id)
            return workers.map { worker in
                var entry = ClusterStatus.Worker(
                    ordinal: worker.ordinal, shard: [worker.shard.id, worker.shard.total], pid: worker.pid, state: worker.state.rawValue,
                    generation: worker.generation, restarts: worker.restarts
                )
                entry.uptimeSeconds = worker.state.isLive ? worker.startedAt.map { rounded((now - $0).seconds) } : nil
                entry.lastExit = worker.lastExit?.description
                entry.gatewayLatencyMs = worker.progress.flatMap { $0.heartbeatLatencyMicros >= 0 ? rounded(Double($0.heartbeatLatencyMicros) / 1000) : nil }
                // Reports come when something changed: the age grows from when the last one came.
                entry.lastEventAgeMs = worker.progress.flatMap { progress in
                    progress.lastEventAgeMillis >= 0 ? progress.lastEventAgeMillis + (worker.progressAt.map { (now - $0).nanoseconds / 1_000_000 } ?? 0) : nil
                }
                entry.eventsPerSecond = worker.state.isLive ? rounded(currentRate(rates[worker.generation], now: now)) : nil
                entry.reconnects = worker.progress.map { Int($0.reconnects) }
                entry.handled = worker.progress?.handled
                entry.ipcLatencyMs = role == .active ? rtt[worker.ordinal].map { rounded($0.milliseconds) } : nil
                entry.restTokens = connectionIDs[worker.ordinal].map { tokens[$0] ?? 0 }
                entry.session = worker.session.map { ClusterStatus.Session(id: $0.id, seq: $0.seq) }
                entry.failure = worker.failure
                entry.layout = role == .active ? nil : role.rawValue
                return entry
            }
        }
        let budgetSnapshot = budget.snapshot
        var status = ClusterStatus(
            supervisor: .init(pid: getpid(), uptimeSeconds: rounded((now - startedAt).seconds), shards: shardCount, socket: setup.config.supervisor.socket),
            identify: .init(maxConcurrency: identify.maxConcurrency, remainingToday: identify.remaining, granted: identify.granted, waiting: identify.waiting),
            rateBudget: .init(rate: setup.config.rateBudget.globalRate * budget.share, granted: budgetSnapshot.granted, waiting: budgetSnapshot.waiting),
            exactlyOnce: .init(remembered: claims.remembered),
            workers: all.filter { $0.0 == activeID }.flatMap { entries($0.0, $0.2, role: .active) },
            otherLayouts: all.filter { $0.0 != activeID }.flatMap { entries($0.0, $0.2, role: $0.1) },
            unresponsive: missing, startup: startup(now: now)
        )
        status.mode = setup.config.gateway.mode.rawValue
        status.webhook = webhook.map { ClusterStatus.Webhook(queued: $0.queued, limit: setup.config.webhook.queueLimit) }
        status.cluster = leases.map { clusterStatus($0, now: now) }
        return status
    }

    /// Every host of the cluster as this host's last lease round saw it: live hosts, and hosts gone whose leases
    /// have not expired yet.
    func clusterStatus(_ leases: LeaseService, now: MonotonicInstant) -> ClusterStatus.Cluster {
        let (round, at) = leases.lastRound
        let age = at.map { (now - $0).seconds }
        var hosts: [ClusterStatus.Cluster.Host] = []
        if let round {
            let ids = Set(round.hosts.keys).union(round.holders.values)
            for id in ids.sorted() {
                let shards = round.holders.filter { $0.value == id }.keys.sorted()
                let expiry = shards.compactMap { round.expiresIn[$0] }.min().map { max(0, $0 - (age ?? 0)) }
                hosts.append(.init(id: id, address: round.hosts[id] ?? "", live: round.hosts[id] != nil, shards: shards, leasesExpireInSeconds: expiry.map { ($0 * 10).rounded() / 10 }))
            }
        }
        let users = userFeed.map { feed in
            let counts = feed.counters
            return ClusterStatus.Cluster.UserChanges(published: counts.published, applied: counts.applied, skipped: counts.skipped)
        }
        return ClusterStatus.Cluster(
            thisHost: leases.host, store: leases.authority.displayURL, lastRoundSecondsAgo: age.map { ($0 * 10).rounded() / 10 }, hosts: hosts, userChanges: users
        )
    }

    /// The layout on its way up — the launch until the cluster is first ready, then a rescale's new layout — with
    /// the identify ledger's word on how long its remaining identifies take; nil when none is.
    /// `incomingOnly`: a rescale's new layout only.
    func startup(now: MonotonicInstant, incomingOnly: Bool = false) -> ClusterStatus.Startup? {
        let coming = state.withLock { state -> [WorkerRecord]? in
            let layouts = state.core.layouts
            if !incomingOnly, !layouts.active.machine.announcedReady, !layouts.active.machine.stopping { return layouts.active.machine.workers }
            return layouts.layouts.first { $0.role == .incoming }?.machine.workers
        }
        guard let workers = coming else { return nil }
        let maxConcurrency = setup.gateway.maxConcurrency
        var pending: [Int: Int] = [:]
        for worker in workers where worker.readyAt == nil && worker.session == nil && worker.state != .failed && worker.state != .stopped {
            pending[ShardMath.bucket(ofShard: worker.shard.id, maxConcurrency: maxConcurrency), default: 0] += 1
        }
        let finish = ledger.estimatedFinish(pending: pending, now: now)
        return ClusterStatus.Startup(
            ready: workers.filter { $0.state == .ready }.count, total: workers.count, identifyingBuckets: pending.keys.sorted(),
            secondsLeft: (finish - now).seconds
        )
    }

    /// Shows the launch as it comes up, until the cluster is ready: on a terminal one line redrawn in place every
    /// second, else a plain line every ten seconds when it changed.
    func showLaunchProgress() async {
        let terminal = isatty(STDOUT_FILENO) == 1
        await followStartup(every: terminal ? .seconds(1) : .seconds(10), incomingOnly: false) { line in
            OutputWriter.standardOutput.write(terminal ? Self.clearLine + line : "launch: \(line)\n")
        }
    }

    /// Every `interval`, the startup line of the layout on its way up when it changed; returns once none is (or,
    /// for the launch, once the cluster was ready).
    func followStartup(every interval: Duration, incomingOnly: Bool, _ emit: (String) -> Void) async {
        var shown: String?
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            guard !Task.isCancelled, incomingOnly || ready.current == nil,
                let line = startup(now: .now(), incomingOnly: incomingOnly)?.line
            else { return }
            if line != shown { emit(line) }
            shown = line
        }
    }

    /// Carriage return and erase-line: a terminal's live line is redrawn, or cleared before the next output.
    static let clearLine = "\r\u{1B}[K"
}

/// Whether every shard of the serving layout is ready (`/readyz`), and why those that are not are not.
public struct Readiness: Codable, Sendable, Equatable {
    /// A shard that is not ready.
    public struct Shard: Codable, Sendable, Equatable {
        public var ordinal: Int
        public var state: String
        public var why: String
    }

    public var ready: Bool
    public var shards: Int
    public var notReady: [Shard]
}

extension ClusterSupervisor {
    /// The serving layout's readiness, from what the supervisor holds (no worker is asked: a probe stays cheap).
    public func readiness() -> Readiness {
        let workers = state.withLock { $0.core.layouts.active.machine.workers }
        let notReady = workers.filter { $0.state != .ready && $0.state != .elsewhere }.map { worker -> Readiness.Shard in
            let why: String
            switch worker.state {
            case .queued: why = "waiting for its turn to start"
            case .spawning: why = "starting"
            case .connected: why = "connecting to the gateway"
            case .identifying: why = "waiting for an identify slot"
            case .draining: why = "draining"
            case .backoff: why = "restarting after \(worker.lastExit?.description ?? "an exit")"
            case .failed: why = worker.failure ?? "failed"
            case .stopped: why = "stopped"
            case .ready, .elsewhere: why = ""
            }
            return .init(ordinal: worker.ordinal, state: worker.state.rawValue, why: why)
        }
        return Readiness(ready: notReady.isEmpty && !workers.isEmpty, shards: workers.count, notReady: notReady)
    }
}
