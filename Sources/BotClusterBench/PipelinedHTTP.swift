import BenchSupport
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Sends prepared HTTP/1.1 requests over one keep-alive connection with up to `window` in flight, counting the
/// answers by status, all on the event loop.
final class PipelinedHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    var requests: [(head: HTTPRequestHead, body: ByteBuffer)]
    var next = 0
    var answered = 0
    let window: Int
    var statuses: [UInt: Int] = [:]
    var status: UInt = 0
    let done: EventLoopPromise<[UInt: Int]>

    init(requests: [(head: HTTPRequestHead, body: ByteBuffer)], window: Int, done: EventLoopPromise<[UInt: Int]>) {
        self.requests = requests
        self.window = window
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        sendMore(context)
        if requests.isEmpty { done.succeed([:]) }
    }

    func sendMore(_ context: ChannelHandlerContext) {
        var wrote = false
        while next < requests.count && next - answered < window {
            let request = requests[next]
            next += 1
            context.write(wrapOutboundOut(.head(request.head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(request.body))), promise: nil)
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status.code
        case .body:
            break
        case .end:
            statuses[status, default: 0] += 1
            answered += 1
            if answered == requests.count {
                done.succeed(statuses)
            } else {
                sendMore(context)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.fail(BenchError("connection closed after \(answered) of \(requests.count) answers"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

enum PipelinedHTTP {
    /// Runs `requests` over one connection; returns the count of answers per status code.
    static func run(host: String, port: Int, requests: [(head: HTTPRequestHead, body: ByteBuffer)], window: Int) async throws -> [UInt: Int] {
        let group = MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        let done = loop.makePromise(of: [UInt: Int].self)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(PipelinedHTTPHandler(requests: requests, window: window, done: done))
                }
            }
            .connect(host: host, port: port).get()
        let result = try await done.futureResult.get()
        try? await channel.close()
        return result
    }
}
