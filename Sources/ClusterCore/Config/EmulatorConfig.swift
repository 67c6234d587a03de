/// The bundled gateway emulator.
public struct EmulatorConfig: Sendable {
    public var host: String
    public var port: Int
    public var tokenLifetime: Duration
    public var heartbeatInterval: Duration
    /// A session whose client sends no heartbeat for this long is closed.
    public var heartbeatTimeout: Duration
    /// How long a session stays resumable after its socket closes.
    public var sessionTTL: Duration
    /// Dispatches each session keeps for Resume.
    public var resumeBuffer: Int
    public var grantedIntents: GatewayIntents
    public var sessionStartTotal: Int
    public var sessionStartRemaining: Int
    public var sessionStartResetAfter: Duration
    public var maxConcurrency: Int
    /// The identify window (5 s on the platform; shorter in tests; 0 turns the per-bucket limit off).
    public var identifyWindow: Duration
    public var guildsPerShard: Int
    /// REST requests per second for the whole app before 429.
    public var restRate: Double
    /// Delivered messages without a reply after this long count as unreplied.
    public var unrepliedGrace: Duration
    public var traffic: TrafficConfig
    /// Serve https and wss with this certificate and key (PEM files) instead of http and ws.
    public var tls: TLSFiles?
    /// The bearer token the admin API (`POST /emulator/...`) requires; without one the admin API is off.
    public var adminToken: Secret?
    /// How events reach the bot: websocket sessions, or signed POSTs to a callback URL.
    public var delivery: GatewayMode
    public var webhook: EmulatorWebhookConfig
}

/// How the emulator delivers by webhook, as the platform does: op 13 validation first, then every dispatch signed,
/// redelivered with the same id until acknowledged.
public struct EmulatorWebhookConfig: Sendable {
    /// The callback URL; without one, deliveries wait until it is set (`POST /emulator/webhook`, or the embedded
    /// gateway's own ingress).
    public var url: String?
    /// Deliveries of one event after the first, before it is given up (and counted).
    public var retryLimit: Int
    /// The first retry's delay; each next one doubles, up to `retryMax`.
    public var retryBase: Duration
    public var retryMax: Duration
    /// POSTs in flight at once.
    public var concurrency: Int
    /// How long a POST may take before it counts as not acknowledged.
    public var timeout: Duration
    /// A PEM file of certificate authorities trusted for an https callback URL, besides the system's.
    public var trustRoots: String?
}

/// A certificate chain and its private key, as PEM files.
public struct TLSFiles: Sendable, Equatable {
    public var certificate: String
    public var key: String

    /// The PEM files at the paths `certificate` and `key`.
    public init(certificate: String, key: String) {
        self.certificate = certificate
        self.key = key
    }
}

extension ConfigReader {
    /// A `{"certificate", "key"}` pair of readable PEM files under `key`, when the key is there; half a pair, or a
    /// file that cannot be read, is reported.
    func tlsFiles(_ key: String) -> TLSFiles? {
        guard raw(key) != nil else { return nil }
        let reader = object(key)
        defer { reader.finish() }
        let certificate = reader.readableFile("certificate")
        let privateKey = reader.readableFile("key")
        if let certificate, let privateKey { return TLSFiles(certificate: certificate, key: privateKey) }
        if reader.issues.allSatisfy({ !$0.path.hasPrefix(keyPath(key)) }) {
            reader.report(nil, "needs both certificate and key (PEM files)")
        }
        return nil
    }
}

/// The emulator's simulated community and its message traffic.
public struct TrafficConfig: Sendable {
    public var guilds: Int
    public var channelsPerGuild: Int
    public var users: Int
    /// AT_MESSAGE_CREATE per second (0 = none until changed through the admin API).
    public var rate: Double
    /// Messages sent at once every `burstEvery` (0 = no bursts).
    public var burstSize: Int
    public var burstEvery: Duration
    /// GROUP_AT_MESSAGE_CREATE and C2C_MESSAGE_CREATE per second.
    public var groupRate: Double
    public var c2cRate: Double
    /// Share of users who change their username, each every `renameEvery`.
    public var renameShare: Double
    public var renameEvery: Duration
    /// Share of messages the platform pushes twice.
    public var duplicateShare: Double
    public var seed: Int
}

