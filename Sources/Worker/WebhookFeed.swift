import ClusterCore
import ClusterProtocol
import QQGateway
import Synchronization

/// A webhook-mode shard's event source: the stream of its shard's events that the supervisor's ingress keeps,
/// delivered over IPC. It replaces the websocket session: there is nothing to identify or resume with the
/// platform. A new worker attaches, the supervisor answers where the stream stands (`webhookStart`: the seq up to
/// which every event was handled) and replays what follows, then sends each new event as it is acknowledged.
///
/// The committed seq a worker reports is what the supervisor trims the stream by, so a worker that dies loses
/// nothing: its successor gets every event after it again, and the cluster's claims keep each handled once.
/// What waits here is bounded by the supervisor's `webhook.queueLimit` (it sends only what its stream holds).
public final class WebhookFeed: EventSource {
    enum Item: Sendable {
        case start(streamID: String, seq: Int, fresh: Bool)
        case dispatch(GatewayDispatch)
    }

    struct State {
        var streamID: String?
        /// The seq of the last event received from the supervisor (what a fence must see handled).
        var lastReceived: Int?
    }

    let attach: @Sendable () -> Void
    let items: AsyncStream<Item>
    let continuation: AsyncStream<Item>.Continuation
    let state = Mutex(State())

    /// A feed that asks for its stream with `attach` (the worker sends `webhookAttach`) when it starts to run.
    public init(attach: @escaping @Sendable () -> Void) {
        self.attach = attach
        (items, continuation) = AsyncStream.makeStream()
    }

    /// Takes the supervisor's messages of the stream (`webhookStart`, `webhookDispatch`); ignores any other.
    public func deliver(_ message: IPCMessage) {
        switch message {
        case .webhookStart(let streamID, let seq, let fresh):
            state.withLock { $0.streamID = streamID; $0.lastReceived = Int(seq) }
            continuation.yield(.start(streamID: streamID, seq: Int(max(0, seq)), fresh: fresh))
        case .webhookDispatch(let seq, let eventID, let name, let body):
            // The request body as the platform sent it (the ingress parsed it before it acknowledged it); one that
            // does not parse here is skipped as an undecodable event would be (its seq still counts).
            let value = (try? JSONValue.parse(body))?["d"] ?? .null
            state.withLock { $0.lastReceived = Int(seq) }
            continuation.yield(.dispatch(GatewayDispatch(seq: Int(seq), name: name, eventID: eventID, payload: value, receivedAt: .now())))
        default:
            break
        }
    }

    /// Attaches, then delivers the stream's start (READY for a new stream, RESUMED at its committed seq for a
    /// successor) and its events in order, until stopped.
    public func run(onEvent: @escaping @Sendable (GatewayClientEvent) async -> Void) async -> GatewayClientOutcome {
        attach()
        for await item in items {
            switch item {
            case .start(let streamID, let seq, let fresh):
                await onEvent(fresh ? .ready(sessionID: streamID, shard: nil) : .resumed(sessionID: streamID, seq: seq))
            case .dispatch(let dispatch):
                await onEvent(.dispatch(dispatch))
            }
        }
        // Where a successor resumes is the runtime's committed seq, not what was received: no seq is claimed here.
        return .stopped(sessionID: state.withLock { $0.streamID }, seq: nil)
    }

    /// The stream and the seq of the last event the supervisor sent before this call: the supervisor moves new
    /// events to the new layout before it asks a retiring worker to fence, so nothing of this stream comes after.
    public func fence() async -> (sessionID: String?, seq: Int?) {
        state.withLock { ($0.streamID, $0.lastReceived) }
    }

    /// Stops delivering: events not yet handed on stay uncommitted, and the successor gets them again.
    public func stop() {
        continuation.finish()
    }
}
