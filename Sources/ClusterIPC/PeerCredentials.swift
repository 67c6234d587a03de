import CBotSystem
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a Unix-domain socket, as the kernel says (SO_PEERCRED): nothing a peer can claim.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32

    public var description: String { "pid \(pid), uid \(uid)" }

    /// The credentials of `channel`'s peer, read on its event loop (nil when the socket cannot say).
    public static func of(_ channel: any Channel) -> EventLoopFuture<PeerCredentials?> {
        guard let provider = channel as? any SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(nil) }
        let level = NIOBSDSocket.OptionLevel(rawValue: cbot_sol_socket())
        let name = NIOBSDSocket.Option(rawValue: cbot_so_peercred())
        let future: EventLoopFuture<cbot_ucred> = provider.unsafeGetSocketOption(level: level, name: name)
        return future.map { PeerCredentials(pid: $0.pid, uid: $0.uid) }.recover { _ in nil }
    }
}

extension cbot_ucred: @retroactive @unchecked Sendable {}
