/// The restart policy for crashed workers.
public struct RestartConfig: Sendable {
    public var baseDelay: Duration
    public var maxDelay: Duration
    public var multiplier: Double
    /// Fraction of each delay drawn at random (0 = none, 0.2 = up to 20% either way).
    public var jitter: Double
    /// How long a worker must stay ready before its backoff resets.
    public var resetAfter: Duration
    /// More than this many crashes within `crashWindow` marks a worker failed.
    public var maxCrashes: Int
    public var crashWindow: Duration
}

extension RestartConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(
            baseDelay: reader.duration("baseDelay", default: .milliseconds(500), min: .milliseconds(1)),
            maxDelay: reader.duration("maxDelay", default: .seconds(30), min: .milliseconds(1)),
            multiplier: reader.double("multiplier", default: 2, range: 1...10),
            jitter: reader.double("jitter", default: 0.2, range: 0...1),
            resetAfter: reader.duration("resetAfter", default: .seconds(30)),
            maxCrashes: reader.int("maxCrashes", default: 5, range: 1...1000),
            crashWindow: reader.duration("crashWindow", default: .seconds(60), min: .milliseconds(1))
        )
        if maxDelay < baseDelay { reader.report("maxDelay", "must not be shorter than baseDelay") }
        reader.finish()
    }
}
