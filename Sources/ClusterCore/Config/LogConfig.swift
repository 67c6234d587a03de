/// Logging.
public struct LogConfig: Sendable {
    public var level: String
    public static let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
}

extension LogConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(level: reader.choice("level", default: "info", among: LogConfig.levels))
        reader.finish()
    }
}
