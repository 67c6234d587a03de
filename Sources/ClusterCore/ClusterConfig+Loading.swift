#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether the secrets a configuration names must be resolvable: a command that never talks to the platform
/// (`status`, `stop`) reads the file without them, so an unset `env:` variable does not stop it.
public enum SecretResolution: Sendable {
    case required
    case notNeeded
}

extension ClusterConfig {
    /// The largest cluster.json read: far above any real configuration, far below what makes validation slow.
    public static let maxFileSize = 1 << 20

    /// Loads and validates a cluster.json file. Every problem is reported, each on its own line.
    public static func load(path: String, environment: [String: String], secrets: SecretResolution = .required) throws(ConfigError) -> ClusterConfig {
        let text: String
        switch readTextFile(path, limit: maxFileSize) {
        case .success(let contents): text = contents
        case .failure(.tooLarge(let size)):
            throw ConfigError(source: path, issues: [ConfigIssue(path: "", message: "the file is \(size) bytes; a configuration holds at most \(maxFileSize)")])
        case .failure(.unreadable(let reason)):
            throw ConfigError(source: path, issues: [ConfigIssue(path: "", message: "cannot read the file (\(reason))")])
        }
        return try parse(text, source: path, environment: environment, secrets: secrets)
    }

    /// Validates the text of a cluster.json.
    public static func parse(
        _ text: String, source: String = "cluster.json", environment: [String: String] = [:], secrets: SecretResolution = .required
    ) throws(ConfigError) -> ClusterConfig {
        guard text.utf8.count <= maxFileSize else {
            throw ConfigError(source: source, issues: [ConfigIssue(path: "", message: "the document is \(text.utf8.count) bytes; a configuration holds at most \(maxFileSize)")])
        }
        let document: JSONValue
        do {
            document = try JSONValue.parse(text)
        } catch {
            throw ConfigError(source: source, issues: [ConfigIssue(path: "", message: "malformed JSON at \(error)")])
        }
        let root = ConfigReader(document: document, environment: environment, secrets: secrets)
        let config = read(root)
        if !root.issues.isEmpty { throw ConfigError(source: source, issues: root.issues) }
        return config
    }

    /// The configuration with every default, as if cluster.json were `{}`.
    public static var defaults: ClusterConfig {
        read(ConfigReader(document: .object([]), environment: [:]))
    }

