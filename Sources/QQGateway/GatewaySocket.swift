import ClusterCore
import Foundation
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import NIOSOCKS
import NIOSSL
import NIOWebSocket

/// The websocket of one gateway connection, built from NIO's own pieces (the HTTP upgrade, the websocket codec
/// and frame aggregator, NIOSSL, the proxy handlers of swift-nio-extras).
///
/// Why not a websocket client library: the gateway's connect must be bounded and stoppable at every stage — TCP,
/// proxy tunnel, TLS, upgrade. WSClient awaits its upgrade without a deadline and exposes no channel before it,
/// so a gateway that accepts the TCP connection and never answers held a shard (and a SIGINT) forever. Here the
/// caller gets the channel the moment it exists (`register`) and can close it at any time, which fails whatever
/// stage is waiting.
public enum GatewaySocket {
    /// The upgraded websocket, as an async channel of frames.
    public typealias Frames = NIOAsyncChannel<WebSocketFrame, WebSocketFrame>

    /// Connects to a `ws://` or `wss://` URL (through `proxy` when given) and returns the upgraded websocket.
    public static func connect(
        url: String, tls: TLSConfiguration, proxy: ProxyRoute?, maxFrameSize: Int, timeout: Duration,
        register: @escaping @Sendable (any Channel) -> Void
    ) async throws -> Frames {
        guard let target = URLTarget(url), target.scheme == "ws" || target.scheme == "wss" else {
            throw HTTPTransportError("not a ws:// or wss:// URL: \(url)")
        }
        let sslContext = target.tls ? try NIOSSLContext(configuration: tls) : nil
        let deadline = NIODeadline.now() + .nanoseconds(timeout.nanoseconds)
        do {
            let upgraded = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.nanoseconds(timeout.nanoseconds))
                .connect(host: proxy?.host ?? target.host, port: proxy?.port ?? target.port) { channel in
                    register(channel)
                    return channel.eventLoop.makeCompletedFuture {
                        let promise = channel.eventLoop.makePromise(of: Frames.self)
                        let upgrade: @Sendable () throws -> Void = {
                            try addUpgrade(channel, target: target, sslContext: sslContext, maxFrameSize: maxFrameSize).cascade(to: promise)
                        }
                        if let proxy {
                            try addTunnel(channel, through: proxy, to: target, deadline: deadline).whenComplete { result in
                                do {
                                    try result.get()
                                    try upgrade()
                                } catch {
                                    promise.fail(error)
                                }
                            }
                        } else {
                            try upgrade()
                        }
                        return promise.futureResult
                    }
                }
            return try await upgraded.get()
        } catch {
            throw HTTPTransportError(explain(error, url: url, target: target, proxy: proxy))
        }
    }

    static func explain(_ error: any Error, url: String, target: URLTarget, proxy: ProxyRoute?) -> String {
        if let tls = PlatformTLS.explain(error, host: target.host) { return "gateway \(url): \(tls)" }
        if let error = error as? HTTPTransportError { return error.message }
        if let proxy, error is NIOHTTP1ProxyConnectHandler.Error || error is SOCKSError.InvalidProtocolVersion {
            return "gateway \(url): the proxy \(proxy) refused the tunnel: \(error)"
        }
        if let error = error as? NIOConnectionError {
            return "gateway \(url): cannot connect to \(proxy.map { "the proxy \($0)" } ?? target.origin): \(error.connectionErrors.first.map { "\($0.error)" } ?? "\(error)")"
        }
        return "gateway \(url): \(error)"
    }

    /// TLS when the URL asks for it, then the HTTP upgrade to a websocket; the frames come out whole (fragments
    /// aggregated up to `maxFrameSize`).
    static func addUpgrade(_ channel: any Channel, target: URLTarget, sslContext: NIOSSLContext?, maxFrameSize: Int) throws -> EventLoopFuture<Frames> {
        let sync = channel.pipeline.syncOperations
        if let sslContext {
            // An IP address is not a server name: it is checked against the certificate's IP entries instead.
            let isAddress = target.host.contains(":") || target.host.allSatisfy { $0.isNumber || $0 == "." }
            try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: isAddress ? nil : target.host))
        }
        let upgrader = NIOTypedWebSocketClientUpgrader<Frames>(maxFrameSize: maxFrameSize) { channel, _ in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 4096, maxAccumulatedFrameSize: maxFrameSize)
                )
                return try Frames(wrappingChannelSynchronously: channel)
            }
        }
        var headers = HTTPHeaders()
        let defaultPort = target.tls ? 443 : 80
        headers.add(name: "Host", value: target.port == defaultPort ? target.host : "\(target.host):\(target.port)")
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers)
        let origin = target.origin
        let configuration = NIOTypedHTTPClientUpgradeConfiguration<Frames>(
            upgradeRequestHead: head, upgraders: [upgrader],
            notUpgradingCompletionHandler: { channel in
                channel.eventLoop.makeFailedFuture(HTTPTransportError("the gateway at \(origin)\(target.path) answered without upgrading to a websocket"))
            }
        )
        var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
        // The gateway sends Hello right after its 101: both can come in one read, and NIO's default drops whatever
        // follows the response head (seen: a shard waiting 10 s for a Hello that had arrived and been dropped).
        pipeline.leftOverBytesStrategy = .forwardBytes
        return try sync.configureUpgradableHTTPClientPipeline(configuration: pipeline)
    }

    /// A tunnel through an HTTP proxy (CONNECT) or a SOCKS5 proxy to the target; succeeds once it is open.
    static func addTunnel(_ channel: any Channel, through proxy: ProxyRoute, to target: URLTarget, deadline: NIODeadline) throws -> EventLoopFuture<Void> {
        let sync = channel.pipeline.syncOperations
        let established = channel.eventLoop.makePromise(of: Void.self)
        switch proxy.kind {
        case .http:
            var headers = HTTPHeaders()
            if let credentials = proxy.credentials {
                headers.add(name: "Proxy-Authorization", value: "Basic " + Data(credentials.utf8).base64EncodedString())
            }
            try sync.addHandler(HTTPRequestEncoder(), name: "proxy.encoder")
            try sync.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)), name: "proxy.decoder")
            try sync.addHandler(NIOHTTP1ProxyConnectHandler(targetHost: target.host, targetPort: target.port, headers: headers, deadline: deadline, promise: established))
            return established.futureResult.flatMap {
                channel.pipeline.removeHandler(name: "proxy.encoder").flatMap { channel.pipeline.removeHandler(name: "proxy.decoder") }
            }
        case .socks:
            try sync.addHandler(SOCKSClientHandler(targetAddress: .domain(target.host, port: target.port)))
            try sync.addHandler(SOCKSEstablishedHandler(promise: established), name: "proxy.socks")
            let timeout = channel.eventLoop.scheduleTask(deadline: deadline) {
                established.fail(HTTPTransportError("the SOCKS proxy \(proxy) did not open a tunnel in time"))
            }
            return established.futureResult.always { _ in timeout.cancel() }.flatMap {
                channel.pipeline.removeHandler(name: "proxy.socks")
            }
        }
    }
}

/// Fulfils a promise when the SOCKS handler reports its tunnel open.
final class SOCKSEstablishedHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny
    let promise: EventLoopPromise<Void>

    init(promise: EventLoopPromise<Void>) { self.promise = promise }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is SOCKSProxyEstablishedEvent { promise.succeed() }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }
}
