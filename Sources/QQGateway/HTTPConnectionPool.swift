import ClusterCore
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// An HTTP answer: status, headers, the whole body.
public struct HTTPAnswer: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: ByteBuffer
}

/// Why an HTTP exchange failed before an answer came.
public struct HTTPTransportError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// Whether the request surely never left (so sending it again cannot duplicate it).
    public var notSent: Bool
    public var description: String { message }
}

/// HTTP/1.1 to one origin over a few keep-alive connections, each carrying several requests in flight
/// (pipelined), with every request written and every answer matched on the connection's event loop. This is the
/// OpenAPI's hot path: a passive reply costs one write and one parse, no task hop per request.
public final class HTTPConnectionPool: Sendable {
    public struct Origin: Sendable, Hashable, CustomStringConvertible {
        public var tls: Bool
        public var host: String
        public var port: Int

        /// The origin of an `http://` or `https://` URL, and the URL's path (with query).
        public static func parse(_ url: String) -> (Origin, String)? {
            let tls: Bool
            let rest: Substring
            if url.hasPrefix("https://") { tls = true; rest = url.dropFirst(8) }
            else if url.hasPrefix("http://") { tls = false; rest = url.dropFirst(7) }
            else { return nil }
            let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<authorityEnd]
            let path = authorityEnd == rest.endIndex ? "/" : String(rest[authorityEnd...])
            var host = String(authority)
            var port = tls ? 443 : 80
            if let colon = authority.lastIndex(of: ":"), let p = Int(authority[authority.index(after: colon)...]) {
                host = String(authority[..<colon])
                port = p
            }
            guard !host.isEmpty else { return nil }
            return (Origin(tls: tls, host: host, port: port), path)
        }

        public var description: String { "\(tls ? "https" : "http")://\(host):\(port)" }
    }

    struct Connection: Sendable {
        let id: Int
        let channel: any Channel
        var inFlight: Int
    }

    struct State: Sendable {
        var connections: [Connection] = []
        var connecting = 0
        var nextID = 0
    }

    let origin: Origin
    let maxConnections: Int
    let pipelineDepth: Int
    let group: any EventLoopGroup
    let sslContext: NIOSSLContext?
    let state = Mutex(State())
    let capacity: AsyncSemaphore
    let connected = Wakeup()

    public init(origin: Origin, maxConnections: Int = 4, pipelineDepth: Int = 32, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        self.origin = origin
        self.maxConnections = maxConnections
        self.pipelineDepth = pipelineDepth
        self.group = group
        sslContext = origin.tls ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        capacity = AsyncSemaphore(permits: maxConnections * pipelineDepth)
    }

    /// Sends one request and waits for its answer (or `timeout`).
    public func execute(method: HTTPMethod, path: String, headers: HTTPHeaders, body: ByteBuffer?, timeout: Duration) async throws -> HTTPAnswer {
        try await capacity.acquire()
        defer { capacity.release() }
        let connection = try await pickConnection()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        head.headers.replaceOrAdd(name: "Host", value: origin.port == (origin.tls ? 443 : 80) ? origin.host : "\(origin.host):\(origin.port)")
        if let body { head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes)) }
        let promise = connection.channel.eventLoop.makePromise(of: HTTPAnswer.self)
        let exchange = PipelinedExchange(head: head, body: body, promise: promise, timeout: timeout)
        // A write to a connection that just closed never reaches the handler: the request did not leave.
        connection.channel.write(exchange).whenFailure { error in
            promise.fail(HTTPTransportError(message: "connection to \(self.origin) closed: \(error)", notSent: true))
        }
        defer { release(connection.id) }
        return try await promise.futureResult.get()
    }

    /// Closes every connection.
    public func shutdown() async {
        let channels = state.withLock { state -> [any Channel] in
            defer { state.connections = [] }
            return state.connections.map(\.channel)
        }
        for channel in channels { try? await channel.close() }
    }

    func release(_ id: Int) {
        state.withLock { state in
            if let index = state.connections.firstIndex(where: { $0.id == id }) { state.connections[index].inFlight -= 1 }
        }
    }

    /// The least busy open connection with room, or a new one while under the limit.
    func pickConnection() async throws -> Connection {
        while true {
            enum Choice { case use(Connection), open(Int), wait }
            let choice = state.withLock { state -> Choice in
                state.connections.removeAll { !$0.channel.isActive }
                let best = state.connections.indices.min { state.connections[$0].inFlight < state.connections[$1].inFlight }
                if let best, state.connections[best].inFlight == 0 || state.connections.count + state.connecting >= maxConnections,
                    state.connections[best].inFlight < pipelineDepth
                {
                    state.connections[best].inFlight += 1
                    return .use(state.connections[best])
                }
                if state.connections.count + state.connecting < maxConnections {
                    state.connecting += 1
                    state.nextID += 1
                    return .open(state.nextID)
                }
                return .wait
            }
            switch choice {
            case .use(let connection):
                return connection
            case .open(let id):
                do {
                    let channel = try await connect()
                    let connection = Connection(id: id, channel: channel, inFlight: 1)
                    state.withLock { state in
                        state.connecting -= 1
                        state.connections.append(connection)
                    }
                    connected.poke()
                    return connection
                } catch {
                    state.withLock { $0.connecting -= 1 }
                    connected.poke()
                    throw HTTPTransportError(message: "cannot connect to \(origin): \(error)", notSent: true)
                }
            case .wait:
                // Every connection is full and the rest are being opened: wait for one to be ready.
                await connected.wait(until: .now() + .milliseconds(50))
            }
        }
    }

    func connect() async throws -> any Channel {
        let origin = origin
        let sslContext = sslContext
        return try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: origin.host))
                    }
                    // Headers are built here from known names; validating them again on every write costs more than it saves.
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(PipelinedExchangeHandler())
                }
            }
            .connect(host: origin.host, port: origin.port).get()
    }
}

