import ClusterCore
import ClusterIPC
import ClusterProtocol
import Synchronization

/// A worker's side of the cluster's record of handled events. Claims made while a batch is on its way are sent
/// together as the next batch (no timer: the round trip itself is the batching window). Completions and releases
/// are one-way messages written at once: the time between a reply leaving and its record reaching the supervisor
/// is one socket write.
public final class ClusterEventClaims: EventClaims {
    struct State {
        var queued: [(key: String, continuation: CheckedContinuation<Bool, Never>)] = []
        var inFlight: (id: UInt64, sentAt: MonotonicInstant, batch: [(key: String, continuation: CheckedContinuation<Bool, Never>)])?
        var waiting: [String: CheckedContinuation<Bool, Never>] = [:]
        /// Each batch's round trip to the supervisor and back (for the metrics).
        var roundTrips = MetricHistogram(bounds: MetricHistogram.Bounds.ipc)
    }

    /// The round trips of the claims batches so far.
    public var roundTrips: MetricHistogram { state.withLock { $0.roundTrips } }

    let client: IPCClient
    let state = Mutex(State())

    /// Creates the claims of a worker, over its connection to the supervisor.
    public init(client: IPCClient) {
        self.client = client
    }

    /// Whether to handle `key`, as the supervisor decides (batched; may wait for another worker); false once it is gone.
    public func claim(_ key: String) async -> Bool {
        await withCheckedContinuation { continuation in
            let send = state.withLock { state -> (UInt64, [String])? in
                state.queued.append((key, continuation))
                return nextBatch(&state)
            }
            if let (id, keys) = send { client.send(.claims(id: id, keys: keys)) }
        }
    }

    /// Moves the queued claims into flight when nothing is in flight.
    func nextBatch(_ state: inout State) -> (UInt64, [String])? {
        guard state.inFlight == nil, !state.queued.isEmpty else { return nil }
        let id = client.makeID()
        state.inFlight = (id, .now(), state.queued)
        state.queued = []
        return (id, state.inFlight!.batch.map(\.key))
    }

    /// The supervisor's decisions for the batch in flight.
    public func deliver(id: UInt64, decisions: [ClaimDecision]) {
        var resume: [(CheckedContinuation<Bool, Never>, Bool)] = []
        let send = state.withLock { state -> (UInt64, [String])? in
            guard let inFlight = state.inFlight, inFlight.id == id else { return nil }
            state.inFlight = nil
            state.roundTrips.record(.now() - inFlight.sentAt)
            for (index, entry) in inFlight.batch.enumerated() {
                switch index < decisions.count ? decisions[index] : .skip {
                case .handle: resume.append((entry.continuation, true))
                case .wait: state.waiting[entry.key] = entry.continuation
                case .skip: resume.append((entry.continuation, false))
                }
            }
            return nextBatch(&state)
        }
        if let (next, keys) = send { client.send(.claims(id: next, keys: keys)) }
        for (continuation, handle) in resume { continuation.resume(returning: handle) }
    }

    /// A key that waited for another worker was decided.
    public func resolved(key: String, decision: ClaimDecision) {
        let continuation = state.withLock { $0.waiting.removeValue(forKey: key) }
        continuation?.resume(returning: decision == .handle)
    }

    /// Tells the supervisor at once that `key` is handled.
    public func complete(_ key: String) {
        client.send(.claimsDone(keys: [key]))
    }

    /// Tells the supervisor at once that `key` was not handled to the end, so another worker may take it.
    public func release(_ key: String) {
        client.send(.claimsReleased(keys: [key]))
    }

    /// The supervisor is gone: nothing more will be decided; no handler starts.
    public func abandonAll() {
        let all = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            defer { state = State() }
            return state.queued.map(\.continuation) + (state.inFlight?.batch.map(\.continuation) ?? []) + Array(state.waiting.values)
        }
        for continuation in all { continuation.resume(returning: false) }
    }
}
