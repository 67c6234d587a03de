import ClusterCore
import ClusterIPC
import Foundation
import Synchronization

/// The control commands the supervisor answers over its socket.
public enum ControlCommand {
    public static let status = "status"
    public static let restart = "restart"
    public static let stop = "stop"
}

extension ClusterSupervisor {
    func handleControl(_ message: IPCMessage, on connection: IPCConnection) {
        guard case .controlRequest(let id, let command, let argument) = message else {
            if case .ping(let id) = message { connection.send(.pong(id: id)) }
            return
        }
        switch command {
        case ControlCommand.status:
            controlContinuation.yield { await connection.send(.controlReply(id: id, ok: true, body: self.statusJSON().serialized())) }
        case ControlCommand.restart:
            let (ok, text) = restart(argument)
            connection.send(.controlReply(id: id, ok: ok, body: text))
        case ControlCommand.stop:
            connection.send(.controlReply(id: id, ok: true, body: "stopping \(setup.shards) workers (supervisor pid \(getpid()))"))
            dispatch(.stop)
        default:
            connection.send(.controlReply(id: id, ok: false, body: "unknown command \"\(command)\"; known: status, restart, stop"))
        }
    }

    /// `restart N` (an ordinal) or `restart shard:K`.
    func restart(_ argument: String) -> (Bool, String) {
        let count = setup.shards
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
        let targets = connections.withLock { $0 }
        var signals: [(Int, AsyncSignal<Duration>)] = []
        for (ordinal, connection) in targets {
            let id = nextPing.add(1, ordering: .relaxed).newValue
            let signal = AsyncSignal<Duration>()
            pings.withLock { $0[id] = (ordinal, .now(), signal) }
            signals.append((ordinal, signal))
            connection.send(.ping(id: id))
        }
        let answers = await withTaskGroup(of: (Int, Duration?).self) { group in
            for (ordinal, signal) in signals {
                group.addTask {
                    await withTaskGroup(of: Duration?.self) { race in
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
            var answers: [Int: Duration?] = [:]
            for await (ordinal, rtt) in group { answers[ordinal] = rtt }
            return answers
        }
        var rtt: [Int: Duration] = [:]
        var missing: [Int] = []
        for ordinal in 0..<setup.shards {
            if let answer = answers[ordinal], let value = answer { rtt[ordinal] = value } else { missing.append(ordinal) }
        }
        return (rtt, missing)
    }

    /// The cluster as `botcluster status --json` prints it.
    func statusJSON() async -> JSONValue {
        let (rtt, missing) = await pingWorkers(deadline: .milliseconds(500))
        let now = MonotonicInstant.now()
        let workers = machine.withLock { $0.workers }
        let rates = rates.withLock { $0 }
        let identify = ledger.snapshot
        func number(_ value: Double) -> JSONValue { .number((value * 10).rounded() / 10) }
        let entries: [JSONValue] = workers.map { worker in
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
                ("eventsPerSecond", worker.state.isLive ? number(rates[worker.ordinal]?.perSecond ?? 0) : .null),
                ("reconnects", worker.progress.map { .number(Double($0.reconnects)) } ?? .null),
                ("handled", worker.progress.map { .number(Double($0.handled)) } ?? .null),
                ("ipcLatencyMs", rtt[worker.ordinal].map { number($0.milliseconds) } ?? .null),
                ("session", worker.session.map { .object([("id", .string($0.id)), ("seq", .number(Double($0.seq)))]) } ?? .null),
            ]
            if let failure = worker.failure { fields.append(("failure", .string(failure))) }
            return .object(fields)
        }
        return .object([
            ("supervisor", .object([
                ("pid", .number(Double(getpid()))),
                ("uptimeSeconds", number((now - startedAt).seconds)),
                ("shards", .number(Double(setup.shards))),
                ("socket", .string(setup.config.supervisor.socket)),
            ])),
            ("identify", .object([
                ("maxConcurrency", .number(Double(identify.maxConcurrency))),
                ("remainingToday", .number(Double(identify.remaining))),
                ("granted", .number(Double(identify.granted))),
                ("waiting", .number(Double(identify.waiting))),
            ])),
            ("workers", .array(entries)),
            ("unresponsive", .array(missing.map { .number(Double($0)) })),
        ])
    }
}
