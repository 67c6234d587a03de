import CBotSystem
import ClusterCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why the supervisor cannot take its socket path.
public struct SocketPathError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// An error that names the path and what is wrong with it.
    public init(_ description: String) { self.description = description }
}

/// The files of a cluster's run directory: the socket, and the lock that makes one supervisor own it.
public enum RunDirectory {
    /// The longest Unix-socket path the platform takes (107 bytes on Linux).
    public static var maxSocketPathLength: Int { Int(cbot_max_socket_path()) }

    /// Checks that `path` fits a Unix-socket address.
    public static func checkSocketPath(_ path: String) throws(SocketPathError) {
        let length = path.utf8.count
        guard length <= maxSocketPathLength else {
            throw SocketPathError(
                "supervisor.socket: the path \"\(path)\" is \(length) bytes; Unix-domain socket paths hold at most \(maxSocketPathLength). Use a shorter supervisor.runDirectory or supervisor.socket (a relative path is taken from the working directory)."
            )
        }
    }

    /// Creates `path` (and its parents) with mode 0700, or checks an existing directory: it must be this user's
    /// and writable by no one else (whoever can write there can replace the socket, the lock or the databases), and
    /// its parent must not be writable by everyone unless it is sticky (as /tmp is). A directory of this user's
    /// that others may only read is made 0700.
    public static func prepare(_ path: String) throws(SocketPathError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw SocketPathError("supervisor.runDirectory: cannot create \(current): \(lastErrorDescription())")
            }
        }
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw SocketPathError("supervisor.runDirectory: \(path) is not a directory")
        }
        guard info.st_uid == getuid() else {
            throw SocketPathError("supervisor.runDirectory: \(path) belongs to uid \(info.st_uid), not to this user (uid \(getuid())): another user could replace what the supervisor keeps there; use a directory of your own")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw SocketPathError("supervisor.runDirectory: \(path) is writable by \(info.st_mode & 0o020 != 0 ? "its group" : "others") (mode \(String(info.st_mode & 0o7777, radix: 8))): another user could replace the socket or the databases; chmod 700 \(path)")
        }
        if info.st_mode & 0o777 != 0o700 { chmod(path, 0o700) }
        let parent = (path as NSString).deletingLastPathComponent
        var parentInfo = stat()
        if stat(parent.isEmpty ? "." : parent, &parentInfo) == 0, parentInfo.st_mode & 0o002 != 0, parentInfo.st_mode & S_ISVTX == 0 {
            throw SocketPathError("supervisor.runDirectory: its parent \(parent.isEmpty ? "." : parent) is writable by others and not sticky (mode \(String(parentInfo.st_mode & 0o7777, radix: 8))): another user could swap the run directory for one of theirs")
        }
        guard access(path, W_OK | X_OK) == 0 else {
            throw SocketPathError("supervisor.runDirectory: \(path) is not writable by this user (\(lastErrorDescription()))")
        }
    }
}

/// An exclusive lock on a file beside the socket (flock), held for the life of the process: a second supervisor
/// on the same path is refused and told who holds it; a crashed one releases it with its death.
public final class SupervisorLock: Sendable {
    let descriptor: Int32
    public let path: String

    /// Takes the lock or says which process holds it.
    public init(path: String) throws(SocketPathError) {
        // Not through a symbolic link: one planted there would make the supervisor truncate a file of its choice.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            if errno == ELOOP { throw SocketPathError("the lock file \(path) is a symbolic link; remove it (the supervisor creates its own)") }
            throw SocketPathError("cannot open the lock file \(path): \(lastErrorDescription())")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, buffer.count, 0)
            let holder = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespaceAndNewlines() : "unknown"
            close(fd)
            throw SocketPathError("another supervisor (pid \(holder)) holds \(path); stop it first (botcluster stop) or use another supervisor.runDirectory")
        }
        let pid = "\(getpid())\n"
        ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        descriptor = fd
        self.path = path
    }

    deinit {
        close(descriptor)
    }
}

extension String {
    func trimmingWhitespaceAndNewlines() -> String {
        var s = Substring(self)
        while let c = s.last, c.isWhitespace { s.removeLast() }
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        return String(s)
    }
}

/// Plain, blocking Unix-domain sockets: for tools that speak raw bytes to the supervisor's socket (benchmarks
/// beside the framed IPC, checks of its defences against garbage).
public enum RawUnixSocket {
    /// Calls `body` with the address of `path` (which must fit; see ``RunDirectory/checkSocketPath(_:)``).
    public static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A connected stream socket, or nil (with errno set).
    public static func connect(path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard withAddress(path, { Glibc.connect(fd, $0, $1) }) == 0 else {
            close(fd)
            return nil
        }
        return fd
    }
}
