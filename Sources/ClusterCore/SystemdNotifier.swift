#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The service manager's notification protocol (sd_notify): datagrams like `READY=1` or `STATUS=...` to the
/// Unix socket `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace). Without `NOTIFY_SOCKET`
/// (not run by systemd with `Type=notify`) every call does nothing. Written here rather than linked from
/// libsystemd: the protocol is one `sendto`, and the release image then needs no libsystemd.
public final class SystemdNotifier: Sendable {
    let address: String?
    /// The watchdog's interval when the manager asked for one (`WATCHDOG_USEC`, for this process).
    public let watchdogInterval: Duration?

    /// A notifier for what `environment` says (the process environment by default).
    public init(environment: [String: String] = SystemdNotifier.processEnvironment()) {
        let socket = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        address = socket.flatMap { $0.hasPrefix("/") || $0.hasPrefix("@") ? $0 : nil }
        if let usec = environment["WATCHDOG_USEC"].flatMap(Int64.init), usec > 0,
            environment["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true
        {
            watchdogInterval = .microseconds(usec)
        } else {
            watchdogInterval = nil
        }
    }

    /// Whether a service manager listens.
    public var isActive: Bool { address != nil }

    /// Sends `fields` (`READY=1`, `STATUS=...`, one per line); whether the datagram left. A status line is cut at
    /// its first newline (a newline would start another field).
    @discardableResult
    public func notify(_ fields: [String]) -> Bool {
        guard let address else { return false }
        // By scalar: "\r\n" is one Character.
        let message = fields.map { field in
            String(String.UnicodeScalarView(field.unicodeScalars.prefix { $0 != "\n" && $0 != "\r" }))
        }.joined(separator: "\n")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var path = Array(address.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        // A path needs its terminating NUL; an abstract name (after its leading NUL) may fill the field.
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.first == 0 ? path.count <= capacity : path.count < capacity else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, byte) in path.enumerated() { raw[i] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1))
        let sent = message.utf8CString.withUnsafeBufferPointer { bytes in
            withUnsafePointer(to: &addr) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                    sendto(fd, bytes.baseAddress, bytes.count - 1, Int32(MSG_NOSIGNAL), sockaddrPointer, length)
                }
            }
        }
        return sent >= 0
    }

    /// The process environment.
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
