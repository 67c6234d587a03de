import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite("IPC codec")
struct IPCCodecTests {
    static let samples: [IPCMessage] = [
        .hello(Hello(role: .worker, ordinal: 3, generation: 42, pid: 1234)),
        .welcome(Assignment(shard: 3, total: 4, generation: 42, resumeSessionID: "s-1", resumeSeq: 99, apiBase: "http://x", tokenURL: "http://x/t", gatewayURL: "ws://x/websocket", holdDispatch: true)),
        .welcome(Assignment(shard: 0, total: 1, generation: 1, resumeSessionID: nil, resumeSeq: 0, apiBase: "", tokenURL: "", gatewayURL: "", holdDispatch: false)),
        .helloAck(supervisorPID: 77),
        .refused(reason: "nope ✗"),
        .heartbeat(WorkerProgress(state: .ready, heartbeatLatencyMicros: 120, lastEventAgeMillis: 5, reconnects: 2, received: 10, handled: 9, dispatchP50Micros: 40, dispatchP99Micros: 900)),
        .heartbeat(WorkerProgress(state: .connecting, heartbeatLatencyMicros: -1, received: 3, session: .init(id: "sess-1", seq: 77))),
        .ping(id: 1), .pong(id: .max),
        .metricsQuery(id: 9), .metricsAnswer(id: 9, WorkerMetrics()), .metricsAnswer(id: 10, {
            var m = WorkerMetrics()
            m.eventsByType = ["AT_MESSAGE_CREATE": 40, "READY": 1]
            m.duplicates = 3
            m.handlerErrors = 1
            m.handlerDuration.record(.milliseconds(3))
            m.heartbeatLatency.record(0.04)
            m.ipcRoundTrip.record(.microseconds(80))
            m.restRequests = [RESTOutcome(route: "POST /channels/{channel_id}/messages", status: 200): 39, RESTOutcome(route: "GET /users/@me", status: 0): 1]
            m.cacheHits = 7
            m.cacheMisses = 2
            return m
        }()),
        .identifyRequest(id: 5, shard: 2), .identifyGrant(id: 5), .identifyDenied(id: 6, reason: "spent"), .identifySent(shard: 2), .identifyCancel(id: 8),
        .sessionCommitted(sessionID: "abc", seq: 12), .sessionInvalidated,
        .gatewayState(.ready(sessionID: "a")), .gatewayState(.resumed(sessionID: "b")), .gatewayState(.disconnected(code: 4009)),
        .gatewayState(.failed(.reshardRequired, code: 4011)), .gatewayState(.failed(.banned, code: 4914)),
        .drained(sessionID: nil, seq: 0), .drained(sessionID: "z", seq: 7),
        .budgetRequest(id: 3, route: "POST /channels/{channel_id}/messages", count: 4), .budgetGrant(id: 3, count: 2, ttlMillis: 250),
        .budgetCancel(id: 3), .budgetReturn(route: "r", count: 1), .budgetRateLimited(route: "r", retryAfterMillis: 1000),
        .budgetPause(route: "r", forMillis: 500), .usersChanged(ids: ["1", "2"]), .usersInvalidate(ids: []),
        .userQuery(id: 4, userID: "42"), .userAnswer(id: 4, username: "kari"), .userAnswer(id: 5, username: nil),
        .claims(id: 6, keys: ["AT:1", "AT:2"]), .claimResults(id: 6, decisions: [.skip, .handle, .wait]), .claimResolved(key: "AT:1", decision: .handle),
        .claimsDone(keys: ["AT:1"]), .claimsReleased(keys: []), .startDispatch, .finishDispatch(fence: 7), .dispatchFinished(fence: 7),
        .webhookAttach, .webhookStart(streamID: "wh-0-3-ab", seq: 41, fresh: false), .webhookDispatch(seq: 42, eventID: "AT_MESSAGE_CREATE:1", name: "AT_MESSAGE_CREATE", payload: "{\"id\":\"1\"}"),
        .controlRequest(id: 9, command: .status), .controlRequest(id: 10, command: .restart(ordinal: 3)), .controlRequest(id: 12, command: .rollingRestart(maxUnavailable: 2)),
        .controlRequest(id: 13, command: .scale(.count(8), planOnly: true)), .controlRequest(id: 14, command: .scale(.recommended, planOnly: false)),
        .controlRequest(id: 15, command: .stop), .controlRequest(id: 16, command: .user(id: "42")), .controlProgress(id: 9, line: "1/4 ready"), .controlReply(id: 9, ok: true, body: "{}"),
    ]

    @Test(arguments: samples)
    func roundTrips(_ message: IPCMessage) throws {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        #expect(try IPCMessage.decode(&buffer) == message)
    }

