import AsyncHTTPClient
import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// An HTTP answer: status, headers, the whole body.
public struct HTTPAnswer: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    /// An answer from its status, headers and body.
    public init(status: Int, headers: HTTPHeaders, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Why an HTTP exchange failed before an answer came, in words a person can act on.
public struct HTTPTransportError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// An error with its message.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Why the platform clients cannot be set up (a bad trust-roots file, a bad proxy variable).
public struct PlatformSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// How a process reaches the platform over TLS: the system's roots, plus `gateway.trustRoots` when set.
public enum PlatformTLS {
    /// The client TLS configuration, with the certificates of `trustRoots` (a PEM file) trusted besides the system's.
    public static func clientConfiguration(trustRoots: String?) throws(PlatformSetupError) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let trustRoots {
            let certificates: [NIOSSLCertificate]
            do {
                certificates = try NIOSSLCertificate.fromPEMFile(trustRoots)
            } catch {
                throw PlatformSetupError(description: "gateway.trustRoots: cannot read PEM certificates from \(trustRoots): \(error)")
            }
            guard !certificates.isEmpty else {
                throw PlatformSetupError(description: "gateway.trustRoots: \(trustRoots) holds no PEM certificate")
            }
            tls.additionalTrustRoots = [.certificates(certificates)]
        }
        return tls
    }

    /// A TLS failure said plainly, with what to do about an untrusted certificate.
    static func explain(_ error: any Error, host: String) -> String? {
        let text = "\(error)"
        if let error = error as? NIOSSLExtraError, error == .failedToValidateHostname {
            return "the TLS certificate of \(host) is not valid for that name (\(text))"
        }
        if error is NIOSSLError || text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
            if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
                return "the TLS certificate of \(host) is not trusted (\(text)); if a private CA signed it, set gateway.trustRoots to the CA's PEM file"
            }
            return "TLS with \(host) failed: \(text)"
        }
        return nil
    }
}

/// The platform's HTTP client of one process: AsyncHTTPClient over the process's event loops, with TLS (HTTP/2
/// where the server offers it through ALPN, HTTP/1.1 keep-alive otherwise), proxies from the environment, and a
/// deadline on every exchange, body included.
///
/// Requests are never pipelined: over HTTP/1.1 each connection carries one request at a time (a POST on a
/// connection that drops mid-flight is ambiguous, and replies must be sent exactly once); over HTTP/2 requests are
/// multiplexed as streams. Redirects are not followed: a redirect would carry the access token to wherever it
/// points, so it is reported as an error naming the target.
public final class PlatformHTTP: Sendable {
    /// How the client is set up: extra trust roots, connections per host, and where proxy variables are read.
    public struct Configuration: Sendable {
        /// A PEM file of extra certificate authorities (`gateway.trustRoots`).
        public var trustRoots: String?
        /// HTTP/1.1 connections per host (requests beyond wait for one); HTTP/2 multiplexes on one. A shard's
        /// replies want 64: measured on loopback (scripts/bench.sh's burst of 20,000), 8 connections gave 5,700-6,200
        /// replies/s, 32 gave 6,300-7,100, 64 gave 8,900-9,200, 128 and 256 no more (requests queued inside the
        /// client cost more than idle connections).
        public var maxConnectionsPerHost: Int
        /// Where `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are read.
        public var environment: [String: String]

        /// A configuration; by default the system's roots only, 64 connections per host, and no proxy variables.
        public init(trustRoots: String? = nil, maxConnectionsPerHost: Int = 64, environment: [String: String] = [:]) {
            self.trustRoots = trustRoots
            self.maxConnectionsPerHost = maxConnectionsPerHost
            self.environment = environment
        }
    }

    /// The TLS configuration every connection to the platform uses (the gateway's websocket too).
    public let tls: TLSConfiguration
    /// The proxies the environment names.
    public let proxies: ProxyEnvironment
    let direct: HTTPClient
    let viaProxy: [ProxyRoute: HTTPClient]
    /// The largest answer body read.
    public static let maxBodySize = 1 << 20

