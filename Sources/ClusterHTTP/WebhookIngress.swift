import ClusterCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Supervisor
import Synchronization

/// The webhook ingress (`gateway.mode: "webhook"`): where the platform POSTs the bot's events.
///
/// Every request is verified before its body is parsed: a body over `webhook.maxBodyBytes` is refused (413), a
/// missing or malformed signature or timestamp, a timestamp outside `webhook.timestampWindow` (a replay) or a
/// signature that is not the app key's over the timestamp and the raw body is refused (401), and a signed body
/// that is not a well-formed event is refused (400). A refused request reaches nothing else and is counted.
///
/// op 13 (URL validation) is answered with the signature of `event_ts + plain_token`. A dispatch is
/// acknowledged (op 12, d 0) once it is written to cluster.sqlite (one commit for every request that came while
/// the last one ran) and in its shard's stream, handed to the shard's worker when one is attached. The stream
/// keeps it until the worker has handled it, and the row until then, so neither a worker's crash nor the
/// supervisor's after the acknowledgement loses it (a restarted supervisor reads the rows back). While the shard's worker is away (restarting, rolling) its events wait in the stream. With the streams
/// full (`webhook.queueLimit`, `webhook.streamLimit`) the answer is 503 with op 12 d 1, and the platform delivers
/// again later (never a silent drop); a redelivery of an event still in its stream adds nothing.
public final class WebhookIngress: Service, Sendable {
    let router: WebhookRouter
    let metrics: ClusterMetrics
    let config: WebhookConfig
    let key: WebhookKey
    let logger: Logger
    /// The bound port, once listening.
    public let listening = AsyncSignal<Int>()

    /// Why the ingress cannot start.
    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    /// An ingress for the app whose secret is `secret`, handing events to `router`.
    public init(router: WebhookRouter, metrics: ClusterMetrics, config: WebhookConfig, secret: Secret, logger: Logger) throws {
        guard let key = WebhookKey(secret: secret) else { throw SetupError(description: "app.secret: webhook mode needs the app secret (the signing key is derived from it)") }
        self.router = router
        self.metrics = metrics
        self.config = config
        self.key = key
        self.logger = logger
    }

    /// Serves until cancelled. A port that cannot be bound, or TLS files that cannot be read, end it with the reason.
    public func run() async throws {
        let routes = Router(context: BasicRequestContext.self)
        routes.post(RouterPath(config.path)) { request, _ in await self.answer(request) }
        let server: HTTPServerBuilder
        let scheme: String
        do {
            if let files = config.tls {
                server = try .tls(.http1(configuration: .init(idleTimeout: Self.idleTimeout)), tlsConfiguration: try Self.serverTLS(files))
                scheme = "https"
            } else {
                server = .http1(configuration: .init(idleTimeout: Self.idleTimeout))
                scheme = "http"
            }
        } catch {
            listening.fail(error)
            throw error
        }
        do {
            try await HTTPServing.run(routes, server: server, address: config.listen, what: "webhook", scheme: scheme, listening: listening, logger: logger)
        } catch {
            throw SetupError(description: "webhook: cannot serve on \(config.listen) (webhook.listen): \(error)")
        }
    }

    /// The callback URL this process reaches the ingress at on `port` (loopback for a wildcard listen address): what
    /// the embedded platform is told.
    public func localCallbackURL(port: Int) -> String {
        let host = ["0.0.0.0", "::"].contains(config.listen.host) ? "127.0.0.1" : config.listen.host
        return "\(config.tls == nil ? "http" : "https")://\(ListenAddress(host: host, port: port))\(config.path)"
    }

    /// A connection with nothing read or written for this long is closed.
    static let idleTimeout: TimeAmount = .seconds(30)
    /// How long a request's whole body may take to arrive.
    static let bodyDeadline: Duration = .seconds(5)