    @Test func malformedFramesAreClearErrors() {
        var unknown = ByteBuffer(bytes: [200])
        #expect(throws: IPCProtocolError.self) { try IPCMessage.decode(&unknown) }
        var truncated = ByteBuffer(bytes: [MessageTypeForTests.ping, 0, 1])
        do {
            _ = try IPCMessage.decode(&truncated)
            Issue.record("decoded a truncated ping")
        } catch {
            #expect(error.description == "truncated frame: id missing")
        }
        // A decision or a failure kind outside the protocol is an error, not a guess.
        var decision = ByteBuffer(bytes: [82, 0, 0, 0, 1, 65, 9])
        #expect(throws: IPCProtocolError.self) { try IPCMessage.decode(&decision) }
        var failure = ByteBuffer(bytes: [32, 3, 9, 0, 0, 0, 0])
        #expect(throws: IPCProtocolError.self) { try IPCMessage.decode(&failure) }
        var wellFormed = ByteBuffer(bytes: [32, 3, 1, 0, 0, 0, 0])
        #expect((try? IPCMessage.decode(&wellFormed)) == .gatewayState(.failed(GatewayFailure(rawValue: 1)!, code: 0)), "the same frame with a known kind decodes")
        var trailing = ByteBuffer()
        IPCMessage.sessionInvalidated.encode(into: &trailing)
        trailing.writeInteger(UInt8(1))
        #expect(throws: IPCProtocolError.self) { try IPCMessage.decode(&trailing) }
    }
}

enum MessageTypeForTests {
    static let ping: UInt8 = 11
}

/// A server delegate that accepts everyone, answers pings on the event loop and records the rest.
final class EchoDelegate: IPCServerDelegate {
    let received = Mutex<[IPCMessage]>([])
    let closedReasons = Mutex<[String?]>([])
    /// Poked as each connection closes.
    let closedSignal = Wakeup()
    let accepted = Mutex<[Hello]>([])

    func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
        accepted.withLock { $0.append(hello) }
        if hello.ordinal == 99 { return "ordinal 99 is not part of this cluster" }
        connection.send(.helloAck(supervisorPID: getpid()))
        return nil
    }

    func received(_ message: IPCMessage, on connection: IPCConnection) {
        switch message {
        case .ping(let id): connection.send(.pong(id: id))
        case .controlRequest(let id, _):
            connection.send(.controlProgress(id: id, line: "working"))
            connection.send(.controlReply(id: id, ok: true, body: "done"))
        default: received.withLock { $0.append(message) }
        }
    }

    func closed(_ connection: IPCConnection, reason: String?) {
        closedReasons.withLock { $0.append(reason) }
        closedSignal.poke()
    }
}

func withServer(helloTimeout: Duration = .seconds(2), _ body: (String, IPCServer, EchoDelegate) async throws -> Void) async throws {
    let dir = NSTemporaryDirectory() + "ipc-" + UUID().uuidString.prefix(8)
    try RunDirectory.prepare(dir)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = dir + "/s.sock"
    let delegate = EchoDelegate()
    var configuration = IPCServer.Configuration(path: path)
    configuration.maxFrameSize = 1024
    configuration.helloTimeout = helloTimeout
    var logger = Logger(label: "ipc-test")
    logger.logLevel = .critical
    let server = IPCServer(configuration: configuration, delegate: delegate, logger: logger)
    try await server.start()
    do {
        try await body(path, server, delegate)
    } catch {
        await server.close()
        throw error
    }
    await server.close()
}

/// Writes raw bytes to the socket, as a rogue client would, and waits for the server to hang up.
func rawExchange(path: String, bytes: [UInt8]) async throws -> [UInt8] {
    let fd = try #require(RawUnixSocket.connect(path: path))
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        received += chunk[0..<n]
    }
    return received
}

@Suite("IPC server and client", .timeLimit(.minutes(1)))
struct IPCConnectionTests {
    @Test func handshakeThenRequestsAndReplies() async throws {
        try await withServer { path, _, delegate in
            let client = try await IPCClient.connect(path: path, hello: Hello(role: .control, pid: getpid()))
            var inbound = client.inbound.makeAsyncIterator()
            #expect(await inbound.next() == .helloAck(supervisorPID: getpid()))
            let pong = try await client.request(timeout: .seconds(5)) { .ping(id: $0) }
            guard case .pong = pong else { Issue.record("\(pong)"); return }
            let progress = Mutex<[String]>([])
            let reply = try await client.request(timeout: .seconds(5), progress: { message in
                if case .controlProgress(_, let line) = message { progress.withLock { $0.append(line) } }
            }) { .controlRequest(id: $0, command: .status) }
            guard case .controlReply(_, true, "done") = reply else { Issue.record("\(reply)"); return }
            #expect(progress.withLock { $0 } == ["working"])
            client.send(.sessionCommitted(sessionID: "s", seq: 3))
            client.close()
            _ = try await client.closed.wait()
            let deadline = MonotonicInstant.now() + .seconds(10)
            while delegate.closedReasons.withLock({ $0.isEmpty }), MonotonicInstant.now() < deadline { await delegate.closedSignal.wait(until: deadline) }
            #expect(!delegate.closedReasons.withLock { $0.isEmpty }, "the server saw the close")
            #expect(delegate.received.withLock { $0 } == [.sessionCommitted(sessionID: "s", seq: 3)])
        }
    }

