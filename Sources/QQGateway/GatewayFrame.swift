import ClusterCore

/// Gateway opcodes (section 3 of the protocol).
public enum GatewayOpcode: Int, Sendable {
    case dispatch = 0
    case heartbeat = 1
    case identify = 2
    case resume = 6
    case reconnect = 7
    case invalidSession = 9
    case hello = 10
    case heartbeatAck = 11
    case httpCallbackAck = 12
    case callbackValidation = 13
}

/// One frame from the gateway: the envelope, with `d` kept as parsed JSON.
public struct GatewayFrame: Sendable, Equatable {
    public var op: Int
    public var d: JSONValue
    public var s: Int?
    public var t: String?
    public var id: String?

    /// A frame from its envelope's fields; `d` defaults to null, the others to absent.
    public init(op: Int, d: JSONValue = .null, s: Int? = nil, t: String? = nil, id: String? = nil) {
        self.op = op
        self.d = d
        self.s = s
        self.t = t
        self.id = id
    }

    public var opcode: GatewayOpcode? { GatewayOpcode(rawValue: op) }
}

/// Why a frame from the gateway could not be used.
public struct GatewayFrameError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

extension GatewayFrame {
    /// Decodes a text frame. Anything not a JSON object with an integer `op` is an error; a dispatch must carry an
    /// integer `s` and a string `t`.
    public static func decode(_ text: String) throws(GatewayFrameError) -> GatewayFrame {
        let value: JSONValue
        do {
            value = try JSONValue.parse(text)
        } catch {
            throw GatewayFrameError(message: "invalid JSON at \(error)")
        }
        return try decode(value)
    }

    /// Decodes a frame from UTF-8 bytes, by the same rules as `decode(_:)`.
    public static func decode(bytes: [UInt8]) throws(GatewayFrameError) -> GatewayFrame {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes: bytes)
        } catch {
            throw GatewayFrameError(message: "invalid JSON at \(error)")
        }
        return try decode(value)
    }

    static func decode(_ value: JSONValue) throws(GatewayFrameError) -> GatewayFrame {
        guard case .object = value else { throw GatewayFrameError(message: "frame is \(value.kindDescription), not an object") }
        guard let op = value["op"]?.intValue else { throw GatewayFrameError(message: "frame without an integer op") }
        var s: Int?
        if let raw = value["s"], raw != .null {
            guard let seq = raw.intValue else { throw GatewayFrameError(message: "op \(op) with a non-integer s") }
            s = seq
        }
        let t = value["t"]?.stringValue
        if op == GatewayOpcode.dispatch.rawValue {
            guard s != nil else { throw GatewayFrameError(message: "dispatch \(t ?? "?") without s") }
            guard t != nil else { throw GatewayFrameError(message: "dispatch without t") }
        }
        return GatewayFrame(op: op, d: value["d"] ?? .null, s: s, t: t, id: value["id"]?.stringValue)
    }

    /// The frame as JSON text.
    public func encoded() -> String {
        var members: [(key: String, value: JSONValue)] = [("op", .number(Double(op))), ("d", d)]
        if let s { members.append(("s", .number(Double(s)))) }
        if let t { members.append(("t", .string(t))) }
        if let id { members.append(("id", .string(id))) }
        return JSONValue.object(members).serialized()
    }

    /// A Heartbeat carrying the last seq received (null before any).
    public static func heartbeat(lastSeq: Int?) -> GatewayFrame {
        GatewayFrame(op: GatewayOpcode.heartbeat.rawValue, d: lastSeq.map { .number(Double($0)) } ?? .null)
    }

    /// An Identify for a shard.
    public static func identify(token: String, intents: GatewayIntents, shard: ShardID) -> GatewayFrame {
        GatewayFrame(
            op: GatewayOpcode.identify.rawValue,
            d: .object([
                ("token", .string("QQBot " + token)),
                ("intents", .number(Double(intents.rawValue))),
                ("shard", .array([.number(Double(shard.id)), .number(Double(shard.total))])),
                ("properties", .object([("$os", .string("linux")), ("$browser", .string("botcluster")), ("$device", .string("botcluster"))])),
            ])
        )
    }

    /// A Resume of a session from a seq.
    public static func resume(token: String, sessionID: String, seq: Int) -> GatewayFrame {
        GatewayFrame(
            op: GatewayOpcode.resume.rawValue,
            d: .object([("token", .string("QQBot " + token)), ("session_id", .string(sessionID)), ("seq", .number(Double(seq)))])
        )
    }
}

/// The gateway intents, by the protocol's names (`.publicGuildMessages`, `.groupAndC2CEvent`, ...).
public typealias Intents = GatewayIntents
