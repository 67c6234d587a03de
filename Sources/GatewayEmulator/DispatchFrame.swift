import ClusterCore
import NIOCore

/// Builds the emulator's outgoing gateway frames as bytes, without an encoder: the payload of a message is
/// encoded once and each session's frame only adds its own `s`.
enum DispatchFrame {
    static let allocator = ByteBufferAllocator()

    static func encode(seq: Int, event: String, eventID: String, payload: String) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: payload.utf8.count + event.utf8.count + eventID.utf8.count + 48)
        buffer.writeStaticString("{\"op\":0,\"s\":")
        buffer.writeString(String(seq))
        buffer.writeStaticString(",\"t\":\"")
        buffer.writeString(event)
        buffer.writeStaticString("\",\"id\":\"")
        buffer.writeString(eventID)
        buffer.writeStaticString("\",\"d\":")
        buffer.writeString(payload)
        buffer.writeStaticString("}")
        return buffer
    }

    /// A frame with only an op and optionally a raw JSON `d`.
    static func control(op: Int, d: String? = nil) -> ByteBuffer {
        var text = "{\"op\":\(op)"
        if let d { text += ",\"d\":\(d)" }
        text += "}"
        return allocator.buffer(string: text)
    }

    static func hello(heartbeatInterval: Duration) -> ByteBuffer {
        control(op: 10, d: "{\"heartbeat_interval\":\(heartbeatInterval.nanoseconds / 1_000_000)}")
    }

    static func ready(seq: Int, sessionID: String, shard: ShardID) -> ByteBuffer {
        let d = "{\"version\":1,\"session_id\":\"\(sessionID)\",\"user\":{\"id\":\"\(EmulatorCore.botUserID)\",\"username\":\"\(EmulatorCore.botUsername)\",\"bot\":true},\"shard\":[\(shard.id),\(shard.total)]}"
        return encode(seq: seq, event: "READY", eventID: "READY:" + sessionID, payload: d)
    }

    static func resumed(seq: Int) -> ByteBuffer {
        allocator.buffer(string: "{\"op\":0,\"s\":\(seq),\"t\":\"RESUMED\",\"d\":\"\"}")
    }
}