    /// Creates the HTTP clients; throws when the trust roots cannot be read or a proxy variable is unusable.
    public init(_ configuration: Configuration) throws(PlatformSetupError) {
        tls = try PlatformTLS.clientConfiguration(trustRoots: configuration.trustRoots)
        do {
            proxies = try ProxyEnvironment(environment: configuration.environment)
        } catch {
            throw PlatformSetupError(description: error.description)
        }
        let tls = self.tls
        func client(_ proxy: ProxyRoute?) -> HTTPClient {
            // The read timeout bounds an answer's body once its head has come (the request's deadline covers the
            // head): a per-request timer task would cost more than the request (measured: a third of the worker's
            // time at 6,000 replies/s).
            var settings = HTTPClient.Configuration(
                tlsConfiguration: tls, redirectConfiguration: .disallow,
                timeout: .init(connect: .seconds(10), read: .seconds(30)), proxy: proxy.map(Self.ahcProxy)
            )
            settings.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = max(1, configuration.maxConnectionsPerHost)
            settings.httpVersion = .automatic
            return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: settings)
        }
        direct = client(nil)
        var viaProxy: [ProxyRoute: HTTPClient] = [:]
        for route in [self.proxies.https, self.proxies.http].compactMap({ $0 }) where viaProxy[route] == nil {
            viaProxy[route] = client(route)
        }
        self.viaProxy = viaProxy
    }

    static func ahcProxy(_ route: ProxyRoute) -> HTTPClient.Configuration.Proxy {
        switch route.kind {
        case .socks: return .socksServer(host: route.host, port: route.port)
        case .http:
            let authorization = route.credentials.map { credentials -> HTTPClient.Authorization in
                let parts = credentials.split(separator: ":", maxSplits: 1)
                return .basic(username: String(parts.first ?? ""), password: parts.count > 1 ? String(parts[1]) : "")
            }
            return .server(host: route.host, port: route.port, authorization: authorization)
        }
    }

    /// A GET of `url` (no headers, no body).
    public func get(_ url: String, timeout: Duration = .seconds(30)) async throws -> HTTPAnswer {
        try await execute(.GET, url: url, timeout: timeout)
    }

    /// Sends one request to an absolute `http(s)://` URL and reads the whole answer, all within `timeout`.
    public func execute(
        _ method: HTTPMethod, url: String, headers: HTTPHeaders = [:], body: ByteBuffer? = nil, timeout: Duration = .seconds(30)
    ) async throws -> HTTPAnswer {
        guard let target = URLTarget(url) else { throw HTTPTransportError("not an http(s) URL: \(url)") }
        var prepared = HTTPClientRequest(url: url)
        prepared.method = method
        prepared.headers = headers
        if let body { prepared.body = .bytes(body) }
        let request = prepared
        let client = proxies.route(scheme: target.scheme, host: target.host).flatMap { viaProxy[$0] } ?? direct
        let what = "\(method) \(target.origin)\(target.path)"
        do {
            let deadline = NIODeadline.now() + .nanoseconds(timeout.nanoseconds)
            let response: HTTPClientResponse
            do {
                response = try await client.execute(request, deadline: deadline)
            } catch let error as ChannelError where error == .ioOnClosedChannel {
                // The server closed an idle kept-alive connection as the request was handed to it: nothing was
                // written, so sending it again cannot send it twice, whatever its method.
                response = try await client.execute(request, deadline: deadline)
            }
            let body = try await response.body.collect(upTo: Self.maxBodySize)
            return HTTPAnswer(status: Int(response.status.code), headers: response.headers, body: body)
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as HTTPClientError where error == .cancelled {
            throw CancellationError()
        } catch {
            throw HTTPTransportError(Self.explain(error, what: what, target: target, timeout: timeout))
        }
    }

    static func explain(_ error: any Error, what: String, target: URLTarget, timeout: Duration) -> String {
        if let tls = PlatformTLS.explain(error, host: target.host) { return "\(what): \(tls)" }
        if let error = error as? HTTPClientError {
            if error == .deadlineExceeded { return "\(what): no answer within \(DurationFormat.format(timeout))" }
            if error == .readTimeout { return "\(what): the answer stopped coming for 30s" }
            if error == .remoteConnectionClosed { return "\(what): the server closed the connection before answering" }
            if error == .connectTimeout { return "\(what): cannot connect to \(target.origin) within 10s" }
        }
        if error is NIOTooManyBytesError { return "\(what): the answer is larger than \(maxBodySize) bytes" }
        if let error = error as? NIOConnectionError {
            let reasons = error.connectionErrors.map { "\($0.error)" } + (error.dnsAAAAError.map { ["\($0)"] } ?? []) + (error.dnsAError.map { ["\($0)"] } ?? [])
            return "\(what): cannot connect to \(target.origin): \(reasons.first ?? "\(error)")"
        }
        return "\(what): \(error)"
    }

    /// Closes every connection; requests in flight fail.
    public func shutdown() async {
        try? await direct.shutdown()
        for client in viaProxy.values { try? await client.shutdown() }
    }
}

/// The parts of an absolute URL the client needs: scheme, host, port, path.
public struct URLTarget: Sendable, Equatable {
    public var scheme: String
    public var host: String
    public var port: Int
    public var path: String

    /// Parses an absolute http(s) or ws(s) URL; nil when it is not one or its host or port is unusable.
    public init?(_ url: String) {
        guard let range = url.range(of: "://") else { return nil }
        scheme = url[..<range.lowerBound].lowercased()
        let defaultPort: Int
        switch scheme {
        case "http", "ws": defaultPort = 80
        case "https", "wss": defaultPort = 443
        default: return nil
        }
        let rest = url[range.upperBound...]
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        var authority = rest[..<authorityEnd]
        path = authorityEnd == rest.endIndex ? "/" : String(rest[authorityEnd...])
        if path.hasPrefix("?") { path = "/" + path }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        port = defaultPort
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { return nil }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
            host = String(authority[..<colon])
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { return nil }
    }

    public var tls: Bool { scheme == "https" || scheme == "wss" }
    /// `scheme://host:port`.
    public var origin: String { "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
}
