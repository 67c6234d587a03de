import ClusterCore
import Foundation
import GatewayEmulator
import Testing

/// Runs blocking socket work on a thread of its own: the emulator under test runs on the cooperative pool, which a
/// blocked test task would starve.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// A websocket spoken byte by byte over a blocking socket: frames of any shape (masked or not), and a client that
/// can stop reading. Use it through `onThread`.
struct ByteWebSocket: Sendable {
    let fd: Int32

    init(base: String) throws {
        let port = UInt16(base.split(separator: ":").last!)!
        fd = try tcpConnect(port: port)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        send(Array("GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8))
        var head: [UInt8] = []
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            var byte: UInt8 = 0
            guard Glibc.read(fd, &byte, 1) == 1 else { throw TCPConnectError(errno: errno) }
            head.append(byte)
        }
    }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// A text frame, masked as a client must (RFC 6455 §5.3) unless `masked` is false.
    func sendText(_ text: String, masked: Bool = true) {
        let payload = Array(text.utf8)
        var frame: [UInt8] = [0x81]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            frame.append(maskBit | UInt8(payload.count))
        } else {
            frame.append(maskBit | 126)
            frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        if masked {
            let key: [UInt8] = [0x12, 0x34, 0x56, 0x78]
            frame += key
            frame += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        } else {
            frame += payload
        }
        send(frame)
    }

    /// Reads until `text` has come (the Hello, an ACK); what came.
    @discardableResult
    func read(until text: String) -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !String(decoding: received, as: UTF8.self).contains(text) {
            let n = Glibc.read(fd, &chunk, chunk.count)
            guard n > 0 else { break }
            received += chunk[0..<n]
        }
        return received
    }

    /// Everything the server sends until it closes the connection (or 10 s pass).
    func readUntilClosed() -> [UInt8] {
        var all: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n <= 0 { return all }
            all += chunk[0..<n]
        }
    }

    func close() { Glibc.close(fd) }
}

@Suite("emulator websocket bounds", .timeLimit(.minutes(1)))
struct WebSocketBoundsTests {
    @Test func anUnmaskedClientFrameClosesWithAProtocolError() async throws {
        try await withEmulator("{\(quiet)}") { _, base in
            let received = try await onThread {
                let socket = try ByteWebSocket(base: base)
                defer { socket.close() }
                socket.read(until: #""op":10"#)
                socket.sendText(#"{"op":1,"d":null}"#, masked: false)
                return socket.readUntilClosed()
            }
            // A close frame (0x88) carrying 1002 (0x03EA), after the Hello.
            let closeAt = try #require(received.firstIndex(of: 0x88))
            #expect(Array(received[(closeAt + 2)..<(closeAt + 4)]) == [0x03, 0xEA])
            #expect(try await stats(base)["protocolErrors"]?.intValue == 1)
        }
    }

    @Test func aMaskedFrameIsServed() async throws {
        try await withEmulator("{\(quiet)}") { _, base in
            let received = try await onThread {
                let socket = try ByteWebSocket(base: base)
                defer { socket.close() }
                socket.read(until: #""op":10"#)
                socket.sendText(#"{"op":1,"d":null}"#)
                return socket.read(until: #""op":11"#)
            }
            #expect(String(decoding: received, as: UTF8.self).contains(#""op":11"#))
            #expect(try await stats(base)["protocolErrors"]?.intValue == 0)
        }
    }

    /// A client that identifies and never reads again is closed once 64 MiB wait for it, instead of growing the
    /// emulator without end.
    @Test func aClientThatStopsReadingIsClosedAtTheOutboxBound() async throws {
        try await withEmulator("{\(quiet), \"identifyWindow\": \"0s\", \"resumeBuffer\": 1000}") { emulator, base in
            let token = try await accessToken(base)
            let socket = try await onThread {
                let socket = try ByteWebSocket(base: base)
                socket.read(until: #""op":10"#)
                socket.sendText(#"{"op":2,"d":{"token":"QQBot \#(token)","intents":1073741824,"shard":[0,1]}}"#)
                return socket
            }
            defer { socket.close() }
            while try await stats(base)["activeSessions"]?.intValue != 1 { try await Task.sleep(for: .milliseconds(5)) }
            // About 550 bytes a message: 200,000 are well over 64 MiB beyond what the socket buffers hold.
            for _ in 0..<20 { emulator.burst(count: 10_000) }
            var closed = 0
            for _ in 0..<500 where closed == 0 {
                closed = try await stats(base)["slowConsumersClosed"]?.intValue ?? 0
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(closed == 1)
            #expect(try await stats(base)["resumableSessions"]?.intValue == 1, "the session stays resumable")
        }
    }
}