    @Test func aRequestWithoutAReplyTimesOut() async throws {
        try await withServer { path, _, _ in
            let client = try await IPCClient.connect(path: path, hello: Hello(role: .control, pid: getpid()))
            await #expect(throws: IPCRequestError.self) {
                _ = try await client.request(timeout: .milliseconds(50)) { .identifyRequest(id: $0, shard: 0) }
            }
            client.close()
        }
    }

    @Test func theWrongVersionOrARefusedHelloIsToldWhy() async throws {
        try await withServer { path, _, _ in
            let old = try await IPCClient.connect(path: path, hello: Hello(version: 0, role: .worker, pid: getpid()))
            var inbound = old.inbound.makeAsyncIterator()
            guard case .refused(let reason) = await inbound.next() else { Issue.record("not refused"); return }
            #expect(reason.contains("IPC protocol version 0 is not this supervisor's \(ipcProtocolVersion)"))
            _ = try await old.closed.wait()

            let stranger = try await IPCClient.connect(path: path, hello: Hello(role: .worker, ordinal: 99, pid: getpid()))
            var strangerInbound = stranger.inbound.makeAsyncIterator()
            #expect(await strangerInbound.next() == .refused(reason: "ordinal 99 is not part of this cluster"))
        }
    }

    @Test func garbageAndOversizedFramesCloseOnlyTheirConnection() async throws {
        try await withServer(helloTimeout: .milliseconds(500)) { path, server, _ in
            // A length far over the limit.
            _ = try await rawExchange(path: path, bytes: [0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3])
            // A well-sized frame of garbage.
            _ = try await rawExchange(path: path, bytes: [0, 0, 0, 3, 0xEE, 0xEE, 0xEE])
            // A client that never says hello.
            _ = try await rawExchange(path: path, bytes: [])
            #expect(server.rejected.load(ordering: .relaxed) == 3)
            // The server still serves.
            let client = try await IPCClient.connect(path: path, hello: Hello(role: .control, pid: getpid()))
            let pong = try await client.request(timeout: .seconds(5)) { .ping(id: $0) }
            guard case .pong = pong else { Issue.record("\(pong)"); return }
            client.close()
        }
    }

    @Test func socketFilesAreOwnerOnlyAndPathsAreChecked() async throws {
        try await withServer { path, _, _ in
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            let dir = (path as NSString).deletingLastPathComponent
            let dirAttributes = try FileManager.default.attributesOfItem(atPath: dir)
            #expect((dirAttributes[.posixPermissions] as? Int) == 0o700)
        }
        let long = "/tmp/" + String(repeating: "x", count: 120) + "/botcluster.sock"
        #expect(throws: SocketPathError.self) { try RunDirectory.checkSocketPath(long) }
    }

    @Test func aSecondHolderOfTheLockIsRefusedWithThePid() throws {
        let path = NSTemporaryDirectory() + "lock-" + UUID().uuidString.prefix(8)
        defer { unlink(path) }
        let first = try SupervisorLock(path: path)
        _ = first
        // flock locks are per open file description: a second open in this process conflicts too.
        do {
            _ = try SupervisorLock(path: path)
            Issue.record("a second lock was granted")
        } catch {
            #expect(error.description.contains("another supervisor (pid \(getpid())) holds \(path)"))
        }
    }
}


@Suite("a forged metrics answer")
struct ForgedMetricsTests {
    @Test func tooManyLabelsFoldIntoOtherAndCountsAreClamped() throws {
        var forged = WorkerMetrics()
        for i in 0..<200 { forged.eventsByType["T\(i)"] = Int64.max }
        forged.eventsByType["BAD\r\nNAME"] = 1
        for i in 0..<100 { forged.restRequests[RESTOutcome(route: "GET /r\(i)", status: 200)] = 1 }
        var buffer = ByteBuffer()
        IPCMessage.metricsAnswer(id: 1, forged).encode(into: &buffer)
        let decoded = try IPCMessage.decode(&buffer)
        guard case .metricsAnswer(_, let metrics) = decoded else { Issue.record("decoded \(decoded)"); return }
        #expect(metrics.eventsByType.count <= WorkerMetrics.maxLabels && metrics.eventsByType.count >= WorkerMetrics.maxLabels - 1)
        #expect(metrics.eventsByType["BAD\r\nNAME"] == nil)
        #expect(metrics.eventsByType.values.allSatisfy { $0 <= WorkerMetrics.maxCount })
        #expect(metrics.restRequests.count == WorkerMetrics.maxLabels)
        #expect(metrics.restRequests[WorkerMetrics.otherREST] == 100 - Int64(WorkerMetrics.maxLabels - 1))
    }
}
