/// Rescaling.
public struct ScaleConfig: Sendable {
    /// Reshard to the recommendation when a shard is closed with 4011.
    public var reshardOn4011: Bool
    /// How long a new generation has to become ready before the switch is abandoned.
    public var readyTimeout: Duration
}

extension ScaleConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(
            reshardOn4011: reader.bool("reshardOn4011", default: true),
            readyTimeout: reader.duration("readyTimeout", default: .seconds(120), min: .milliseconds(100))
        )
        reader.finish()
    }
}
