import Foundation

/// An HTTP or SOCKS proxy a connection goes through.
public struct ProxyRoute: Sendable, Hashable, CustomStringConvertible {
    /// The proxy's protocol: HTTP or SOCKS5.
    public enum Kind: Sendable, Hashable { case http, socks }
    public var kind: Kind
    public var host: String
    public var port: Int
    /// `user:password` from the proxy URL, for `Proxy-Authorization: Basic`.
    public var credentials: String?

    /// A route from its fields; `credentials` is `user:password`, nil for none.
    public init(kind: Kind, host: String, port: Int, credentials: String?) {
        self.kind = kind
        self.host = host
        self.port = port
        self.credentials = credentials
    }

    public var description: String { "\(kind == .http ? "http" : "socks5")://\(host):\(port)" }
}

/// Why the proxy variables of the environment cannot be used.
public struct ProxyEnvironmentError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The proxies the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, and their lowercase forms, as curl
/// and Go read them): which connection goes through which, decided per scheme and host. Loopback addresses never go
/// through a proxy (as in Go): an emulator on this machine is reached directly whatever the environment says.
public struct ProxyEnvironment: Sendable, Equatable {
    public var https: ProxyRoute?
    public var http: ProxyRoute?
    /// Hosts and domain suffixes reached directly; `["*"]` means every host.
    public var noProxy: [String]

    /// Proxies as given, not read from the environment; none by default.
    public init(https: ProxyRoute? = nil, http: ProxyRoute? = nil, noProxy: [String] = []) {
        self.https = https
        self.http = http
        self.noProxy = noProxy
    }

    /// Reads the variables; a proxy URL that is not `http://` or `socks5://` (or has no host) is an error.
    public init(environment: [String: String]) throws(ProxyEnvironmentError) {
        func value(_ name: String) -> (name: String, value: String)? {
            for key in [name, name.lowercased()] {
                if let v = environment[key], !v.isEmpty { return (key, v) }
            }
            return nil
        }
        https = try value("HTTPS_PROXY").map { variable throws(ProxyEnvironmentError) in try Self.parse(variable.value, from: variable.name) }
        http = try value("HTTP_PROXY").map { variable throws(ProxyEnvironmentError) in try Self.parse(variable.value, from: variable.name) }
        noProxy = (value("NO_PROXY")?.value ?? "").split(separator: ",").map { entry in
            var host = entry.trimmingCharacters(in: " \t")
            if host.hasPrefix(".") { host.removeFirst() }
            // A port in an entry ("example.com:443") is ignored: the host decides.
            if !host.hasPrefix("["), let colon = host.lastIndex(of: ":"), host.firstIndex(of: ":") == colon { host = String(host[..<colon]) }
            return host.lowercased()
        }.filter { !$0.isEmpty }
    }

    /// The proxy for a connection to `host` over `scheme` (http, https, ws, wss), or nil to connect directly.
    public func route(scheme: String, host: String) -> ProxyRoute? {
        let proxy = scheme == "https" || scheme == "wss" ? https : http
        guard let proxy else { return nil }
        let host = host.lowercased().trimmingCharacters(in: "[]")
        if Self.isLoopback(host) { return nil }
        for entry in noProxy {
            if entry == "*" || host == entry || host.hasSuffix("." + entry) { return nil }
        }
        return proxy
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host.hasSuffix(".localhost") || host.hasPrefix("127.") || host == "::1"
    }

    static func parse(_ text: String, from name: String) throws(ProxyEnvironmentError) -> ProxyRoute {
        var rest = Substring(text)
        var kind = ProxyRoute.Kind.http
        var defaultPort = 80
        if let range = rest.range(of: "://") {
            switch rest[..<range.lowerBound].lowercased() {
            case "http": break
            case "socks5", "socks5h", "socks":
                kind = .socks
                defaultPort = 1080
            case let other:
                throw ProxyEnvironmentError(description: "\(name): a \(other):// proxy is not supported; use http:// or socks5://")
            }
            rest = rest[range.upperBound...]
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var credentials: String?
        if let at = rest.lastIndex(of: "@") {
            credentials = String(rest[..<at]).removingPercentEncoding()
            rest = rest[rest.index(after: at)...]
        }
        var host = String(rest)
        var port = defaultPort
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw ProxyEnvironmentError(description: "\(name): the port of the proxy is not a number 1...65535")
            }
            port = p
            host = String(rest[..<colon])
        }
        host = host.trimmingCharacters(in: "[]")
        guard !host.isEmpty else { throw ProxyEnvironmentError(description: "\(name): the proxy URL names no host") }
        if kind == .socks && credentials != nil {
            throw ProxyEnvironmentError(description: "\(name): a SOCKS proxy with a user and password is not supported")
        }
        return ProxyRoute(kind: kind, host: host, port: port, credentials: credentials)
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s.removeFirst() }
        while let c = s.last, set.contains(c) { s.removeLast() }
        return String(s)
    }

    /// `%XX` escapes decoded (as in the user part of a proxy URL).
    func removingPercentEncoding() -> String {
        var bytes: [UInt8] = []
        var iterator = Array(utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let value = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
