import ClusterCore
import ClusterIPC
import Foundation
import Synchronization

/// The control commands the supervisor answers over its socket.
public enum ControlCommand {
    public static let status = "status"
    public static let restart = "restart"
    public static let stop = "stop"
    public static let user = "user"
    /// `scale` with "M", "M plan", "auto" or "auto plan".
    public static let scale = "scale"
    /// `rolling` with the most workers to replace at once.
    public static let rolling = "rolling"
}

extension ClusterSupervisor {
    func handleControl(_ message: IPCMessage, on connection: IPCConnection) {
        guard case .controlRequest(let id, let command, let argument) = message else {
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
        switch command {
        case ControlCommand.status:
            work { await connection.send(.controlReply(id: id, ok: true, body: self.statusJSON().serialized())) }
        case ControlCommand.restart:
            let (ok, text) = restart(argument)
            connection.send(.controlReply(id: id, ok: ok, body: text))
        case ControlCommand.user:
            work {
                let (answers, missing) = await self.askWorkers(about: argument, deadline: .milliseconds(500))
                let body = JSONValue.object([
                    ("user", .string(argument)),
                    ("workers", .object(answers.sorted { $0.key < $1.key }.map { (String($0.key), $0.value.map { .string($0) } ?? .null) })),
                    ("unresponsive", .array(missing.map { .number(Double($0)) })),
                ])
                connection.send(.controlReply(id: id, ok: true, body: body.serialized()))
            }
        case ControlCommand.stop:
            // `botcluster stop` returns when this connection closes with the supervisor: never idle until then.
            connection.beginWork()
            connection.send(.controlReply(id: id, ok: true, body: "stopping \(shardCount) workers (supervisor pid \(getpid()))"))
            dispatch(.stop)
        case ControlCommand.scale:
            work {
                let (ok, text) = await self.scale(argument) { connection.send(.controlProgress(id: id, line: $0)) }
                connection.send(.controlReply(id: id, ok: ok, body: text))
            }
        case ControlCommand.rolling:
            let maxUnavailable = min(max(1, Int(argument) ?? 1), ShardsConfig.maxCount)
            work {
                let (ok, text) = await self.rollingRestart(maxUnavailable: maxUnavailable) { connection.send(.controlProgress(id: id, line: $0)) }
                connection.send(.controlReply(id: id, ok: ok, body: text))
            }
        default:
            connection.send(.controlReply(id: id, ok: false, body: "unknown command \"\(command)\"; known: status, restart, rolling, scale, stop, user"))
        }
    }

    /// `restart N` (an ordinal) or `restart shard:K`.
    func restart(_ argument: String) -> (Bool, String) {
        let count = shardCount
        let ordinal: Int?
        if argument.hasPrefix("shard:") {
            ordinal = Int(argument.dropFirst(6))
        } else {
            ordinal = Int(argument)
        }
        guard let ordinal, (0..<count).contains(ordinal) else {
            return (false, "no worker \(argument): ordinals and shards are 0...\(count - 1)")
        }
        dispatch(.restart(ordinal: ordinal))
        return (true, "restarting worker \(ordinal) (shard \(ordinal)/\(count))")
    }

    /// Pings every connected worker and waits up to `deadline`: round trips of those that answered, and the
    /// ordinals that did not (a fan-out with partial results).
    func pingWorkers(deadline: Duration) async -> (rtt: [Int: Duration], missing: [Int]) {
        let targets = workerConnections(of: layouts.withLock { $0.active.id })
        var signals: [(Int, AsyncSignal<Duration>)] = []
        for (ordinal, connection) in targets {
            let id = nextPing.add(1, ordering: .relaxed).newValue
            let signal = AsyncSignal<Duration>()
            pings.withLock { $0[id] = (ordinal, .now(), signal) }
            signals.append((ordinal, signal))
            connection.send(.ping(id: id))
        }
        let answers = await firstAnswers(signals, within: deadline)
        return (answers, (0..<shardCount).filter { answers[$0] == nil })
    }

    /// Asks every connected worker what its cache serves for a user, waiting up to `deadline`: the answers (nil =
    /// not cached) and the ordinals that did not answer.
    func askWorkers(about userID: String, deadline: Duration) async -> (answers: [Int: String?], missing: [Int]) {
        let targets = workerConnections(of: layouts.withLock { $0.active.id })
        var signals: [(Int, AsyncSignal<String?>)] = []
        for (ordinal, connection) in targets {
            let id = nextPing.add(1, ordering: .relaxed).newValue
            let signal = AsyncSignal<String?>()
            userQueries.withLock { $0[id] = signal }
            signals.append((ordinal, signal))
            connection.send(.userQuery(id: id, userID: userID))
        }
        let answers = await firstAnswers(signals, within: deadline)
        let missing = (0..<shardCount).filter { answers[$0] == nil }
        return (answers, missing)
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

    /// The cluster as `botcluster status --json` prints it.
    func statusJSON() async -> JSONValue {
        let (rtt, missing) = await pingWorkers(deadline: .milliseconds(500))
        let now = MonotonicInstant.now()
        let (activeID, all) = layouts.withLock { layouts in (layouts.active.id, layouts.layouts.map { ($0.id, $0.role, $0.machine.workers) }) }
        let rates = rates.withLock { $0 }
        let identify = ledger.snapshot
        let tokens = budget.grantedTo
        func number(_ value: Double) -> JSONValue { .number((value * 10).rounded() / 10) }
        func entries(_ layout: Int, _ workers: [WorkerRecord], role: ClusterLayouts.Role) -> [JSONValue] {
            let connectionIDs = workerConnections(of: layout).mapValues(\.id)
            return workers.map { worker -> JSONValue in
            var fields: [(key: String, value: JSONValue)] = [
                ("ordinal", .number(Double(worker.ordinal))),
                ("shard", .array([.number(Double(worker.shard.id)), .number(Double(worker.shard.total))])),
                ("pid", worker.pid.map { .number(Double($0)) } ?? .null),
                ("state", .string(worker.state.rawValue)),
                ("generation", .number(Double(worker.generation))),
                ("uptimeSeconds", worker.state.isLive ? worker.startedAt.map { number((now - $0).seconds) } ?? .null : .null),
                ("restarts", .number(Double(worker.restarts))),
                ("lastExit", worker.lastExit.map { .string($0.description) } ?? .null),
                ("gatewayLatencyMs", worker.progress.flatMap { $0.heartbeatLatencyMicros >= 0 ? number(Double($0.heartbeatLatencyMicros) / 1000) : nil } ?? .null),
                ("lastEventAgeMs", worker.progress.flatMap { $0.lastEventAgeMillis >= 0 ? .number(Double($0.lastEventAgeMillis)) : nil } ?? .null),
                ("eventsPerSecond", worker.state.isLive ? number(rates[worker.generation]?.perSecond ?? 0) : .null),
                ("reconnects", worker.progress.map { .number(Double($0.reconnects)) } ?? .null),
                ("handled", worker.progress.map { .number(Double($0.handled)) } ?? .null),
                ("ipcLatencyMs", role == .active ? rtt[worker.ordinal].map { number($0.milliseconds) } ?? .null : .null),
                ("restTokens", connectionIDs[worker.ordinal].map { .number(Double(tokens[$0] ?? 0)) } ?? .null),
                ("session", worker.session.map { .object([("id", .string($0.id)), ("seq", .number(Double($0.seq)))]) } ?? .null),
            ]
            if let failure = worker.failure { fields.append(("failure", .string(failure))) }
            if role != .active { fields.append(("layout", .string(role.rawValue))) }
            return .object(fields)
            }
        }
        let active = all.filter { $0.0 == activeID }.flatMap { entries($0.0, $0.2, role: .active) }
        let others = all.filter { $0.0 != activeID }.flatMap { entries($0.0, $0.2, role: $0.1) }
        let supervisor: JSONValue = .object([
            ("pid", .number(Double(getpid()))),
            ("uptimeSeconds", number((now - startedAt).seconds)),
            ("shards", .number(Double(shardCount))),
            ("socket", .string(setup.config.supervisor.socket)),
        ])
        let identifyJSON: JSONValue = .object([
            ("maxConcurrency", .number(Double(identify.maxConcurrency))),
            ("remainingToday", .number(Double(identify.remaining))),
            ("granted", .number(Double(identify.granted))),
            ("waiting", .number(Double(identify.waiting))),
        ])
        let budgetSnapshot = budget.snapshot
        let budgetJSON: JSONValue = .object([
            ("rate", .number(setup.config.rateBudget.globalRate)),
            ("granted", .number(Double(budgetSnapshot.granted))),
            ("waiting", .number(Double(budgetSnapshot.waiting))),
        ])
        let exactlyOnce: JSONValue = .object([("remembered", .number(Double(claims.remembered)))])
        let unresponsive: JSONValue = .array(missing.map { .number(Double($0)) })
        return .object([
            ("supervisor", supervisor),
            ("identify", identifyJSON),
            ("rateBudget", budgetJSON),
            ("exactlyOnce", exactlyOnce),
            ("workers", .array(active)),
            ("otherLayouts", .array(others)),
            ("unresponsive", unresponsive),
        ])
    }
}