    /// The server's TLS from `webhook.tls`.
    static func serverTLS(_ files: TLSFiles) throws -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificate)
        } catch {
            throw SetupError(description: "webhook.tls.certificate: cannot read PEM certificates from \(files.certificate): \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(file: files.key, format: .pem)
        } catch {
            throw SetupError(description: "webhook.tls.key: cannot read a PEM private key from \(files.key): \(error)")
        }
        guard !chain.isEmpty else { throw SetupError(description: "webhook.tls.certificate: \(files.certificate) holds no certificate") }
        return TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    }

    static let signatureHeader = HTTPField.Name("X-Signature-Ed25519")!
    static let timestampHeader = HTTPField.Name("X-Signature-Timestamp")!

    /// What the ingress answers a request, and why.
    enum Verdict: Equatable {
        case refused(HTTPResponse.Status, ClusterMetrics.WebhookOutcome, String)
        case validation(plainToken: String, eventTS: String)
        case dispatch(id: String, name: String, route: WebhookRoute)
        /// Another op, signed and well formed: acknowledged, nothing done (the platform sends only 0 and 13).
        case ignored
    }

    /// Checks a request in the order that does the least work for a forger: size, headers, time, signature, JSON.
    func verdict(body: [UInt8], signature: String?, timestamp: String?) -> Verdict {
        guard let timestamp, (1...12).contains(timestamp.utf8.count), timestamp.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
            let seconds = Int64(timestamp)
        else {
            return .refused(.unauthorized, .refusedTimestamp, "X-Signature-Timestamp must be unix seconds")
        }
        let now = Int64(Date().timeIntervalSince1970)
        guard abs(now - seconds) <= config.timestampWindow.nanoseconds / 1_000_000_000 else {
            return .refused(.unauthorized, .refusedTimestamp, "X-Signature-Timestamp is outside the accepted window")
        }
        guard let signature, let bytes = WebhookKey.bytes(hex: signature), bytes.count == 64 else {
            return .refused(.unauthorized, .refusedSignature, "X-Signature-Ed25519 must be 64 bytes of hex")
        }
        guard key.verify(signature: bytes, timestamp: Array(timestamp.utf8), body: body) else {
            return .refused(.unauthorized, .refusedSignature, "the signature does not verify")
        }
        let document: JSONValue
        do {
            document = try JSONValue.parse(bytes: body)
        } catch {
            return .refused(.badRequest, .refusedPayload, "the body is not JSON: \(error)")
        }
        guard let op = document["op"]?.intValue else { return .refused(.badRequest, .refusedPayload, "op is missing") }
        switch op {
        case 13:
            guard let token = document["d"]?["plain_token"]?.stringValue, let ts = document["d"]?["event_ts"]?.stringValue,
                token.utf8.count <= 256, ts.utf8.count <= 32
            else {
                return .refused(.badRequest, .refusedPayload, "op 13 needs d.plain_token and d.event_ts")
            }
            return .validation(plainToken: token, eventTS: ts)
        case 0:
            guard let id = document["id"]?.stringValue, (1...256).contains(id.utf8.count),
                let name = document["t"]?.stringValue, (1...64).contains(name.utf8.count),
                let d = document["d"], case .object = d
            else {
                return .refused(.badRequest, .refusedPayload, "a dispatch needs id, t and a d object")
            }
            return .dispatch(id: id, name: name, route: WebhookRoute.of(d))
        default:
            return .ignored
        }
    }

    /// Requests being answered now: past `maxInFlight` the answer is 503 before the body is read (each holds up to
    /// `webhook.maxBodyBytes` in memory, and any host that reaches the port can open connections).
    let inFlight = Atomic<Int>(0)
    static let maxInFlight = 256
    static let contentLength = HTTPField.Name("Content-Length")!

    func answer(_ request: Request) async -> Response {
        guard inFlight.add(1, ordering: .relaxed).newValue <= Self.maxInFlight else {
            inFlight.subtract(1, ordering: .relaxed)
            metrics.webhookRequest(.retryBusy)
            return Response.json(Self.retry, status: .serviceUnavailable)
        }
        defer { inFlight.subtract(1, ordering: .relaxed) }
        let tooLarge = Response.text("the body is over \(config.maxBodyBytes) bytes (webhook.maxBodyBytes)\n", status: .contentTooLarge)
        if let length = request.headers[Self.contentLength].flatMap(Int.init), length > config.maxBodyBytes {
            metrics.webhookRequest(.refusedSize)
            return tooLarge
        }
        let body: ByteBuffer
        do {
            // With a deadline for the whole body: a slow upload (a byte now and then keeps a connection from idling
            // out) holds one of the requests in progress only this long.
            let limit = config.maxBodyBytes
            body = try await withTimeout(Self.bodyDeadline, "the request body") {
                var request = request
                return try await request.collectBody(upTo: limit)
            }
        } catch is TimeoutError {
            metrics.webhookRequest(.refusedSize)
            return Response.text("the body did not arrive within \(DurationFormat.human(Self.bodyDeadline))\n", status: .requestTimeout)
        } catch {
            metrics.webhookRequest(.refusedSize)
            return tooLarge
        }
        let bytes = Array(body.readableBytesView)
        let verdict = verdict(
            body: bytes,
            signature: request.headers[Self.signatureHeader], timestamp: request.headers[Self.timestampHeader]
        )
        switch verdict {
        case .refused(let status, let outcome, let why):
            metrics.webhookRequest(outcome)
            return Response.text(why + "\n", status: status)
        case .validation(let token, let ts):
            metrics.webhookRequest(.validated)
            var json = "{\"plain_token\":"
            JSONValue.writeQuoted(token, into: &json)
            json += ",\"signature\":\"\(key.validationSignature(eventTS: ts, plainToken: token))\"}"
            return Response.json(json)
        case .ignored:
            return Response.json(Self.ack)
        case .dispatch(let id, let name, let route):
            // The body goes on as it came (it parsed as JSON, so it is UTF-8): the worker reads what was signed.
            switch await router.offer(route: route, eventID: id, name: name, body: String(decoding: bytes, as: UTF8.self)) {
            case .accepted:
                metrics.webhookRequest(.acked)
                return Response.json(Self.ack)
            case .full:
                metrics.webhookRequest(.retryFull)
                return Response.json(Self.retry, status: .serviceUnavailable)
            case .notRecorded:
                metrics.webhookRequest(.retryNotRecorded)
                return Response.json(Self.retry, status: .serviceUnavailable)
            }
        }
    }

    /// Acknowledged: the platform does not deliver it again.
    static let ack = "{\"op\":12,\"d\":0}"
    /// Not acknowledged: the platform delivers it again, with the same id.
    static let retry = "{\"op\":12,\"d\":1}"
}
