import ClusterCore
import NIOCore

/// Websocket connections: their outboxes, closes, heartbeats, and the sweep of the silent ones.
extension EmulatorCore {
    mutating func openConnection(now: Int64) -> Int {
        let id = nextConnectionID
        nextConnectionID += 1
        connections[id] = EmulatorConnection(id: id, lastHeartbeat: now)
        return id
    }

    /// The most bytes a connection's outbox holds: a client that stops reading is closed (4009, resumable, as the
    /// platform closes a slow consumer) instead of growing the emulator's memory without end. Far above a burst
    /// that a reading client drains (20,000 messages are about 14 MB).
    static let maxOutboxBytes = 64 << 20

    /// Queues a frame on a connection; returns the connection when its writer must wake.
    @discardableResult
    mutating func enqueue(_ frame: ByteBuffer, on connectionID: Int, now: Int64) -> Int? {
        guard let connection = connections[connectionID], connection.close == nil else { return nil }
        if connection.outboxBytes + frame.readableBytes > Self.maxOutboxBytes {
            stats.slowConsumersClosed += 1
            connection.outbox = []
            connection.outboxBytes = 0
            return requestClose(connectionID, .code(4009, "client too slow: \(Self.maxOutboxBytes >> 20) MiB unread"), now: now)
        }
        let wake = connection.outbox.isEmpty && connection.waiter != nil
        connection.outbox.append(frame)
        connection.outboxBytes += frame.readableBytes
        return wake ? connectionID : nil
    }

    /// Asks a connection to close; returns it when its writer must wake.
    @discardableResult
    mutating func requestClose(_ connectionID: Int, _ request: CloseRequest, now: Int64) -> Int? {
        guard let connection = connections[connectionID], connection.close == nil else { return nil }
        connection.close = request
        detach(connectionID, now: now)
        return connection.waiter != nil ? connectionID : nil
    }

    /// Takes the next batch for a connection's writer, or stores its continuation until there is one.
    mutating func takeBatch(_ connectionID: Int, waiter: CheckedContinuation<OutboxBatch, Never>) -> OutboxBatch? {
        guard let connection = connections[connectionID] else { return OutboxBatch(frames: [], close: .drop) }
        if connection.outbox.isEmpty && connection.close == nil {
            connection.waiter = waiter
            return nil
        }
        let batch = OutboxBatch(frames: connection.outbox, close: connection.close)
        connection.outbox = []
        connection.outboxBytes = 0
        connection.waiter = nil
        return batch
    }

    /// Removes the waiter of a connection so it can be resumed with the pending batch.
    mutating func claimWaiter(_ connectionID: Int) -> (CheckedContinuation<OutboxBatch, Never>, OutboxBatch)? {
        guard let connection = connections[connectionID], let waiter = connection.waiter else { return nil }
        let batch = OutboxBatch(frames: connection.outbox, close: connection.close)
        connection.outbox = []
        connection.outboxBytes = 0
        connection.waiter = nil
        return (waiter, batch)
    }

    /// The socket of a connection is gone.
    mutating func connectionClosed(_ connectionID: Int, now: Int64) {
        detach(connectionID, now: now)
        connections[connectionID] = nil
    }

    /// Separates a connection from its session, which stays resumable for its time to live.
    mutating func detach(_ connectionID: Int, now: Int64) {
        guard let connection = connections[connectionID], let sessionID = connection.session else { return }
        connection.session = nil
        guard let session = sessions[sessionID], session.connection == connectionID else { return }
        session.connection = nil
        session.disconnectedAt = now
    }

    mutating func heartbeat(_ connectionID: Int, now: Int64) -> Bool {
        guard let connection = connections[connectionID] else { return false }
        connection.lastHeartbeat = now
        return !connection.acksStopped
    }

    /// Closes connections that stopped heartbeating and expires sessions past their time to live.
    mutating func sweep(now: Int64) -> [Int] {
        var wake: [Int] = []
        let timeout = config.heartbeatTimeout.nanoseconds
        for (id, connection) in connections where connection.close == nil && now - connection.lastHeartbeat > timeout {
            if let w = requestClose(id, .code(4009, "heartbeat timeout"), now: now) { wake.append(w) }
        }
        let ttl = config.sessionTTL.nanoseconds
        for sessionID in sessionOrder {
            if let session = sessions[sessionID], session.connection == nil, let since = session.disconnectedAt, now - since > ttl {
                invalidate(sessionID, reason: "not resumed within the session TTL", now: now)
            }
        }
        return wake
    }
}
