import ArgumentParser
import BenchSupport
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// IPC round trips and one-way throughput over the supervisor's framing, beside a raw Unix-socket ping-pong of
/// the same frame size on the same machine in the same run.
struct IPCBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ipc", abstract: "IPC round trip and throughput beside raw Unix sockets.")
    @Option var count = 20_000

    final class Delegate: IPCServerDelegate {
        let received = Atomic<Int>(0)
        let target = Atomic<Int>(0)
        let done = Mutex<AsyncSignal<MonotonicInstant>?>(nil)
        func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
            connection.send(.helloAck(supervisorPID: 0))
            return nil
        }
        func received(_ message: IPCMessage, on connection: IPCConnection) {
            switch message {
            case .ping(let id): connection.send(.pong(id: id))
            default:
                if received.add(1, ordering: .relaxed).newValue == target.load(ordering: .relaxed) {
                    done.withLock { $0 }?.set(.now())
                }
            }
        }
        func closed(_ connection: IPCConnection, reason: String?) {}
    }

    func run() async throws {
        let dir = "/tmp/botcluster-bench-\(getpid())"
        try RunDirectory.prepare(dir)
        defer {
            unlink(dir + "/ipc.sock")
            unlink(dir + "/raw.sock")
            rmdir(dir)
        }
        // IPC: request/reply, answered on the server's event loop.
        let delegate = Delegate()
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let server = IPCServer(configuration: .init(path: dir + "/ipc.sock"), delegate: delegate, logger: logger)
        try await server.start()
        let client = try await IPCClient.connect(path: dir + "/ipc.sock", hello: Hello(role: .control, pid: getpid()))
        var inbound = client.inbound.makeAsyncIterator()
        _ = await inbound.next()
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for _ in 0..<(count / 10) { _ = try await client.request(timeout: .seconds(5)) { .ping(id: $0) } }
        for _ in 0..<count {
            let start = MonotonicInstant.now()
            _ = try await client.request(timeout: .seconds(5)) { .ping(id: $0) }
            samples.append((MonotonicInstant.now() - start).seconds * 1e6)
        }
        samples.sort()
        // One-way: heartbeats as fast as they can be written, until the server has read them all.
        let signal = AsyncSignal<MonotonicInstant>()
        delegate.done.withLock { $0 = signal }
        delegate.target.store(count * 5, ordering: .relaxed)
        let start = MonotonicInstant.now()
        for _ in 0..<(count * 5) { client.send(.heartbeat(WorkerProgress(state: .ready))) }
        let end = try await signal.wait()
        let oneWay = Double(count * 5) / (end - start).seconds
        client.close()

        let loopSamples = try await eventLoopPingPong(path: dir + "/ipc.sock", count: count)
        await server.close()
        let raw = try rawPingPong(path: dir + "/raw.sock", count: count, frameSize: 13)
        print("ipc.el.rtt.p50 \(String(format: "%.1f", loopSamples[loopSamples.count / 2])) us")
        print("ipc.el.rtt.p99 \(String(format: "%.1f", loopSamples[loopSamples.count * 99 / 100])) us")
        print("ipc.rtt.p50 \(String(format: "%.1f", samples[samples.count / 2])) us")
        print("ipc.rtt.p99 \(String(format: "%.1f", samples[samples.count * 99 / 100])) us")
        print("ipc.oneway.rate \(Int(oneWay)) messages/s")
        print("raw.rtt.p50 \(String(format: "%.1f", raw.p50)) us")
        print("raw.rtt.p99 \(String(format: "%.1f", raw.p99)) us")
    }

    /// Pings from a channel handler on the event loop, the next ping sent as the pong arrives: the IPC round trip
    /// without the hop into a Swift task that a caller awaiting a reply adds.
    func eventLoopPingPong(path: String, count: Int) async throws -> [Double] {
        final class Pinger: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = IPCMessage
            typealias OutboundOut = IPCMessage
            let total: Int
            var sent = MonotonicInstant.now()
            var samples: [Double] = []
            let done: EventLoopPromise<[Double]>
            init(total: Int, done: EventLoopPromise<[Double]>) {
                self.total = total
                self.done = done
            }
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                switch unwrapInboundIn(data) {
                case .helloAck: break
                case .pong:
                    samples.append((MonotonicInstant.now() - sent).seconds * 1e6)
                    if samples.count == total {
                        done.succeed(samples)
                        return
                    }
                default: return
                }
                sent = MonotonicInstant.now()
                context.writeAndFlush(wrapOutboundOut(.ping(id: UInt64(samples.count))), promise: nil)
            }
        }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let done = loop.makePromise(of: [Double].self)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addIPCCodec()
                    try channel.pipeline.syncOperations.addHandler(Pinger(total: count + count / 10, done: done))
                }
            }
            .connect(unixDomainSocketPath: path).get()
        try await channel.writeAndFlush(IPCMessage.hello(Hello(role: .control, pid: getpid())))
        var samples = Array(try await done.futureResult.get().dropFirst(count / 10))
        try? await channel.close()
        samples.sort()
        return samples
    }

    /// A blocking ping-pong over a Unix stream socket: a thread echoes `frameSize` bytes back, the caller times.
    func rawPingPong(path: String, count: Int, frameSize: Int) throws -> (p50: Double, p99: Double) {
        unlink(path)
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = RawUnixSocket.withAddress(path) { bind(listener, $0, $1) }
        listen(listener, 1)
        let echo = Thread {
            let fd = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: frameSize)
            while true {
                var got = 0
                while got < frameSize {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, frameSize - got) }
                    if n <= 0 { close(fd); return }
                    got += n
                }
                _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, frameSize) }
            }
        }
        echo.start()
        guard let fd = RawUnixSocket.connect(path: path) else { throw BenchError("cannot connect to \(path)") }
        var buffer = [UInt8](repeating: 7, count: frameSize)
        var samples: [Double] = []
        for i in 0..<(count + count / 10) {
            let start = MonotonicInstant.now()
            _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, frameSize) }
            var got = 0
            while got < frameSize {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, frameSize - got) }
                if n <= 0 { break }
                got += n
            }
            if i >= count / 10 { samples.append((MonotonicInstant.now() - start).seconds * 1e6) }
        }
        close(fd)
        close(listener)
        samples.sort()
        return (samples[samples.count / 2], samples[samples.count * 99 / 100])
    }
}
