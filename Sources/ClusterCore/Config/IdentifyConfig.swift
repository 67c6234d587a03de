/// Identify pacing.
public struct IdentifyConfig: Sendable {
    /// The platform's identify window (5 s). With the embedded emulator, its own window is used instead.
    public var window: Duration
    /// Added to every identify window, to absorb the time between a grant and the server seeing the Identify.
    public var margin: Duration
    /// How long a granted slot may stay unused before the ledger counts it spent.
    public var slotTimeout: Duration
}

extension IdentifyConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(
            window: reader.duration("window", default: .seconds(5), min: .zero, max: .seconds(60)),
            margin: reader.duration("margin", default: .milliseconds(50), max: .seconds(5)),
            slotTimeout: reader.duration("slotTimeout", default: .seconds(10), min: .milliseconds(100))
        )
        reader.finish()
    }
}
