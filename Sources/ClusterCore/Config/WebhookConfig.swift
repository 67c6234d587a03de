/// The webhook ingress (`gateway.mode: "webhook"`): where the platform POSTs events, and what it accepts.
public struct WebhookConfig: Sendable {
    public var listen: ListenAddress
    /// The callback path the platform is configured with.
    public var path: String
    /// Serve HTTPS with this certificate and key; nil serves plain HTTP (behind a TLS-terminating proxy).
    public var tls: TLSFiles?
    /// Requests with a longer body are refused (413) before anything else is done.
    public var maxBodyBytes: Int
    /// How far `X-Signature-Timestamp` may be from this host's clock, either way (older ones are replays).
    public var timestampWindow: Duration
    /// Events acknowledged and not yet handled, cluster-wide; past it the ingress asks the platform to retry.
    public var queueLimit: Int
    /// The same, for one shard (a shard whose worker stays away fills its own room, not every shard's).
    public var streamLimit: Int

    public static let defaultListen = "0.0.0.0:8443"
    public static let defaultPath = "/qqbot/callback"
}

extension WebhookConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        var listen = ListenAddress(host: "0.0.0.0", port: 8443)
        switch ListenAddress.parse(reader.string("listen", default: Self.defaultListen)) {
        case .success(let address): listen = address
        case .failure(let error): reader.report("listen", "\(error)")
        }
        let path = reader.string("path", default: Self.defaultPath)
        if !path.hasPrefix("/") || path.contains(" ") || path.contains("?") {
            reader.report("path", "must be an absolute path such as \"\(Self.defaultPath)\", got \"\(path.prefix(80))\"")
        }
        let tls = reader.tlsFiles("tls")
        self.init(
            listen: listen, path: path, tls: tls,
            maxBodyBytes: reader.int("maxBodyBytes", default: 256 * 1024, range: 1024...(512 * 1024)),
            timestampWindow: reader.duration("timestampWindow", default: .seconds(300), min: .seconds(1), max: .seconds(3600)),
            queueLimit: reader.int("queueLimit", default: 20_000, range: 1...10_000_000),
            streamLimit: reader.int("streamLimit", default: 2_000, range: 1...10_000_000)
        )
        reader.finish()
    }
}
