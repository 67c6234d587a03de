import ClusterCore
import ClusterIPC
import ClusterProtocol
import Synchronization

/// The identify ledger served over IPC: requests are answered on the event loop that received them when a slot
/// is free, or by the ledger's own clock when one comes free.
final class IdentifyLedgerService: Sendable {
    struct Request {
        var connection: IPCConnection
        var correlation: UInt64
        var shard: Int32
    }

    struct State {
        var ledger: IdentifyLedger
        var requests: [IdentifyLedger.RequestID: Request] = [:]
        var nextID: IdentifyLedger.RequestID = 0
    }

    let state: Mutex<State>
    let wakeup = Wakeup()

    init(ledger: IdentifyLedger) {
        state = Mutex(State(ledger: ledger))
    }

    var snapshot: (remaining: Int, waiting: Int, granted: Int, maxConcurrency: Int) {
        state.withLock { ($0.ledger.remaining, $0.ledger.waiting, $0.ledger.granted, $0.ledger.configuration.maxConcurrency) }
    }

    /// When the last of `pending` identifies (by bucket) can leave.
    func estimatedFinish(pending: [Int: Int], now: MonotonicInstant) -> MonotonicInstant {
        state.withLock { $0.ledger.estimatedFinish(pending: pending, now: now) }
    }

    /// Takes the platform's count of session starts left today.
    func updateRemaining(_ remaining: Int) {
        state.withLock { $0.ledger.updateRemaining(remaining) }
    }

    func request(from connection: IPCConnection, correlation: UInt64, shard: Int32) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            state.nextID += 1
            state.requests[state.nextID] = Request(connection: connection, correlation: correlation, shard: shard)
            return state.ledger.request(state.nextID, shard: Int(shard), now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker on `connection` sent its Identify for `shard` now.
    func sent(from connection: IPCConnection, shard: Int32) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            guard let id = state.requests.first(where: { $0.value.connection == connection && $0.value.shard == shard })?.key else { return [] }
            state.requests[id] = nil
            return state.ledger.sent(id, now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker withdrew one request.
    func cancel(from connection: IPCConnection, correlation: UInt64) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            guard let id = state.requests.first(where: { $0.value.connection == connection && $0.value.correlation == correlation })?.key else { return [] }
            state.requests[id] = nil
            return state.ledger.cancel(id, now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker is gone: its queued requests leave, a grant it held counts as used now.
    func connectionClosed(_ connection: IPCConnection) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            var decisions: [IdentifyLedger.Decision] = []
            for (id, request) in state.requests where request.connection == connection {
                state.requests[id] = nil
                decisions += state.ledger.cancel(id, now: .now())
            }
            return decisions
        }
        deliver(decisions)
        wakeup.poke()
    }

    func deliver(_ decisions: [IdentifyLedger.Decision]) {
        let replies = state.withLock { state -> [(IPCConnection, IPCMessage)] in
            decisions.compactMap { decision in
                switch decision {
                case .granted(let id):
                    // Granted requests stay until the worker reports its Identify left (`sent`).
                    return state.requests[id].map { ($0.connection, .identifyGrant(id: $0.correlation)) }
                case .denied(let id, let reason):
                    return state.requests.removeValue(forKey: id).map { ($0.connection, .identifyDenied(id: $0.correlation, reason: reason)) }
                }
            }
        }
        for (connection, message) in replies { connection.send(message) }
    }

    /// Runs the ledger's clock for the life of the supervisor.
    func run() async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.ledger.nextDeadline }
            await wakeup.wait(until: deadline)
            if Task.isCancelled { return }
            deliver(state.withLock { $0.ledger.tick(now: .now()) })
        }
    }
}