    static func read(_ root: ConfigReader) -> ClusterConfig {
        let gatewayReader = root.object("gateway")
        let embedded = gatewayReader.bool("embedded", default: true)
        let url = gatewayReader.url("url", schemes: ["http", "https"], default: embedded ? nil : GatewayConfig.platformURL)
        let tokenURL = gatewayReader.url("tokenURL", schemes: ["http", "https"], default: embedded ? nil : GatewayConfig.platformTokenURL)
        let intents = readIntents(gatewayReader, "intents", default: GatewayIntents.defaultGranted.union(.groupAndC2CEvent))
        let trustRoots = gatewayReader.readableFile("trustRoots")
        if embedded && (gatewayReader.raw("url") != nil || gatewayReader.raw("tokenURL") != nil) {
            gatewayReader.report("embedded", "is true, so url and tokenURL would be ignored: set \"embedded\": false to use them")
        }
        gatewayReader.finish()
        let gateway = GatewayConfig(embedded: embedded, url: url, tokenURL: tokenURL, intents: intents, trustRoots: trustRoots)

        let appReader = root.object("app")
        let appIDDefault = embedded ? AppConfig.emulatorDefaultID : ""
        let appID = appReader.string("id", default: appIDDefault)
        let secret = appReader.secret("secret", default: Secret(embedded ? AppConfig.emulatorDefaultSecret : ""))
        if !embedded {
            if appID.isEmpty { appReader.report("id", "is required when the gateway is not embedded") }
            if secret.reveal().isEmpty && secret.environmentVariable == nil && appReader.issues.allSatisfy({ $0.path != "app.secret" }) {
                appReader.report("secret", "is required when the gateway is not embedded (use \"env:NAME\" to keep it out of the file)")
            }
        }
        appReader.finish()
        let app = AppConfig(id: appID, secret: secret)

        let shardsReader = root.object("shards")
        var count = ShardsConfig.Count.fixed(4)
        switch shardsReader.raw("count") {
        case .string("auto"):
            count = .auto
        case .some(let value):
            if let n = value.intValue, (1...ShardsConfig.maxCount).contains(n) {
                count = .fixed(n)
            } else if let n = value.intValue {
                shardsReader.report("count", "must be 1...\(ShardsConfig.maxCount), got \(n)")
            } else {
                let got = value.stringValue.map { "\"\($0)\"" } ?? value.kindDescription
                shardsReader.report("count", "must be 1...\(ShardsConfig.maxCount) or \"auto\", got \(got)")
            }
        case .none:
            break
        }
        switch count {
        case .auto: shardsReader.recordNormalized("count", .string("auto"))
        case .fixed(let n): shardsReader.recordNormalized("count", .number(Double(n)))
        }
        shardsReader.finish()

        let sup = root.object("supervisor")
        let runDirectory = sup.string("runDirectory", default: "run")
        let socket = sup.string("socket", default: runDirectory + "/botcluster.sock")
        let heartbeat = sup.object("heartbeat")
        let heartbeatInterval = heartbeat.duration("interval", default: .milliseconds(250), min: .milliseconds(10), max: .seconds(60))
        let heartbeatMisses = heartbeat.int("misses", default: 4, range: 1...100)
        heartbeat.finish()
        let supervisor = SupervisorConfig(
            runDirectory: runDirectory,
            socket: socket,
            heartbeatInterval: heartbeatInterval,
            heartbeatMisses: heartbeatMisses,
            helloTimeout: sup.duration("helloTimeout", default: .seconds(10), min: .milliseconds(100)),
            readyTimeout: sup.duration("readyTimeout", default: .seconds(60), min: .milliseconds(100)),
            abortGrace: sup.duration("abortGrace", default: .milliseconds(500)),
            stopGrace: sup.duration("stopGrace", default: .seconds(10)),
            controlIdleTimeout: sup.duration("controlIdleTimeout", default: .seconds(60), min: .milliseconds(100))
        )
        if runDirectory.isEmpty { sup.report("runDirectory", "must not be empty") }
        if socket.utf8.count > maxSocketPathLength {
            sup.report(
                sup.raw("socket") != nil ? "socket" : "runDirectory",
                "the socket path \"\(socket)\" is \(socket.utf8.count) bytes; Unix-domain socket paths hold at most \(maxSocketPathLength). Use a shorter supervisor.runDirectory or supervisor.socket (a relative path is taken from the working directory)."
            )
        }
        sup.finish()

        let rs = root.object("restart")
        let restart = RestartConfig(
            baseDelay: rs.duration("baseDelay", default: .milliseconds(500), min: .milliseconds(1)),
            maxDelay: rs.duration("maxDelay", default: .seconds(30), min: .milliseconds(1)),
            multiplier: rs.double("multiplier", default: 2, range: 1...10),
            jitter: rs.double("jitter", default: 0.2, range: 0...1),
            resetAfter: rs.duration("resetAfter", default: .seconds(30)),
            maxCrashes: rs.int("maxCrashes", default: 5, range: 1...1000),
            crashWindow: rs.duration("crashWindow", default: .seconds(60), min: .milliseconds(1))
        )
        if restart.maxDelay < restart.baseDelay { rs.report("maxDelay", "must not be shorter than baseDelay") }
        rs.finish()

        let id = root.object("identify")
        let identify = IdentifyConfig(
            window: id.duration("window", default: .seconds(5), min: .zero, max: .seconds(60)),
            margin: id.duration("margin", default: .milliseconds(50), max: .seconds(5)),
            slotTimeout: id.duration("slotTimeout", default: .seconds(10), min: .milliseconds(100))
        )
        id.finish()

        let wk = root.object("worker")
        let worker = WorkerConfig(
            maxInFlight: wk.int("maxInFlight", default: 256, range: 1...65536),
            drainTimeout: wk.duration("drainTimeout", default: .seconds(5)),
            reportInterval: wk.duration("reportInterval", default: .milliseconds(100), min: .milliseconds(1), max: .seconds(60))
        )
        wk.finish()

        let ca = root.object("cache")
        let cache = CacheConfig(
            lruSize: ca.int("lruSize", default: 10_000, range: 1...10_000_000),
            ttl: ca.duration("ttl", default: .seconds(300)),
            flushSize: ca.int("flushSize", default: 256, range: 1...100_000),
            flushInterval: ca.duration("flushInterval", default: .milliseconds(50), min: .milliseconds(1)),
            fetchMissing: ca.bool("fetchMissing", default: false)
        )
        ca.finish()

        let rb = root.object("rateBudget")
        let global = rb.object("global")
        let globalRate = global.double("rate", default: 50, range: 0.001...1_000_000)
        let globalBurst = global.int("burst", default: 10, range: 1...1_000_000)
        global.finish()
        let lease = rb.object("lease")
        let rateBudget = RateBudgetConfig(
            globalRate: globalRate,
            globalBurst: globalBurst,
            leaseSize: lease.int("size", default: 4, range: 1...10_000),
            leaseTTL: lease.duration("ttl", default: .milliseconds(250), min: .milliseconds(1))
        )
        lease.finish()
        rb.finish()

        let eo = root.object("exactlyOnce")
        let exactlyOnce = ExactlyOnceConfig(ttl: eo.duration("ttl", default: .seconds(600), min: .seconds(1)))
        eo.finish()

        let sc = root.object("scale")
        let scale = ScaleConfig(
            reshardOn4011: sc.bool("reshardOn4011", default: true),
            readyTimeout: sc.duration("readyTimeout", default: .seconds(120), min: .milliseconds(100))
        )
        sc.finish()

        let em = root.object("emulator")
        let start = em.object("sessionStartLimit")
        let total = start.int("total", default: 1000, range: 0...10_000_000)
        let remaining = start.int("remaining", default: total, range: 0...10_000_000)
        let resetAfter = start.duration("resetAfter", default: .seconds(86_400), max: .seconds(86_400 * 30))
        let maxConcurrency = start.int("maxConcurrency", default: 1, range: 1...1024)
        start.finish()
        let tr = em.object("traffic")
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
        var tls: TLSFiles?
        if em.raw("tls") != nil {
            let tlsReader = em.object("tls")
            let certificate = tlsReader.readableFile("certificate")
            let key = tlsReader.readableFile("key")
            if let certificate, let key {
                tls = TLSFiles(certificate: certificate, key: key)
            } else if tlsReader.issues.allSatisfy({ !$0.path.hasPrefix("emulator.tls") }) {
                tlsReader.report(nil, "needs both certificate and key (PEM files)")
            }
            tlsReader.finish()
        }
        let adminToken = em.optionalSecret("adminToken")
        let emulator = EmulatorConfig(
            host: em.string("host", default: "127.0.0.1"),
            port: em.int("port", default: 0, range: 0...65535),
            tokenLifetime: em.duration("tokenLifetime", default: .seconds(7200), min: .seconds(1)),
            heartbeatInterval: em.duration("heartbeatInterval", default: .seconds(45), min: .milliseconds(10)),
            heartbeatTimeout: em.duration("heartbeatTimeout", default: .seconds(60), min: .milliseconds(10)),
            sessionTTL: em.duration("sessionTTL", default: .seconds(120), min: .milliseconds(10)),
            resumeBuffer: em.int("resumeBuffer", default: 20_000, range: 1...10_000_000),
            grantedIntents: readIntents(em, "grantedIntents", default: GatewayIntents.defaultGranted.union([.groupAndC2CEvent, .directMessage, .interaction])),
            sessionStartTotal: total,
            sessionStartRemaining: remaining,
            sessionStartResetAfter: resetAfter,
            maxConcurrency: maxConcurrency,
            identifyWindow: em.duration("identifyWindow", default: .seconds(5)),
            guildsPerShard: em.int("guildsPerShard", default: 4, range: 1...1_000_000),
            restRate: em.double("restRate", default: 50, range: 0.001...10_000_000),
            unrepliedGrace: em.duration("unrepliedGrace", default: .seconds(10), min: .milliseconds(1)),
            traffic: traffic,
            tls: tls,
            adminToken: adminToken
        )
        if emulator.heartbeatTimeout <= emulator.heartbeatInterval {
            em.report("heartbeatTimeout", "must be longer than heartbeatInterval (\(DurationFormat.format(emulator.heartbeatInterval)))")
        }
        if remaining > total { start.report("remaining", "must not exceed total (\(total)), got \(remaining)") }
        em.finish()

        let lg = root.object("log")
        let log = LogConfig(level: lg.choice("level", default: "info", among: LogConfig.levels))
        lg.finish()

        root.finish()
        return ClusterConfig(
            app: app, gateway: gateway, shards: ShardsConfig(count: count), supervisor: supervisor, restart: restart,
            identify: identify, worker: worker, cache: cache, rateBudget: rateBudget, exactlyOnce: exactlyOnce,
            scale: scale, emulator: emulator, log: log, normalized: .object(root.normalized)
        )
    }

