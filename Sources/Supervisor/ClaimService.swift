import ClusterCore
import ClusterIPC
import ClusterProtocol
import Synchronization

/// The claim ledger served over IPC, answered on the event loop: a batch of claims gets its decisions in one
/// reply; a key another worker holds is decided later, when that worker completes or releases it.
final class ClaimService: Sendable {
    let ledger: Mutex<ClaimLedger>
    let connections = Mutex<[UInt64: IPCConnection]>([:])

    init(ledger: ClaimLedger) {
        self.ledger = Mutex(ledger)
    }

    var remembered: Int { ledger.withLock { $0.remembered } }

    func claim(_ keys: [String], by connection: IPCConnection) -> [ClaimDecision] {
        connections.withLock { $0[connection.id] = connection }
        return ledger.withLock { $0.claim(keys, by: connection.id, now: .now()) }
    }

    func complete(_ keys: [String], by connection: IPCConnection) {
        deliver(ledger.withLock { $0.complete(keys, by: connection.id, now: .now()) })
    }

    func release(_ keys: [String], by connection: IPCConnection) {
        deliver(ledger.withLock { $0.release(keys, by: connection.id) })
    }

    /// From now on the worker on `connection` starts no handler (a layout retiring after a rescale).
    func retire(_ connection: IPCConnection) {
        ledger.withLock { $0.retire(connection.id) }
    }

    func connectionClosed(_ connection: IPCConnection) {
        connections.withLock { _ = $0.removeValue(forKey: connection.id) }
        deliver(ledger.withLock { $0.requesterGone(connection.id) })
    }

    func allRemembered() -> [(key: String, at: MonotonicInstant)] {
        ledger.withLock { $0.allRemembered() }
    }

    func takeUnpersisted() -> [(key: String, at: MonotonicInstant)] {
        ledger.withLock { $0.takeUnpersisted() }
    }

    func deliver(_ resolutions: [ClaimLedger.Resolution]) {
        guard !resolutions.isEmpty else { return }
        let targets = connections.withLock { $0 }
        for resolution in resolutions {
            targets[resolution.requester]?.send(.claimResolved(key: resolution.key, decision: resolution.decision))
        }
    }
}
