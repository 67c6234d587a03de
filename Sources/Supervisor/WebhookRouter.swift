import ClusterCore
import ClusterIPC
import ClusterProtocol
import NIOCore
import Synchronization

/// The webhook ingress's side in the supervisor: `WebhookStreams` behind a lock, with the worker connections the
/// streams go to, and the journal every event is written to before it is acknowledged.
///
/// Each stream must reach its worker in seq order (a worker's committed seq may only pass an event it has seen; out
/// of order, a later event's commit would trim an earlier one not yet handled). Sends are queued on the
/// connection's event loop while the lock is held: in lock order, first in first out, and never a write (nor the
/// channel close a failed write brings, which comes back here through `detach`) inside the lock.
public final class WebhookRouter: Sendable {
    struct State {
        var streams: WebhookStreams
        var connections: [UInt64: IPCConnection] = [:]
    }

    let state: Mutex<State>
    let journal: WebhookJournal?
    /// Told the ids of events handled (their journal rows can go).
    let onHandled: @Sendable ([String]) -> Void

    /// How an offered event ended.
    public enum Outcome: Sendable, Equatable {
        /// Written down and in its shard's stream (handed to its worker, or waiting for the next one): acknowledge.
        case accepted
        /// The streams are full: ask for a retry.
        case full
        /// It could not be written down (a full disk, a locked file) or too many wait for the disk: ask for a retry.
        case notRecorded
    }

    /// A router for the layout `layout` of `total` shards, holding at most `limit` events, `streamLimit` in one
    /// stream; events are written with `record` before they are acknowledged (nil: memory only, for tests).
    public init(
        layout: Int, total: Int, limit: Int, streamLimit: Int,
        record: (@Sendable ([WebhookJournal.Event]) async throws -> Void)? = nil, onHandled: @escaping @Sendable ([String]) -> Void = { _ in }
    ) {
        var random = SystemRandomNumberGenerator()
        let instance = String(random.next() & 0xFFFF_FFFF, radix: 16)
        state = Mutex(State(streams: WebhookStreams(layout: layout, total: total, limit: limit, streamLimit: streamLimit, instance: instance)))
        journal = record.map { WebhookJournal(write: $0) }
        self.onHandled = onHandled
    }

    /// Events held, cluster-wide.
    public var queued: Int { state.withLock { $0.streams.queued } }

    /// Every event held (to write them down again when the database was made anew).
    public var held: [WebhookJournal.Event] {
        state.withLock { $0.streams.allEntries.map { WebhookJournal.Event(id: $0.eventID, name: $0.name, payload: $0.payload) } }
    }

    /// Writes an event down (unless its stream has it already or has no room), then adds it to its shard's stream
    /// and hands it to the shard's worker when one is attached. `body` is the request's body as the platform sent it.
    public func offer(route: WebhookRoute, eventID: String, name: String, body: String) async -> Outcome {
        switch state.withLock({ $0.streams.check(route: route, eventID: eventID) }) {
        case .duplicate?: return .accepted
        case .full?: return .full
        default: break
        }
        if let journal, await !journal.record(.init(id: eventID, name: name, payload: body)) { return .notRecorded }
        // Written, then no room after all (others took it meanwhile): the platform delivers it again. Its row stays
        // (a retry of it uses the same row, and one deleted later by id could be that retry's): at worst a row a
        // later start hands out again, which the claims skip if it was handled.
        return place(route: route, eventID: eventID, name: name, body: body)
    }

    /// Adds events written down by an earlier supervisor (acknowledged, never handled), without writing them again.
    public func restore(_ events: [WebhookJournal.Event]) {
        for event in events {
            let route = (try? JSONValue.parse(event.payload)).flatMap { $0["d"] }.map(WebhookRoute.of) ?? .unrouted
            _ = place(route: route, eventID: event.id, name: event.name, body: event.payload, ignoringLimits: true)
        }
    }

    func place(route: WebhookRoute, eventID: String, name: String, body: String, ignoringLimits: Bool = false) -> Outcome {
        state.withLock { state -> Outcome in
            switch state.streams.offer(route: route, eventID: eventID, name: name, payload: body, ignoringLimits: ignoringLimits) {
            case .send(let connection, let entry):
                if let target = state.connections[connection] { Self.send(entry, to: target) }
                return .accepted
            case .queued, .duplicate:
                return .accepted
            case .full:
                return .full
            }
        }
    }

    static func send(_ entry: WebhookStreams.Entry, to connection: IPCConnection) {
        send(.webhookDispatch(seq: entry.seq, eventID: entry.eventID, name: entry.name, payload: entry.payload), to: connection)
    }

