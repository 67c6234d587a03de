import ClusterProtocol
import ClusterCore
import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A request that got no reply in time, or a connection that ended first.
public struct IPCRequestError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// An error that says which request failed and why.
    public init(_ description: String) { self.description = description }
}

/// A worker's or control command's connection to the supervisor: request/reply by correlation id with
/// deadlines, and a stream of what the supervisor sends unasked.
public final class IPCClient: Sendable {
    struct Pending {
        var continuation: CheckedContinuation<IPCMessage, any Error>
        var progress: (@Sendable (IPCMessage) -> Void)?
        var timeout: Scheduled<Void>?
    }

    let channel: any Channel
    let pending = Mutex<[UInt64: Pending]>([:])
    let nextID = Atomic<UInt64>(0)
    /// Messages that are not replies (welcome, stop, ...), in order.
    public let inbound: AsyncStream<IPCMessage>
    let inboundContinuation: AsyncStream<IPCMessage>.Continuation
    /// Set once the connection has ended, with why.
    public let closed = AsyncSignal<String>()

    /// The event loop the connection runs on.
    public var eventLoop: any EventLoop { channel.eventLoop }

    init(channel: any Channel) {
        self.channel = channel
        (inbound, inboundContinuation) = AsyncStream.makeStream()
    }

    /// Connects to the supervisor at `path` and says hello — once the kernel has confirmed who listens there: a
    /// process of this user, and when `supervisorPID` is given, that very process (a worker hands its welcome's
    /// URLs the app secret, so it must not talk to whatever took the socket path).
    public static func connect(path: String, hello: Hello, supervisorPID: Int32? = nil, maxFrameSize: Int = 1 << 20) async throws -> IPCClient {
        let clientBox = Mutex<IPCClient?>(nil)
        // The credentials are read on the event loop in the step that completes the connect: read later, from a task
        // the shared pool resumes late, the server may have closed the connection for want of a hello meanwhile,
        // and a closed channel has no credentials to read (seen in a busy test run as "a process the kernel cannot
        // name").
        let (channel, peer) = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let client = IPCClient(channel: channel)
                    clientBox.withLock { $0 = client }
                    try channel.pipeline.syncOperations.addIPCCodec(maxFrameSize: maxFrameSize)
                    try channel.pipeline.syncOperations.addHandler(IPCClientHandler(client: client))
                }
            }
            .connect(unixDomainSocketPath: path)
            .flatMap { channel in PeerCredentials.of(channel).map { (channel, $0) } }
            .get()
        guard let client = clientBox.withLock({ $0 }) else {
            try? await channel.close()
            throw IPCRequestError("IPC client was not set up")
        }
        guard let peer, peer.uid == getuid(), supervisorPID.map({ $0 == peer.pid }) ?? true else {
            try? await channel.close()
            let who = peer.map { "pid \($0.pid) of uid \($0.uid)" } ?? "a process the kernel cannot name"
            let expected = supervisorPID.map { "the supervisor (pid \($0), uid \(getuid()))" } ?? "a process of uid \(getuid())"
            throw IPCRequestError("the socket \(path) is held by \(who), not \(expected); nothing was sent")
        }
        client.send(.hello(hello))
        return client
    }

    /// Sends a message without waiting for an answer (from any thread).
    public func send(_ message: IPCMessage) {
        channel.writeAndFlush(message, promise: nil)
    }

    /// Sends a message and waits until it is written to the socket (or `within` passes): for the last word of a
    /// process about to exit.
    public func sendFlushed(_ message: IPCMessage, within limit: Duration) async throws {
        let channel = channel
        try await withTimeout(limit, "sending \(message.name)") { try await channel.writeAndFlush(message).get() }
    }

    /// A fresh correlation id.
    public func makeID() -> UInt64 { nextID.add(1, ordering: .relaxed).newValue }

    /// Sends the request `build(id)` and waits for the reply with the same id (progress messages with that id go
    /// to `progress` meanwhile).
    public func request(
        timeout: Duration, progress: (@Sendable (IPCMessage) -> Void)? = nil, _ build: (UInt64) -> IPCMessage
    ) async throws -> IPCMessage {
        let id = makeID()
        let message = build(id)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                pending.withLock { $0[id] = Pending(continuation: continuation, progress: progress, timeout: nil) }
                // One hop to the event loop arms the deadline and writes the request together.
                let loop = channel.eventLoop
                loop.execute {
                    let timer = loop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
                        self.complete(id, with: .failure(IPCRequestError("no reply to \(message.name) within \(DurationFormat.format(timeout))")))
                    }
                    let registered = self.pending.withLock { pending -> Bool in
                        guard pending[id] != nil else { return false }
                        pending[id]!.timeout = timer
                        return true
                    }
                    guard registered else {
                        timer.cancel()
                        return
                    }
                    self.channel.writeAndFlush(message).whenFailure { error in
                        self.complete(id, with: .failure(IPCRequestError("cannot send \(message.name): \(error)")))
                    }
                }
                if Task.isCancelled { complete(id, with: .failure(CancellationError())) }
            }
        } onCancel: {
            self.complete(id, with: .failure(CancellationError()))
        }
    }

    func complete(_ id: UInt64, with result: Result<IPCMessage, any Error>) {
        guard let entry = pending.withLock({ $0.removeValue(forKey: id) }) else { return }
        entry.timeout?.cancel()
        entry.continuation.resume(with: result)
    }

    /// Routes a message from the supervisor: a reply to its request, or the inbound stream.
    func route(_ message: IPCMessage) {
        if case .ping(let id) = message {
            // Liveness probes are answered here, on the event loop, whatever the rest of the process is doing.
            send(.pong(id: id))
            return
        }
        if let id = message.correlationID {
            if case .controlProgress = message {
                let progress = pending.withLock { $0[id]?.progress }
                progress?(message)
                return
            }
            let isReply: Bool
            switch message {
            case .pong, .identifyGrant, .identifyDenied, .controlReply, .budgetGrant, .userAnswer, .claimResults: isReply = true
            default: isReply = false
            }
            if isReply, pending.withLock({ $0[id] != nil }) {
                complete(id, with: .success(message))
                return
            }
        }
        inboundContinuation.yield(message)
    }

    func ended(_ reason: String) {
        let all = pending.withLock { pending -> [Pending] in
            defer { pending = [:] }
            return Array(pending.values)
        }
        for entry in all {
            entry.timeout?.cancel()
            entry.continuation.resume(throwing: IPCRequestError("the supervisor connection ended: \(reason)"))
        }
        inboundContinuation.finish()
        closed.set(reason)
    }

    /// Closes the connection; requests still waiting fail with `IPCRequestError`.
    public func close() {
        channel.close(promise: nil)
    }
}

