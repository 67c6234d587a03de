import AsyncHTTPClient
import ClusterCore
import Foundation
import GatewayEmulator
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization
import Testing

/// Runs an emulator on a free port for the duration of `body`.
func withEmulator<T: Sendable>(
    _ overrides: String = "{}",
    _ body: @Sendable (GatewayEmulator, String) async throws -> T
) async throws -> T {
    let config = try ClusterConfig.parse(#"{"emulator": \#(overrides)}"#)
    var logger = Logger(label: "emulator-test")
    // Tests end the server by cancellation, which the HTTP server reports at error level: keep the output quiet.
    logger.logLevel = .critical
    let emulator = GatewayEmulator(config: config.emulator, app: config.app, logger: logger)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await emulator.run()
            return nil
        }
        let base = try await emulator.baseURL()
        let result = try await body(emulator, base)
        group.cancelAll()
        return result
    }
}

/// A plain TCP connection to the emulator on loopback (a blocking socket).
func tcpConnect(port: UInt16) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard fd >= 0, result == 0 else {
        if fd >= 0 { close(fd) }
        throw TCPConnectError(errno: errno)
    }
    return fd
}

struct TCPConnectError: Error {
    var errno: Int32
}

/// A plain HTTP exchange with the emulator.
struct HTTPReply: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: String
    var json: JSONValue? { try? JSONValue.parse(body) }
    func header(_ name: String) -> String? { headers[name].first }
}

/// The HTTP methods the tests use.
enum Verb { case GET, POST }

/// The admin token the tests' emulators are configured with (`emulator.adminToken`).
let testAdminToken = "test-admin-token"

func http(_ verb: Verb, _ url: String, token: String? = nil, admin: String? = nil, body: String? = nil) async throws -> HTTPReply {
    var request = HTTPClientRequest(url: url)
    request.method = verb == .GET ? .GET : .POST
    if let token { request.headers.add(name: "Authorization", value: "QQBot \(token)") }
    if let admin { request.headers.add(name: "Authorization", value: "Bearer \(admin)") }
    if let body {
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
    }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    return HTTPReply(status: Int(response.status.code), headers: response.headers, body: String(buffer: bytes))
}

