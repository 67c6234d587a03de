import CBotSystem
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
    /// The peer's process id, from the socket's credentials.
    public let peerPID: Int32
    let helloState = Mutex<Hello?>(nil)

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

    /// Sends a message from the connection's event loop, batching the flush with others of the same turn.
    public func sendOnEventLoop(_ message: IPCMessage) {
        channel.writeAndFlush(message, promise: nil)
    }

    public func close() {
        channel.close(promise: nil)
    }

    public static func == (lhs: IPCConnection, rhs: IPCConnection) -> Bool { lhs.id == rhs.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
    public var description: String { "connection \(id) (pid \(peerPID))" }
}

/// The supervisor's Unix-domain socket: mode 0600, peers of another uid refused (SO_PEERCRED), a version
/// handshake first, frames over the limit or malformed close their connection — never the server.
public final class IPCServer: Sendable {
    public struct Configuration: Sendable {
        public var path: String
        public var maxFrameSize = 1 << 20
        /// A connection that has not said hello by then is closed.
        public var helloTimeout: Duration = .seconds(5)

        public init(path: String) { self.path = path }
    }

    let configuration: Configuration
    let logger: Logger
    let delegate: any IPCServerDelegate
    let serverChannel = Mutex<(any Channel)?>(nil)
    let nextID = Atomic<UInt64>(0)
    /// Connections refused or closed for a protocol error, for status and tests.
    public let rejected = Atomic<Int>(0)

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
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addIPCCodec(maxFrameSize: configuration.maxFrameSize)
                    try channel.pipeline.syncOperations.addHandler(IPCServerHandler(server: self))
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
}

/// Per-connection protocol: credentials, handshake, then messages to the delegate.
final class IPCServerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = IPCMessage
    typealias OutboundOut = IPCMessage

    let server: IPCServer
    var connection: IPCConnection?
    var accepted = false
    var closeReason: String?
    var helloTimer: Scheduled<Void>?

    init(server: IPCServer) { self.server = server }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        guard let provider = context.channel as? any SocketOptionProvider else {
            activate(context, credentials: nil)
            return
        }
        let level = NIOBSDSocket.OptionLevel(rawValue: cbot_sol_socket())
        let name = NIOBSDSocket.Option(rawValue: cbot_so_peercred())
        let future: EventLoopFuture<cbot_ucred> = provider.unsafeGetSocketOption(level: level, name: name)
        future.whenComplete { result in
            self.activate(context, credentials: try? result.get())
        }
    }

    func activate(_ context: ChannelHandlerContext, credentials: cbot_ucred?) {
        let peerPID = credentials?.pid ?? -1
        connection = IPCConnection(id: server.makeConnectionID(), channel: context.channel, peerPID: peerPID)
        guard let credentials, credentials.uid == getuid() else {
            refuse(context, "peer uid \(credentials.map { String($0.uid) } ?? "unknown") (pid \(peerPID)) is not this supervisor's uid \(getuid())")
            return
        }
        let channel = context.channel
        helloTimer = context.eventLoop.scheduleTask(in: .nanoseconds(server.configuration.helloTimeout.nanoseconds)) { [weak self] in
            guard let self, !self.accepted else { return }
            self.closeReason = "no hello within \(DurationFormat.format(self.server.configuration.helloTimeout))"
            self.server.rejected.add(1, ordering: .relaxed)
            self.server.logger.warning("IPC connection closed", metadata: ["ipc.peer": "\(peerPID)", "reason": "\(self.closeReason ?? "")"])
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard let connection else { return }
        if accepted {
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
        connection.helloState.withLock { $0 = hello }
        if let reason = server.delegate.accept(hello, on: connection) {
            refuse(context, reason)
            return
        }
        accepted = true
        helloTimer?.cancel()
    }

    func refuse(_ context: ChannelHandlerContext, _ reason: String) {
        closeReason = reason
        server.rejected.add(1, ordering: .relaxed)
        server.logger.warning("IPC connection refused", metadata: ["ipc.peer": "\(connection?.peerPID ?? -1)", "reason": "\(reason)"])
        context.writeAndFlush(wrapOutboundOut(.refused(reason: reason))).whenComplete { _ in context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A malformed or oversized frame (or a socket error): this connection ends, the server goes on.
        closeReason = "\(error)"
        server.rejected.add(1, ordering: .relaxed)
        server.logger.warning("IPC connection closed on a protocol error", metadata: ["ipc.peer": "\(connection?.peerPID ?? -1)", "reason": "\(error)"])
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        helloTimer?.cancel()
        if let connection, accepted {
            server.delegate.closed(connection, reason: closeReason)
        }
        context.fireChannelInactive()
    }
}

extension cbot_ucred: @retroactive @unchecked Sendable {}
