import ClusterCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import QQGateway
import Synchronization
import Testing

/// A server on loopback that answers every HTTP request with the raw bytes a test chooses (a status line, headers
/// and body of any shape, or garbage), then closes the connection.
final class RawHTTPServer: Sendable {
    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let answer: @Sendable (String) -> [UInt8]
        var received = ByteBuffer()

        init(answer: @escaping @Sendable (String) -> [UInt8]) { self.answer = answer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received.writeBuffer(&buffer)
            let text = String(buffer: received)
            guard let end = text.range(of: "\r\n\r\n") else { return }
            let head = String(text[..<end.lowerBound])
            let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            guard text.utf8.count - (text.distance(from: text.startIndex, to: end.upperBound)) >= length else { return }
            let bytes = answer(head)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    let channel: any Channel
    var url: String { "http://127.0.0.1:\(channel.localAddress!.port!)" }

    init(answer: @escaping @Sendable (String) -> [UInt8]) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(answer: answer)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async { try? await channel.close() }
}

/// A budget that lets every request go and records what 429s asked for.
final class RecordingBudget: RequestBudget {
    let pauses = Mutex<[Duration]>([])
    func acquire(route: String) async throws {
        // The second attempt of a rate-limited request ends the call: what matters is the pause it asked for.
        if !pauses.withLock({ $0.isEmpty }) { throw CancellationError() }
    }
    func rateLimited(route: String, retryAfter: Duration) { pauses.withLock { $0.append(retryAfter) } }
}

@Suite("a hostile or broken platform", .timeLimit(.minutes(2)))
struct HostilePlatformTests {
    static let tokenAnswer = response("200 OK", headers: ["Content-Type: application/json"], body: #"{"access_token":"t0k3n","expires_in":"7200"}"#)

    static func response(_ status: String, headers: [String] = [], body: String) -> [UInt8] {
        let bytes = Array(body.utf8)
        return Array(("HTTP/1.1 \(status)\r\n" + (headers + ["Content-Length: \(bytes.count)", "Connection: close"]).map { $0 + "\r\n" }.joined() + "\r\n").utf8) + bytes
    }

    /// Sends one OpenAPI call to a server answering `answer` (the token endpoint answers a token); the call's error.
    func call(_ answer: @escaping @Sendable (String) -> [UInt8], budget: RecordingBudget = RecordingBudget(), _ body: (OpenAPIClient) async throws -> Void) async throws -> (any Error)? {
        let server = try await RawHTTPServer { head in head.contains("getAppAccessToken") ? HostilePlatformTests.tokenAnswer : answer(head) }
        var logger = Logger(label: "hostile")
        logger.logLevel = .critical
        let config: ClusterConfig
        let clients: PlatformClients
        do {
            config = try ClusterConfig.parse(#"{"gateway": {"embedded": false, "url": "\#(server.url)", "tokenURL": "\#(server.url)/app/getAppAccessToken"}, "app": {"id": "1", "secret": "s"}}"#)
            clients = try PlatformClients(config: config, endpoints: GatewayEndpoints(apiBase: server.url, tokenURL: server.url + "/app/getAppAccessToken"), budget: budget, logger: logger, maxConnections: 2)
        } catch {
            await server.close()
            throw error
        }
        var caught: (any Error)?
        do {
            try await body(clients.api)
        } catch {
            caught = error
        }
        await clients.shutdown()
        await server.close()
        return caught
    }

    @Test(arguments: ["1e300", "1e11", "-5", "nan", "inf", "abc", "99999999999999999999999", "Sun, 06 Nov 2994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", ""])
    func anyRetryAfterPausesWithinTheBounds(header: String) async throws {
        let budget = RecordingBudget()
        let answer = Self.response("429 Too Many Requests", headers: ["Retry-After: \(header)", "Content-Type: application/json"], body: #"{"code":22009,"message":"slow down"}"#)
        _ = try await call({ _ in answer }, budget: budget) { api in _ = try await api.me() }
        let pauses = budget.pauses.withLock { $0 }
        #expect(pauses.count == 1)
        #expect(pauses.allSatisfy { $0 >= .milliseconds(50) && $0 <= OpenAPIClient.maxRetryAfter }, "\(header) -> \(pauses)")
    }

    @Test func retryAfterReadsSecondsAndDates() {
        let now: Int64 = 784_111_777_000  // Sun, 06 Nov 1994 08:49:37 GMT
        #expect(OpenAPIClient.retryAfter("3", now: now) == .seconds(3))
        #expect(OpenAPIClient.retryAfter("0.5", now: now) == .milliseconds(500))
        #expect(OpenAPIClient.retryAfter("Sun, 06 Nov 1994 08:49:47 GMT", now: now) == .seconds(10))
        #expect(OpenAPIClient.retryAfter("Sun, 06 Nov 1994 08:40:00 GMT", now: now) == .milliseconds(50))
        #expect(OpenAPIClient.retryAfter(nil, now: now) == .seconds(1))
        #expect(OpenAPIClient.retryAfter("1e300", now: now) == OpenAPIClient.maxRetryAfter)
    }

    /// Answers no platform should give, each met with an error that says what came — never a trap.
    @Test func malformedAnswersAreClearErrors() async throws {
        let cases: [(String, [UInt8], String)] = [
            ("not JSON", Self.response("200 OK", body: "<html>oops</html>"), "not JSON"),
            ("JSON without the fields", Self.response("200 OK", body: #"{"url": 5}"#), "unreadable reply"),
            ("absurd numbers", Self.response("200 OK", body: #"{"url":"wss://x/websocket","shards":1e20,"session_start_limit":{"total":-1,"remaining":1e19,"reset_after":1e18,"max_concurrency":-7}}"#), "unreadable reply"),
            ("a gateway URL that is no websocket", Self.response("200 OK", body: #"{"url":"ftp://x","shards":1,"session_start_limit":{"total":1,"remaining":1,"reset_after":1,"max_concurrency":1}}"#), "not a ws://"),
            ("a redirect", Self.response("302 Found", headers: ["Location: https://elsewhere.example/"], body: ""), "redirects are not followed"),
            ("a status from nowhere", Self.response("599 Whatever", body: #"{"code":1,"message":"x"}"#), "HTTP 599"),
            ("a body over the limit", Self.response("200 OK", body: "[" + String(repeating: "1,", count: 600_000) + "1]"), "larger than"),
            ("nesting without end", Self.response("200 OK", body: String(repeating: "[", count: 100_000)), "not JSON"),
            ("garbage instead of HTTP", Array("\u{0}\u{1}GARBAGE\r\n\r\n".utf8), "GET"),
        ]
        for (what, answer, expected) in cases {
            let error = try await call({ _ in answer }) { api in _ = try await api.gatewayBot() }
            #expect(error != nil, "\(what): no error")
            #expect("\(error.map { "\($0)" } ?? "")".contains(expected), "\(what): \(error.map { "\($0)" } ?? "none")")
        }
        // Numbers beyond reason in an otherwise readable answer are held to what the platform can mean.
        let wild = Self.response("200 OK", body: #"{"url":"wss://x/websocket","shards":3,"session_start_limit":{"total":-1,"remaining":99999999999,"reset_after":-5,"max_concurrency":100000}}"#)
        _ = try await call({ _ in wild }) { api in
            let info = try await api.gatewayBot()
            #expect(info.total == 0)
            #expect(info.remaining == Int(Int32.max))
            #expect(info.resetAfter == .zero)
            #expect(info.maxConcurrency == OpenAPIClient.maxConcurrencyLimit)
        }
    }

    /// Random bytes after a random status line: every call ends in a thrown error or a value, none in a trap.
    @Test func randomAnswersNeverTrap() async throws {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<60 {
            let status = ["200 OK", "429 Too Many Requests", "401 Unauthorized", "500 Internal", "204 No Content"][Int(rng.next() % 5)]
            let headers = ["Retry-After: \(Double(bitPattern: rng.next()))", "X-Tps-trace-ID: " + String(repeating: "t", count: Int(rng.next() % 4000))]
            let body = String(decoding: (0..<Int(rng.next() % 300)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, as: UTF8.self)
            let answer = Self.response(status, headers: headers, body: body)
            _ = try await call({ _ in answer }) { api in
                _ = try await api.sendChannelMessage(channelID: "1", OutgoingMessage(content: "hi", msgID: "m"))
            }
        }
    }
}
