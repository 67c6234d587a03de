import ClusterCore
import ClusterIPC
import ClusterProtocol
import QQGateway
import Synchronization

/// A worker's side of the IPC link: identify permits from the supervisor's ledger, and reports of its session,
/// gateway state and progress.
public final class SupervisorLink: RuntimeObserver, IdentifyPermit {
    let client: IPCClient
    let state = Mutex<(gateway: WorkerProgress.State, watcher: Wakeup?)>((.connecting, nil))

    /// Creates the link over the worker's connection to the supervisor.
    public init(client: IPCClient) {
        self.client = client
    }

    /// The gateway state to report; a change wakes the report loop (see `watch(_:)`).
    public var gatewayState: WorkerProgress.State {
        get { state.withLock { $0.gateway } }
        set {
            let watcher = state.withLock { state -> Wakeup? in
                guard state.gateway != newValue else { return nil }
                state.gateway = newValue
                return state.watcher
            }
            watcher?.poke()
        }
    }

    /// Pokes `wakeup` whenever the gateway state changes (the report loop sleeps on it).
    public func watch(_ wakeup: Wakeup) {
        state.withLock { $0.watcher = wakeup }
    }

    // MARK: IdentifyPermit

    /// Waits (up to an hour) for the supervisor's ledger to grant `shard` an Identify; throws `IdentifyDenied` if refused.
    public func acquire(shard: ShardID) async throws {
        gatewayState = .identifying
        var requestID: UInt64 = 0
        let reply: IPCMessage
        do {
            // The ledger may queue us for many windows: the deadline is generous, cancellation is prompt.
            reply = try await client.request(timeout: .seconds(3600)) { id in
                requestID = id
                return .identifyRequest(id: id, shard: Int32(shard.id))
            }
        } catch is CancellationError {
            client.send(.identifyCancel(id: requestID))
            throw CancellationError()
        }
        switch reply {
        case .identifyGrant: return
        case .identifyDenied(_, let reason): throw IdentifyDenied(reason: reason)
        default: throw IdentifyDenied(reason: "unexpected reply \(reply.name)")
        }
    }

    /// Tells the supervisor's ledger that `shard`'s Identify left now.
    public func identifySent(shard: ShardID) {
        client.send(.identifySent(shard: Int32(shard.id)))
    }

    // MARK: RuntimeObserver

    /// Reports to the supervisor the session a successor would resume from.
    public func sessionCommitted(sessionID: String, seq: Int) {
        client.send(.sessionCommitted(sessionID: sessionID, seq: Int64(seq)))
    }

    /// Tells the supervisor the session is gone: a successor must identify.
    public func sessionInvalidated() {
        client.send(.sessionInvalidated)
    }

    /// Reports the gateway ready, or resumed, to the supervisor; progress reports say ready from now on.
    public func ready(sessionID: String, resumed: Bool) {
        gatewayState = .ready
        client.send(.gatewayState(resumed ? .resumed(sessionID: sessionID) : .ready(sessionID: sessionID)))
    }

    /// Reports the disconnect; progress reports say connecting again, unless the worker is draining.
    public func disconnected(code: UInt16?) {
        if gatewayState != .draining { gatewayState = .connecting }
        client.send(.gatewayState(.disconnected(code: Int32(code ?? 0))))
    }

    /// Reports to the supervisor that the gateway failed for good, and why.
    public func failed(_ reason: GatewaySessionStateMachine.FatalReason) {
        switch reason {
        case .configuration(let code): client.send(.gatewayState(.failed(.configuration, code: Int32(code))))
        case .reshardRequired: client.send(.gatewayState(.failed(.reshardRequired, code: 4011)))
        case .stopped(let code): client.send(.gatewayState(.failed(.banned, code: Int32(code))))
        }
    }

    /// The progress to report: the gateway state and the runtime's counters.
    public func progress(_ stats: RuntimeStats) -> WorkerProgress {
        let now = MonotonicInstant.now()
        return WorkerProgress(
            state: gatewayState,
            heartbeatLatencyMicros: stats.heartbeatLatency.map { $0.nanoseconds / 1000 } ?? -1,
            lastEventAgeMillis: stats.lastEventAt.map { (now - $0).nanoseconds / 1_000_000 } ?? -1,
            reconnects: Int32(stats.reconnects),
            received: Int64(stats.received),
            handled: Int64(stats.handled),
            dispatchP50Micros: stats.dispatchLatency.percentile(0.5).map { $0.nanoseconds / 1000 } ?? -1,
            dispatchP99Micros: stats.dispatchLatency.percentile(0.99).map { $0.nanoseconds / 1000 } ?? -1
        )
    }
}
