import CBotSystem
import ClusterCore
#if canImport(Glibc)
import Glibc
#endif

/// Why the supervisor cannot take its socket path.
public struct SocketPathError: Error, Sendable, CustomStringConvertible {
    public var description: String
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

    /// Creates `path` (and its parents) with mode 0700, or makes an existing directory 0700; fails with a clear
    /// message when that is impossible or the directory is not writable.
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
        if info.st_uid == getuid() && (info.st_mode & 0o777) != 0o700 { chmod(path, 0o700) }
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
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SocketPathError("cannot open the lock file \(path): \(lastErrorDescription())") }
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
