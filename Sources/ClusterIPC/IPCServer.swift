import ClusterProtocol
import ClusterCore
import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What the owner of an IPC server hears. `received` runs on the connection's event loop: answer hot messages
/// (pings, grants) right there; hop elsewhere for anything slow.
public protocol IPCServerDelegate: AnyObject, Sendable {
    /// A peer said hello with the right protocol version. Return a reason to refuse it, or nil to accept it (the
    /// delegate then sends its welcome).
    func accept(_ hello: Hello, on connection: IPCConnection) -> String?
    func received(_ message: IPCMessage, on connection: IPCConnection)
    func closed(_ connection: IPCConnection, reason: String?)
}

/// One accepted IPC connection.
public final class IPCConnection: Sendable, Hashable, CustomStringConvertible {
    public let id: UInt64
    public let channel: any Channel
    /// The peer's process id, from the socket's credentials (what the kernel says, not what the peer claims).
    public let peerPID: Int32
    let helloState = Mutex<Hello?>(nil)
    /// Control requests being worked on: a control connection is not idle while one runs (a rescale can take an hour).
    let busy = Atomic<Int>(0)

    init(id: UInt64, channel: any Channel, peerPID: Int32) {
        self.id = id
        self.channel = channel
        self.peerPID = peerPID
    }

    /// The peer's hello, once accepted.
    public var hello: Hello? { helloState.withLock { $0 } }

    /// Sends a message (from any thread).
    public func send(_ message: IPCMessage) {
        channel.writeAndFlush(message, promise: nil)
    }

    /// Marks a control request as being worked on (the connection is not idle) until `end()` of the result.
    public func beginWork() { busy.add(1, ordering: .relaxed) }
    /// Ends what `beginWork()` began: the connection may become idle again.
    public func endWork() { busy.subtract(1, ordering: .relaxed) }

    /// Closes the connection.
    public func close() {
        channel.close(promise: nil)
    }

    public static func == (lhs: IPCConnection, rhs: IPCConnection) -> Bool { lhs.id == rhs.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
    public var description: String { "connection \(id) (pid \(peerPID))" }
}

/// The supervisor's Unix-domain socket: mode 0600, peers of another uid refused (SO_PEERCRED), a version
/// handshake first, frames over the limit or malformed close their connection — never the server.
///
/// Another process of the same user may be hostile or broken, so what a peer can cost is bounded: at most
/// `maxHandshaking` connections wait for their hello (more are closed at once, before any work), each buffering at
/// most a hello-sized frame; at most `maxControl` control connections at once, each closed after
/// `controlIdleTimeout` without a request; refusals are logged at most every ten seconds.
public final class IPCServer: Sendable {
    /// The server's socket path and the bounds on what a peer can cost.
    public struct Configuration: Sendable {
        public var path: String
        /// The largest frame a worker may send (claims batches, user lists).
        public var maxFrameSize = 1 << 20
        /// The largest frame a control command may send.
        public var maxControlFrameSize = 1 << 16
        /// The largest frame before the hello is accepted (a hello is 20 bytes).
        public var maxHandshakeFrameSize = 256
        /// A connection that has not said hello by then is closed.
        public var helloTimeout: Duration = .seconds(5)
        /// Connections waiting for their hello at once; beyond, new ones are closed on accept.
        public var maxHandshaking = 256
        /// Control connections at once; beyond, a control hello is refused.
        public var maxControl = 64
        /// A control connection with no request in flight and nothing received for this long is closed.
        public var controlIdleTimeout: Duration = .seconds(60)
        /// Connections the kernel may queue before they are accepted: room for every worker of two layouts of the
        /// largest cluster (a rescale of 1024 shards runs both). The kernel caps it at `net.core.somaxconn`.
        public var listenBacklog: Int32 = 4096

        /// The default bounds, on the socket at `path`.
        public init(path: String) { self.path = path }
    }

    let configuration: Configuration
    let logger: Logger
    let delegate: any IPCServerDelegate
    let serverChannel = Mutex<(any Channel)?>(nil)
    let nextID = Atomic<UInt64>(0)
    /// Connections refused or closed for a protocol error, for status and tests.
    public let rejected = Atomic<Int>(0)
    let handshaking = Atomic<Int>(0)
    let controls = Atomic<Int>(0)
    let refusals = RateLimitedLog()

    /// A server that hands accepted hellos and messages to `delegate`; nothing listens before `start()`.
    public init(configuration: Configuration, delegate: any IPCServerDelegate, logger: Logger) {
        self.configuration = configuration
        self.delegate = delegate
        self.logger = logger
    }

    /// Binds the socket (removing a stale file first: the caller holds the lock) and starts accepting.
    public func start() async throws {
        try RunDirectory.checkSocketPath(configuration.path)
        unlink(configuration.path)
        let configuration = configuration
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: configuration.listenBacklog)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let decoder = try channel.pipeline.syncOperations.addIPCCodecReturningDecoder(maxFrameSize: configuration.maxHandshakeFrameSize)
                    try channel.pipeline.syncOperations.addHandler(IPCServerHandler(server: self, decoder: decoder))
                }
            }
            .bind(unixDomainSocketPath: configuration.path, cleanupExistingSocketFile: true)
            .get()
        chmod(configuration.path, 0o600)
        serverChannel.withLock { $0 = channel }
        logger.debug("IPC server listening", metadata: ["ipc.path": "\(configuration.path)"])
    }

    /// Stops accepting, closes the socket and removes its file.
    public func close() async {
        let channel = serverChannel.withLock { channel -> (any Channel)? in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
        unlink(configuration.path)
    }

    func makeConnectionID() -> UInt64 { nextID.add(1, ordering: .relaxed).newValue }

    func refused(_ reason: String, peer: Int32) {
        rejected.add(1, ordering: .relaxed)
        refusals.log(logger, .warning, "IPC connection refused", metadata: ["ipc.peer": "\(peer)", "reason": "\(reason)"])
    }
}

