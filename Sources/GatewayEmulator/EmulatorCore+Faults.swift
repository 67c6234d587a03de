import ClusterCore
import NIOCore

/// A fault the admin API asked for.
public struct EmulatorFault: Sendable, Equatable {
    /// What the fault does to the sessions it hits (the admin API names them by these raw values).
    public enum Kind: String, Sendable, CaseIterable {
        case reconnect, invalidSession, drop, stopAcks, close, refuseIdentify, allowIdentify
        /// Sends malformed frames (bad JSON, an unknown op, a dispatch without s, a wrong-typed field) to test clients.
        case badFrames
    }
    public var kind: Kind
    /// Shard id to hit; nil hits every session.
    public var shard: Int?
    /// Layout (shard total) to hit; nil hits every layout.
    public var total: Int?
    /// Close code for `close` and `refuseIdentify`.
    public var code: UInt16?

    /// A fault of `kind` for one shard or all (`shard` nil), one layout or all (`total` nil).
    public init(kind: Kind, shard: Int? = nil, total: Int? = nil, code: UInt16? = nil) {
        self.kind = kind
        self.shard = shard
        self.total = total
        self.code = code
    }
}

/// Faults the admin API injects into matching sessions.
extension EmulatorCore {
    /// Applies a fault to matching sessions; returns the connections to wake.
    mutating func apply(_ fault: EmulatorFault, now: Int64) -> [Int] {
        switch fault.kind {
        case .refuseIdentify:
            refusals.append(fault)
            return []
        case .allowIdentify:
            refusals.removeAll { ($0.shard == fault.shard || fault.shard == nil) && ($0.total == fault.total || fault.total == nil) }
            return []
        default:
            break
        }
        var wake: [Int] = []
        for sessionID in sessionOrder {
            guard let session = sessions[sessionID] else { continue }
            if let shard = fault.shard, session.shard.id != shard { continue }
            if let total = fault.total, session.shard.total != total { continue }
            guard let connection = session.connection else { continue }
            switch fault.kind {
            case .reconnect:
                if let w = enqueue(DispatchFrame.control(op: 7), on: connection, now: now) { wake.append(w) }
                if let w = requestClose(connection, .code(4009, "reconnect"), now: now) { wake.append(w) }
            case .invalidSession:
                if let w = enqueue(DispatchFrame.control(op: 9, d: "false"), on: connection, now: now) { wake.append(w) }
                invalidate(sessionID, reason: "an invalid-session fault", now: now)
                if let w = requestClose(connection, .code(4009, "invalid session"), now: now) { wake.append(w) }
            case .drop:
                if let w = requestClose(connection, .drop, now: now) { wake.append(w) }
            case .stopAcks:
                connections[connection]?.acksStopped = true
            case .badFrames:
                session.lastSeq += 1
                let wrongType = DispatchFrame.encode(seq: session.lastSeq, event: "AT_MESSAGE_CREATE", eventID: "AT_MESSAGE_CREATE:bad", payload: "{\"id\":true}")
                session.sentUpTo = session.lastSeq
                for frame in ["not json", "{\"op\":99,\"d\":null}", "{\"op\":0,\"t\":\"AT_MESSAGE_CREATE\",\"d\":{}}"] {
                    if let w = enqueue(DispatchFrame.allocator.buffer(string: frame), on: connection, now: now) { wake.append(w) }
                }
                if let w = enqueue(wrongType, on: connection, now: now) { wake.append(w) }
            case .close:
                let code = fault.code ?? 4009
                if CloseCodeClass.invalidatesSession(code) { invalidate(sessionID, reason: "a close \(code) fault", now: now) }
                if let w = requestClose(connection, .code(code, "closed by fault"), now: now) { wake.append(w) }
            case .refuseIdentify, .allowIdentify:
                break
            }
        }
        return wake
    }
}

/// Close codes by what they do to a session on the emulated platform.
enum CloseCodeClass {
    /// Codes after which the session cannot be resumed.
    static func invalidatesSession(_ code: UInt16) -> Bool {
        switch code {
        case 4008, 4009: return false
        default: return code >= 4000
        }
    }
}