func accessToken(_ base: String) async throws -> String {
    let reply = try await http(.POST, base + "/app/getAppAccessToken", body: #"{"appId":"\#(AppConfig.emulatorDefaultID)","clientSecret":"\#(AppConfig.emulatorDefaultSecret)"}"#)
    return try #require(reply.json?["access_token"]?.stringValue)
}

func stats(_ base: String) async throws -> JSONValue {
    try #require(try await http(.GET, base + "/emulator/stats").json)
}

/// A minimal websocket client for the gateway, independent of botcluster's own gateway client: frames in as
/// parsed JSON, text out, and the close code the server sent.
final class RawGatewayClient: Sendable {
    let frames: AsyncStream<JSONValue>
    private let framesContinuation: AsyncStream<JSONValue>.Continuation
    private let outgoing: AsyncStream<String>.Continuation
    private let outgoingStream: AsyncStream<String>
    /// The close code the server sent (nil when it dropped the socket without one).
    let closed = AsyncSignal<UInt16?>()
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(url: String) {
        (frames, framesContinuation) = AsyncStream.makeStream()
        (outgoingStream, outgoing) = AsyncStream.makeStream()
        let framesContinuation = framesContinuation
        let outgoingStream = outgoingStream
        let closed = closed
        var logger = Logger(label: "raw-gateway-client")
        logger.logLevel = .critical
        let task = Task {
            do {
                let socket = try await Self.connect(url: url)
                let code = Mutex<UInt16?>(nil)
                try await socket.executeThenClose { inbound, outbound in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for await text in outgoingStream {
                                try await outbound.write(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
                            }
                        }
                        reading: for try await frame in inbound {
                            switch frame.opcode {
                            case .text:
                                if let value = try? JSONValue.parse(String(buffer: frame.unmaskedData)) { framesContinuation.yield(value) }
                            case .connectionClose:
                                var data = frame.unmaskedData
                                code.withLock { $0 = data.readInteger(as: UInt16.self) }
                                break reading
                            default:
                                break
                            }
                        }
                        group.cancelAll()
                    }
                }
                closed.set(code.withLock { $0 })
            } catch {
                closed.set(nil)
            }
            framesContinuation.finish()
        }
        self.task.withLock { $0 = task }
    }

    /// A websocket on NIO's own pieces (not the gateway client's: the two must stay independent). Bytes that come
    /// in the same read as the 101 — the Hello, often — are kept (NIO's default drops them).
    static func connect(url: String) async throws -> NIOAsyncChannel<WebSocketFrame, WebSocketFrame> {
        let rest = url.dropFirst("ws://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = String(rest.dropFirst(authority.count))
        let host = String(authority.split(separator: ":")[0])
        let port = Int(authority.split(separator: ":")[1])!
        let upgraded = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                let upgrader = NIOTypedWebSocketClientUpgrader<NIOAsyncChannel<WebSocketFrame, WebSocketFrame>>(maxFrameSize: 1 << 22) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: 1 << 22))
                        return try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(wrappingChannelSynchronously: channel)
                    }
                }
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: String(authority))
                headers.add(name: "Content-Length", value: "0")
                let upgrade = NIOTypedHTTPClientUpgradeConfiguration(
                    upgradeRequestHead: HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers), upgraders: [upgrader],
                    notUpgradingCompletionHandler: { $0.eventLoop.makeFailedFuture(ChannelError.inappropriateOperationForState) }
                )
                var configuration = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: upgrade)
                configuration.leftOverBytesStrategy = .forwardBytes
                return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: configuration)
            }
        }
        return try await upgraded.get()
    }

    func send(_ text: String) { outgoing.yield(text) }

    /// Ends the connection from the client side, abruptly.
    func drop() {
        outgoing.finish()
        task.withLock { $0?.cancel() }
    }

    func heartbeat(_ seq: Int?) { send(#"{"op":1,"d":\#(seq.map(String.init) ?? "null")}"#) }

    func identify(token: String, shard: ShardID = ShardID(0, of: 1), intents: Int = 1 << 30) {
        send(#"{"op":2,"d":{"token":"QQBot \#(token)","intents":\#(intents),"shard":[\#(shard.id),\#(shard.total)],"properties":{}}}"#)
    }

    func resume(token: String, session: String, seq: Int) {
        send(#"{"op":6,"d":{"token":"\#(token)","session_id":"\#(session)","seq":\#(seq)}}"#)
    }

    deinit { outgoing.finish() }
}

extension AsyncStream<JSONValue>.Iterator {
    /// The next frame that satisfies `predicate`, skipping others; nil when the stream ends.
    mutating func next(where predicate: (JSONValue) -> Bool) async -> JSONValue? {
        while let frame = await next() {
            if predicate(frame) { return frame }
        }
        return nil
    }

    mutating func nextDispatch(_ event: String) async -> JSONValue? {
        await next(where: { $0["op"]?.intValue == 0 && $0["t"]?.stringValue == event })
    }
}

/// Connects, reads Hello, identifies and waits for READY; returns the client, its iterator and the session id.
func readySession(
    _ base: String, token: String, shard: ShardID = ShardID(0, of: 1), intents: Int = 1 << 30
) async throws -> (RawGatewayClient, AsyncStream<JSONValue>.Iterator, String) {
    let url = base.replacingOccurrences(of: "http://", with: "ws://") + "/websocket"
    let client = RawGatewayClient(url: url)
    var frames = client.frames.makeAsyncIterator()
    let hello = try #require(await frames.next())
    #expect(hello["op"]?.intValue == 10)
    client.identify(token: token, shard: shard, intents: intents)
    let ready = try #require(await frames.nextDispatch("READY"))
    let session = try #require(ready["d"]?["session_id"]?.stringValue)
    return (client, frames, session)
}

func gatewayURL(_ base: String) -> String {
    base.replacingOccurrences(of: "http://", with: "ws://") + "/websocket"
}