final class IPCClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = IPCMessage
    let client: IPCClient
    var error: (any Error)?

    init(client: IPCClient) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client.route(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.error = error
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.ended(error.map { "\($0)" } ?? "closed by the supervisor")
        context.fireChannelInactive()
    }
}

extension IPCClient {
    /// One control request (`status`, `scale`, ...): whether the supervisor did it, and its answer. Progress lines
    /// the supervisor sends meanwhile go to `progress`.
    public func control(
        _ command: ControlCommand, timeout: Duration, progress: (@Sendable (String) -> Void)? = nil
    ) async throws -> (ok: Bool, body: String) {
        let reply = try await request(timeout: timeout, progress: { message in
            if case .controlProgress(_, let line) = message { progress?(line) }
        }) { .controlRequest(id: $0, command: command) }
        guard case .controlReply(_, let ok, let body) = reply else {
            throw IPCRequestError("\(command.name): unexpected reply \(reply.name)")
        }
        return (ok, body)
    }

    /// Connects to the supervisor at `path` as a control client, makes one control request, and disconnects.
    public static func control(path: String, _ command: ControlCommand, timeout: Duration = .seconds(10)) async throws -> (ok: Bool, body: String) {
        let client = try await IPCClient.connect(path: path, hello: Hello(role: .control, pid: getpid()))
        defer { client.close() }
        return try await client.control(command, timeout: timeout)
    }
}
