/// The bot's credentials on the platform.
public struct AppConfig: Sendable {
    public var id: String
    public var secret: Secret

    /// Credentials the embedded emulator accepts when cluster.json names none (a local development bot).
    public static let emulatorDefaultID = "102000001"
    public static let emulatorDefaultSecret = "emulator-development-secret"
}

extension AppConfig {
    /// Reads the section from `reader`; without the embedded emulator, an id and a secret are required.
    init(reading reader: ConfigReader, embedded: Bool) {
        let appIDDefault = embedded ? AppConfig.emulatorDefaultID : ""
        let appID = reader.string("id", default: appIDDefault)
        let secret = reader.secret("secret", default: Secret(embedded ? AppConfig.emulatorDefaultSecret : ""))
        if !embedded {
            if appID.isEmpty { reader.report("id", "is required when the gateway is not embedded") }
            if secret.reveal().isEmpty && secret.environmentVariable == nil && reader.issues.allSatisfy({ $0.path != "app.secret" }) {
                reader.report("secret", "is required when the gateway is not embedded (use \"env:NAME\" to keep it out of the file)")
            }
        }
        reader.finish()
        self.init(id: appID, secret: secret)
    }
}