    static func send(_ message: IPCMessage, to connection: IPCConnection) {
        connection.channel.eventLoop.execute { connection.send(message) }
    }

    /// A worker asks for its stream: it is told where the stream stands, gets what it holds, then every new event.
    /// A connection asks once (a second ask would replay the whole stream again): the rest are ignored.
    public func attach(layout: Int, ordinal: Int, connection: IPCConnection) {
        let key = WebhookStreams.Key(layout: layout, ordinal: ordinal)
        state.withLock { state in
            guard !state.streams.isAttached(connection.id) else { return }
            let attachment = state.streams.attach(key, connection: connection.id)
            state.connections[connection.id] = connection
            Self.send(.webhookStart(streamID: attachment.streamID, seq: attachment.mark, fresh: attachment.fresh), to: connection)
            for entry in attachment.replay { Self.send(entry, to: connection) }
        }
    }

    /// The connection closed: its stream waits for the next worker.
    public func detach(_ connection: IPCConnection) {
        state.withLock { state in
            guard state.connections.removeValue(forKey: connection.id) != nil else { return }
            state.streams.detach(connection: connection.id)
        }
    }

    /// A worker of (`layout`, `ordinal`) handled its stream up to `seq`.
    public func commit(layout: Int, ordinal: Int, streamID: String, seq: Int64) {
        let handled = state.withLock { $0.streams.commit(.init(layout: layout, ordinal: ordinal), streamID: streamID, seq: seq) }
        if !handled.isEmpty { onHandled(handled) }
    }

    /// New events go to `layout` of `total` shards from now on (a rescale's switch).
    public func serve(layout: Int, total: Int) {
        state.withLock { $0.streams.serve(layout: layout, total: total) }
    }

    /// The workers of `layout` handle nothing more (a rescale retired their claims after the fence): what its
    /// streams still hold — a fence that timed out, a worker that died while fencing — goes to the serving layout's
    /// streams, where the claims keep whatever was handled meanwhile from being handled again.
    public func retire(layout: Int) {
        state.withLock { state in
            for entry in state.streams.removeLayout(layout) {
                if case .send(let connection, let moved) = state.streams.offer(route: entry.route, eventID: entry.eventID, name: entry.name, payload: entry.payload, ignoringLimits: true),
                    let target = state.connections[connection]
                {
                    Self.send(moved, to: target)
                }
            }
        }
    }
}

/// Writes webhook events down before they are acknowledged, in batches: while one write runs, the requests that
/// come wait for the next, which takes them all in one transaction (a group commit: one commit per batch, not per
/// event). At most `maxWaiting` requests wait; past that the answer is a retry, not an unbounded queue.
public final class WebhookJournal: Sendable {
    /// An event as written down.
    public struct Event: Sendable, Equatable {
        public var id: String
        public var name: String
        /// The request's body as the platform sent it (never re-encoded: what the worker parses is what was signed).
        public var payload: String

        /// The event `id` of type `name`, whose request body was `payload`.
        public init(id: String, name: String, payload: String) {
            self.id = id
            self.name = name
            self.payload = payload
        }
    }

    struct State {
        var waiting: [(Event, CheckedContinuation<Bool, Never>)] = []
        var writing = false
    }

    let write: @Sendable ([Event]) async throws -> Void
    let state = Mutex(State())
    static let maxWaiting = 8192

    init(write: @escaping @Sendable ([Event]) async throws -> Void) {
        self.write = write
    }

    /// Whether `event` is written down.
    func record(_ event: Event) async -> Bool {
        await withCheckedContinuation { continuation in
            enum Next { case refuse, start, wait }
            let next = state.withLock { state -> Next in
                guard state.waiting.count < Self.maxWaiting else { return .refuse }
                state.waiting.append((event, continuation))
                if state.writing { return .wait }
                state.writing = true
                return .start
            }
            switch next {
            case .refuse: continuation.resume(returning: false)
            case .start: Task { await self.drain() }
            case .wait: break
            }
        }
    }

    func drain() async {
        while true {
            let batch = state.withLock { state -> [(Event, CheckedContinuation<Bool, Never>)]? in
                guard !state.waiting.isEmpty else {
                    state.writing = false
                    return nil
                }
                defer { state.waiting = [] }
                return state.waiting
            }
            guard let batch else { return }
            let written: Bool
            do {
                try await write(batch.map(\.0))
                written = true
            } catch {
                written = false
            }
            for (_, continuation) in batch { continuation.resume(returning: written) }
        }
    }
}
