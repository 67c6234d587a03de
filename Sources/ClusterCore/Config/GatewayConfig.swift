/// How the platform delivers events.
public enum GatewayMode: String, Sendable, Equatable, CaseIterable {
    /// Each worker holds a websocket session of its shard.
    case websocket
    /// The platform POSTs every event to the supervisor's ingress (`webhook`), which hands it to its shard's worker.
    case webhook
}

/// Where the gateway and OpenAPI are.
public struct GatewayConfig: Sendable {
    /// How events arrive: websocket sessions (the default) or HTTP callbacks.
    public var mode: GatewayMode
    /// Run the bundled emulator in-process and point every worker at it.
    public var embedded: Bool
    /// The OpenAPI base URL (`https://api.sgroup.qq.com`, or `http://127.0.0.1:8080` for an emulator elsewhere).
    public var url: String?
    /// The access-token endpoint (`https://bots.qq.com/app/getAppAccessToken`).
    public var tokenURL: String?
    /// The intents each shard identifies with.
    public var intents: GatewayIntents
    /// A PEM file of certificate authorities trusted besides the system's (a private gateway, a test CA).
    public var trustRoots: String?

    public static let platformURL = "https://api.sgroup.qq.com"
    public static let platformTokenURL = "https://bots.qq.com/app/getAppAccessToken"
}

extension GatewayConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        let mode = reader.mode("mode")
        let embedded = reader.bool("embedded", default: true)
        let url = reader.url("url", schemes: ["http", "https"], default: embedded ? nil : GatewayConfig.platformURL)
        let tokenURL = reader.url("tokenURL", schemes: ["http", "https"], default: embedded ? nil : GatewayConfig.platformTokenURL)
        let intents = reader.intents("intents", default: GatewayIntents.defaultGranted.union(.groupAndC2CEvent))
        let trustRoots = reader.readableFile("trustRoots")
        if embedded && (reader.raw("url") != nil || reader.raw("tokenURL") != nil) {
            reader.report("embedded", "is true, so url and tokenURL would be ignored: set \"embedded\": false to use them")
        }
        reader.finish()
        self.init(mode: mode, embedded: embedded, url: url, tokenURL: tokenURL, intents: intents, trustRoots: trustRoots)
    }
}

extension ConfigReader {
    /// How events arrive: `"websocket"` (the default) or `"webhook"`.
    func mode(_ key: String) -> GatewayMode {
        GatewayMode(rawValue: choice(key, default: GatewayMode.websocket.rawValue, among: GatewayMode.allCases.map(\.rawValue))) ?? .websocket
    }

    /// Reads a list of intent names; an unknown name is reported with the nearest known one.
    func intents(_ key: String, default defaultValue: GatewayIntents) -> GatewayIntents {
        var result = defaultValue
        if let value = raw(key) {
            if case .array(let items) = value {
                var intents: GatewayIntents = []
                for (index, item) in items.enumerated() {
                    if let name = item.stringValue, let intent = GatewayIntents(name: name) {
                        intents.insert(intent)
                    } else {
                        let known = GatewayIntents.names.map(\.name)
                        let got = item.stringValue.map { "\"\($0)\"" } ?? item.kindDescription
                        let hint = item.stringValue.flatMap { nearest($0, among: known) }.map { "; did you mean \"\($0)\"?" } ?? ""
                        report("\(key)[\(index)]", "unknown intent \(got)\(hint)")
                    }
                }
                result = intents
            } else {
                report(key, "must be an array of intent names such as [\"PUBLIC_GUILD_MESSAGES\"], got \(value.kindDescription)")
            }
        }
        recordNormalized(key, .array(result.nameList.map { .string($0) }))
        return result
    }
}