/// One request and the promise of its answer, handed to a connection's pipeline.
struct PipelinedExchange {
    var head: HTTPRequestHead
    var body: ByteBuffer?
    var promise: EventLoopPromise<HTTPAnswer>
    var timeout: Duration
}

/// Writes exchanges in order and completes their promises in the same order as the answers arrive.
final class PipelinedExchangeHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = PipelinedExchange
    typealias OutboundOut = HTTPClientRequestPart

    var pending: [(promise: EventLoopPromise<HTTPAnswer>, timeout: Scheduled<Void>?)] = []
    /// Writes from one turn of the event loop go out with one flush (one syscall), not one each.
    var flushScheduled = false
    var head = 0
    var answerHead: HTTPResponseHead?
    var answerBody: ByteBuffer?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let exchange = unwrapOutboundIn(data)
        let channel = context.channel
        let timeout = context.eventLoop.scheduleTask(in: .nanoseconds(exchange.timeout.nanoseconds)) {
            // An answer that never comes makes every later answer on this connection ambiguous: close it.
            exchange.promise.fail(HTTPTransportError(message: "no answer within \(DurationFormat.format(exchange.timeout))", notSent: false))
            channel.close(promise: nil)
        }
        pending.append((exchange.promise, timeout))
        context.write(wrapOutboundOut(.head(exchange.head)), promise: nil)
        if let body = exchange.body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.write(wrapOutboundOut(.end(nil)), promise: promise)
        if !flushScheduled {
            flushScheduled = true
            context.eventLoop.execute {
                self.flushScheduled = false
                context.flush()
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            answerHead = head
            answerBody = nil
        case .body(var part):
            if answerBody == nil { answerBody = part } else { answerBody!.writeBuffer(&part) }
        case .end:
            guard let answerHead, head < pending.count else { return }
            let entry = pending[head]
            head += 1
            if head > 64 && head * 2 > pending.count {
                pending.removeFirst(head)
                head = 0
            }
            entry.timeout?.cancel()
            entry.promise.succeed(HTTPAnswer(status: Int(answerHead.status.code), headers: answerHead.headers, body: answerBody ?? ByteBuffer()))
            self.answerHead = nil
            answerBody = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(HTTPTransportError(message: "connection closed before the answer", notSent: false))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(HTTPTransportError(message: "connection failed: \(error)", notSent: false))
        context.close(promise: nil)
    }

    func failAll(_ error: HTTPTransportError) {
        let waiting = pending[head...]
        pending = []
        head = 0
        for entry in waiting {
            entry.timeout?.cancel()
            entry.promise.fail(error)
        }
    }
}

/// The connection pools of one process, one per origin (the OpenAPI host, the token host).
public final class HTTPClientPools: Sendable {
    let pools = Mutex<[HTTPConnectionPool.Origin: HTTPConnectionPool]>([:])
    let maxConnections: Int
    let pipelineDepth: Int

    public init(maxConnections: Int = 4, pipelineDepth: Int = 32) {
        self.maxConnections = maxConnections
        self.pipelineDepth = pipelineDepth
    }

    /// Sends a request to an absolute `http(s)://` URL.
    public func execute(_ method: HTTPMethod, url: String, headers: HTTPHeaders = [:], body: ByteBuffer? = nil, timeout: Duration = .seconds(30)) async throws -> HTTPAnswer {
        guard let (origin, path) = HTTPConnectionPool.Origin.parse(url) else {
            throw HTTPTransportError(message: "not an http(s) URL: \(url)", notSent: true)
        }
        let pool = try pools.withLock { pools -> HTTPConnectionPool in
            if let pool = pools[origin] { return pool }
            let pool = try HTTPConnectionPool(origin: origin, maxConnections: maxConnections, pipelineDepth: pipelineDepth)
            pools[origin] = pool
            return pool
        }
        return try await pool.execute(method: method, path: path, headers: headers, body: body, timeout: timeout)
    }

    public func shutdown() async {
        let all = pools.withLock { pools -> [HTTPConnectionPool] in
            defer { pools = [:] }
            return Array(pools.values)
        }
        for pool in all { await pool.shutdown() }
    }
}
