import ClusterCore
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// A token request the platform refused, or that could not be made. Never contains the secret.
public struct TokenError: Error, Sendable, CustomStringConvertible {
    public var code: Int?
    public var message: String
    public var description: String { code.map { "access token refused (\($0)): \(message)" } ?? "access token: \(message)" }
}

/// Gets the app's access token, keeps it, and renews it ahead of expiry and on demand (API error 11244, close
/// 4004). Concurrent callers during a renewal share one request.
public actor TokenProvider {
    /// The current token and when to renew it, readable without entering the actor: the hot path of every
    /// OpenAPI request.
    nonisolated let cached = Mutex<(token: String, renewAt: MonotonicInstant)?>(nil)

    let appID: String
    let secret: Secret
    let url: String
    let http: PlatformHTTP
    let logger: Logger
    var current: (token: String, expiresAt: MonotonicInstant, renewAt: MonotonicInstant)?
    var inFlight: AsyncSignal<Result<String, TokenError>>?
    var rng = SplitMix64(seed: UInt64(UInt32.random(in: 0...UInt32.max)))
    /// Tokens fetched so far (for tests and progress reports).
    public private(set) var fetches = 0

    /// Creates a provider; no token is fetched before the first `token()`.
    public init(appID: String, secret: Secret, tokenURL: String, http: PlatformHTTP, logger: Logger) {
        self.appID = appID
        self.secret = secret
        url = tokenURL
        self.http = http
        self.logger = logger
    }

    /// The current token, renewed first when it is near its expiry.
    public nonisolated func token() async throws -> String {
        if let cached = cached.withLock({ $0 }), MonotonicInstant.now() < cached.renewAt { return cached.token }
        return try await renewedToken()
    }

    func renewedToken() async throws -> String {
        let now = MonotonicInstant.now()
        if let current, now < current.renewAt { return current.token }
        if let inFlight { return try await inFlight.wait().get() }
        let signal = AsyncSignal<Result<String, TokenError>>()
        inFlight = signal
        let result: Result<String, TokenError>
        do {
            result = .success(try await fetch())
        } catch let error as TokenError {
            result = .failure(error)
        } catch {
            result = .failure(TokenError(code: nil, message: "\(error)"))
        }
        inFlight = nil
        signal.set(result)
        return try result.get()
    }

    /// Forgets the token so that the next call fetches a new one.
    public func invalidate() {
        current = nil
        cached.withLock { $0 = nil }
    }

    func fetch() async throws -> String {
        let body = JSONValue.object([("appId", .string(appID)), ("clientSecret", .string(secret.reveal()))]).serialized()
        let answer = try await http.execute(.POST, url: url, headers: ["Content-Type": "application/json"], body: ByteBuffer(string: body), timeout: .seconds(20))
        let reply = try? JSONValue.parse(bytes: Array(answer.body.readableBytesView))
        guard let reply, let token = reply["access_token"]?.stringValue, !token.isEmpty, token.utf8.count <= 4096,
            let expiresIn = reply["expires_in"].flatMap({ $0.stringValue.flatMap(Int.init) ?? $0.intValue })
        else {
            throw TokenError(code: reply?["code"]?.intValue, message: reply?["message"]?.stringValue.map { String($0.prefix(500)) } ?? "HTTP \(answer.status) without a token")
        }
        fetches += 1
        let now = MonotonicInstant.now()
        // The platform's tokens live 2 h; a lifetime from the network is held to 1 s ... 1 day.
        let lifetime = Duration.seconds(min(max(1, expiresIn), 86_400))
        // Renew ahead of expiry: up to 50 s early on the platform's 2 h tokens, a quarter of short lifetimes,
        // with jitter so that workers do not all renew in the same second.
        let lead = min(Duration.seconds(50), lifetime / 4)
        let jitter = Double(rng.next() % 1000) / 1000 * 0.2
        let renewAt = now + lifetime - lead - lead * jitter
        current = (token, now + lifetime, renewAt)
        cached.withLock { $0 = (token, renewAt) }
        logger.debug("access token renewed", metadata: ["token.expiresIn": "\(expiresIn)s"])
        return token
    }
}