extension EmulatorConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        let start = reader.object("sessionStartLimit")
        let total = start.int("total", default: 1000, range: 0...10_000_000)
        let remaining = start.int("remaining", default: total, range: 0...10_000_000)
        let resetAfter = start.duration("resetAfter", default: .seconds(86_400), max: .seconds(86_400 * 30))
        let maxConcurrency = start.int("maxConcurrency", default: 1, range: 1...1024)
        start.finish()
        let tr = reader.object("traffic")
        let traffic = TrafficConfig(
            guilds: tr.int("guilds", default: 16, range: 1...1_000_000),
            channelsPerGuild: tr.int("channelsPerGuild", default: 2, range: 1...1000),
            users: tr.int("users", default: 200, range: 1...10_000_000),
            rate: tr.double("rate", default: 10, range: 0...1_000_000),
            burstSize: tr.int("burstSize", default: 0, range: 0...10_000_000),
            burstEvery: tr.duration("burstEvery", default: .seconds(30), min: .milliseconds(10)),
            groupRate: tr.double("groupRate", default: 0.5, range: 0...1_000_000),
            c2cRate: tr.double("c2cRate", default: 0.5, range: 0...1_000_000),
            renameShare: tr.double("renameShare", default: 0.05, range: 0...1),
            renameEvery: tr.duration("renameEvery", default: .seconds(20), min: .milliseconds(10)),
            duplicateShare: tr.double("duplicateShare", default: 0, range: 0...1),
            seed: tr.int("seed", default: 1, range: 0...Int(Int32.max))
        )
        tr.finish()
        let tls = reader.tlsFiles("tls")
        let adminToken = reader.optionalSecret("adminToken")
        let delivery = reader.mode("delivery")
        let wh = reader.object("webhook")
        let webhook = EmulatorWebhookConfig(
            url: wh.url("url", schemes: ["http", "https"], default: nil),
            retryLimit: wh.int("retryLimit", default: 8, range: 0...1000),
            retryBase: wh.duration("retryBase", default: .milliseconds(200), min: .milliseconds(1), max: .seconds(60)),
            retryMax: wh.duration("retryMax", default: .seconds(5), min: .milliseconds(1), max: .seconds(3600)),
            concurrency: wh.int("concurrency", default: 32, range: 1...1024),
            timeout: wh.duration("timeout", default: .seconds(5), min: .milliseconds(10), max: .seconds(120)),
            trustRoots: wh.readableFile("trustRoots")
        )
        wh.finish()
        self.init(
            host: reader.string("host", default: "127.0.0.1"),
            port: reader.int("port", default: 0, range: 0...65535),
            tokenLifetime: reader.duration("tokenLifetime", default: .seconds(7200), min: .seconds(1)),
            heartbeatInterval: reader.duration("heartbeatInterval", default: .seconds(45), min: .milliseconds(10)),
            heartbeatTimeout: reader.duration("heartbeatTimeout", default: .seconds(60), min: .milliseconds(10)),
            sessionTTL: reader.duration("sessionTTL", default: .seconds(120), min: .milliseconds(10)),
            resumeBuffer: reader.int("resumeBuffer", default: 20_000, range: 1...10_000_000),
            grantedIntents: reader.intents("grantedIntents", default: GatewayIntents.defaultGranted.union([.groupAndC2CEvent, .directMessage, .interaction])),
            sessionStartTotal: total,
            sessionStartRemaining: remaining,
            sessionStartResetAfter: resetAfter,
            maxConcurrency: maxConcurrency,
            identifyWindow: reader.duration("identifyWindow", default: .seconds(5)),
            guildsPerShard: reader.int("guildsPerShard", default: 4, range: 1...1_000_000),
            restRate: reader.double("restRate", default: 50, range: 0.001...10_000_000),
            unrepliedGrace: reader.duration("unrepliedGrace", default: .seconds(10), min: .milliseconds(1)),
            traffic: traffic,
            tls: tls,
            adminToken: adminToken,
            delivery: delivery,
            webhook: webhook
        )
        if heartbeatTimeout <= heartbeatInterval {
            reader.report("heartbeatTimeout", "must be longer than heartbeatInterval (\(DurationFormat.format(heartbeatInterval)))")
        }
        if remaining > total { start.report("remaining", "must not exceed total (\(total)), got \(remaining)") }
        reader.finish()
    }
}
