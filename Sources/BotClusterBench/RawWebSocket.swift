import BenchSupport
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A bare websocket client on NIO: frames are handled on the event loop by a callback, with no task hop, so the
/// client costs as little as it can while it measures a server.
final class RawWebSocketHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// Called on the event loop with each text frame; returns texts to send back.
    let onText: (ByteBuffer) -> [String]
    var pending = ByteBuffer()

    init(onText: @escaping (ByteBuffer) -> [String]) { self.onText = onText }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            if frame.fin && pending.readableBytes == 0 {
                reply(context, onText(frame.unmaskedData))
            } else {
                var data = frame.unmaskedData
                pending.writeBuffer(&data)
                if frame.fin {
                    let whole = pending
                    pending = ByteBuffer()
                    reply(context, onText(whole))
                }
            }
        case .continuation:
            var data = frame.unmaskedData
            pending.writeBuffer(&data)
            if frame.fin {
                let whole = pending
                pending = ByteBuffer()
                reply(context, onText(whole))
            }
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }

    func reply(_ context: ChannelHandlerContext, _ texts: [String]) {
        guard !texts.isEmpty else { return }
        for text in texts {
            let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: context.channel.allocator.buffer(string: text))
            context.write(wrapOutboundOut(frame), promise: nil)
        }
        context.flush()
    }
}

enum RawWebSocket {
    /// Connects to `ws://host:port/path` and installs `handler` once upgraded.
    static func connect(host: String, port: Int, path: String, handler: RawWebSocketHandler) async throws -> any Channel {
        let upgraded = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(maxFrameSize: 1 << 22) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(handler)
                            return true
                        }
                    }
                    var headers = HTTPHeaders()
                    headers.add(name: "Host", value: "\(host):\(port)")
                    headers.add(name: "Content-Length", value: "0")
                    let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
                    let configuration = NIOTypedHTTPClientUpgradeConfiguration(
                        upgradeRequestHead: head, upgraders: [upgrader],
                        notUpgradingCompletionHandler: { $0.eventLoop.makeCompletedFuture { false } }
                    )
                    var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
                    // The Hello can come in the same read as the 101; NIO's default would drop it.
                    pipeline.leftOverBytesStrategy = .forwardBytes
                    let result = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
                    return result.map { ($0, channel) }
                }
            }
        let (ok, channel) = try await upgraded.get()
        guard ok else { throw BenchError("websocket upgrade refused by \(host):\(port)\(path)") }
        return channel
    }
}

extension RawWebSocket {
    /// Sends one masked text frame. The bench sends Identify right after the upgrade rather than on Hello: a
    /// frame that arrives in the same read as the 101 response can reach the pipeline before the handler does.
    static func send(_ text: String, on channel: any Channel) async throws {
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: channel.allocator.buffer(string: text))
        try await channel.writeAndFlush(frame)
    }
}