    static func readIntents(_ reader: ConfigReader, _ key: String, default defaultValue: GatewayIntents) -> GatewayIntents {
        var result = defaultValue
        if let value = reader.raw(key) {
            if case .array(let items) = value {
                var intents: GatewayIntents = []
                for (index, item) in items.enumerated() {
                    if let name = item.stringValue, let intent = GatewayIntents(name: name) {
                        intents.insert(intent)
                    } else {
                        let known = GatewayIntents.names.map(\.name)
                        let got = item.stringValue.map { "\"\($0)\"" } ?? item.kindDescription
                        let hint = item.stringValue.flatMap { nearest($0, among: known) }.map { "; did you mean \"\($0)\"?" } ?? ""
                        reader.report("\(key)[\(index)]", "unknown intent \(got)\(hint)")
                    }
                }
                result = intents
            } else {
                reader.report(key, "must be an array of intent names such as [\"PUBLIC_GUILD_MESSAGES\"], got \(value.kindDescription)")
            }
        }
        reader.recordNormalized(key, .array(result.nameList.map { .string($0) }))
        return result
    }
}

/// The longest Unix-domain socket path Linux takes (`sizeof(sun_path) - 1`).
public let maxSocketPathLength = 107

/// Why a file could not be read whole.
public enum ReadFileError: Error, Sendable, Equatable {
    case unreadable(String)
    /// The file holds more than the limit (its size, or the limit + 1 when it kept growing).
    case tooLarge(Int)
}

/// Reads a whole text file of at most `limit` bytes.
public func readTextFile(_ path: String, limit: Int = .max) -> Result<String, ReadFileError> {
    guard let file = fopen(path, "rb") else { return .failure(.unreadable(lastErrorDescription())) }
    defer { fclose(file) }
    var info = stat()
    if fstat(fileno(file), &info) == 0, Int(info.st_size) > limit { return .failure(.tooLarge(Int(info.st_size))) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
        if bytes.count > limit { return .failure(.tooLarge(bytes.count)) }
        if n < chunk.count { break }
    }
    if ferror(file) != 0 { return .failure(.unreadable(lastErrorDescription())) }
    return .success(String(decoding: bytes, as: UTF8.self))
}

/// The text of the current `errno`.
public func lastErrorDescription() -> String {
    String(cString: strerror(errno))
}