/// Per-connection protocol: credentials, handshake, then messages to the delegate.
final class IPCServerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = IPCMessage
    typealias OutboundOut = IPCMessage

    enum Phase { case handshaking, worker, control, closed }

    let server: IPCServer
    let decoder: IPCFrameDecoder
    var connection: IPCConnection?
    var phase = Phase.handshaking
    var counted = false
    var closeReason: String?
    var helloTimer: Scheduled<Void>?
    var idleTimer: Scheduled<Void>?

    init(server: IPCServer, decoder: IPCFrameDecoder) {
        self.server = server
        self.decoder = decoder
    }

    var accepted: Bool { phase == .worker || phase == .control }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        // A flood of connections costs one increment and one close each, nothing more.
        counted = true
        if server.handshaking.add(1, ordering: .relaxed).newValue > server.configuration.maxHandshaking {
            server.refused("more than \(server.configuration.maxHandshaking) connections are waiting for their hello", peer: -1)
            phase = .closed
            context.close(promise: nil)
            return
        }
        // Completed on this channel's event loop, where the context may be used.
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        PeerCredentials.of(context.channel).whenComplete { result in
            self.activate(bound.value, credentials: (try? result.get()) ?? nil)
        }
    }

    func activate(_ context: ChannelHandlerContext, credentials: PeerCredentials?) {
        guard phase == .handshaking else { return }
        let peerPID = credentials?.pid ?? -1
        connection = IPCConnection(id: server.makeConnectionID(), channel: context.channel, peerPID: peerPID)
        guard let credentials, credentials.uid == getuid() else {
            refuse(context, "peer uid \(credentials.map { String($0.uid) } ?? "unknown") (pid \(peerPID)) is not this supervisor's uid \(getuid())")
            return
        }
        let channel = context.channel
        helloTimer = context.eventLoop.scheduleTask(in: .nanoseconds(server.configuration.helloTimeout.nanoseconds)) { [weak self] in
            guard let self, self.phase == .handshaking else { return }
            self.closeReason = "no hello within \(DurationFormat.format(self.server.configuration.helloTimeout))"
            self.server.refused(self.closeReason ?? "", peer: peerPID)
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard let connection, phase != .closed else { return }
        if accepted {
            if phase == .control { armIdleTimer(context) }
            server.delegate.received(message, on: connection)
            return
        }
        guard case .hello(let hello) = message else {
            refuse(context, "the first message must be hello, got \(message.name)")
            return
        }
        guard hello.version == ipcProtocolVersion else {
            refuse(context, "IPC protocol version \(hello.version) is not this supervisor's \(ipcProtocolVersion): run the same botcluster build")
            return
        }
        if hello.role == .control, server.controls.add(1, ordering: .relaxed).newValue > server.configuration.maxControl {
            server.controls.subtract(1, ordering: .relaxed)
            refuse(context, "more than \(server.configuration.maxControl) control connections are open")
            return
        }
        connection.helloState.withLock { $0 = hello }
        if let reason = server.delegate.accept(hello, on: connection) {
            if hello.role == .control { server.controls.subtract(1, ordering: .relaxed) }
            refuse(context, reason)
            return
        }
        helloTimer?.cancel()
        leaveHandshake()
        switch hello.role {
        case .worker:
            phase = .worker
            decoder.maxFrameSize = server.configuration.maxFrameSize
        case .control:
            phase = .control
            decoder.maxFrameSize = server.configuration.maxControlFrameSize
            armIdleTimer(context)
        }
    }

    func leaveHandshake() {
        guard counted else { return }
        counted = false
        server.handshaking.subtract(1, ordering: .relaxed)
    }

    /// A control connection is closed once it has been quiet for the idle timeout with no request in flight.
    func armIdleTimer(_ context: ChannelHandlerContext) {
        idleTimer?.cancel()
        let timeout = server.configuration.controlIdleTimeout
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) { [weak self] in
            guard let self, self.phase == .control, let connection = self.connection else { return }
            if connection.busy.load(ordering: .relaxed) > 0 {
                self.armIdleTimer(bound.value)
                return
            }
            self.closeReason = "idle for \(DurationFormat.format(timeout))"
            bound.value.close(promise: nil)
        }
    }

    func refuse(_ context: ChannelHandlerContext, _ reason: String) {
        closeReason = reason
        phase = .closed
        server.refused(reason, peer: connection?.peerPID ?? -1)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.refused(reason: reason))).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A malformed or oversized frame (or a socket error): this connection ends, the server goes on.
        closeReason = "\(error)"
        server.refused("protocol error: \(error)", peer: connection?.peerPID ?? -1)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        helloTimer?.cancel()
        idleTimer?.cancel()
        leaveHandshake()
        if phase == .control { server.controls.subtract(1, ordering: .relaxed) }
        if let connection, accepted {
            server.delegate.closed(connection, reason: closeReason)
        }
        phase = .closed
        context.fireChannelInactive()
    }
}
