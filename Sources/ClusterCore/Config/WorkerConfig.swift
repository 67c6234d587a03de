/// The worker runtime.
public struct WorkerConfig: Sendable {
    /// At most this many handler invocations run at once; further events wait (backpressure).
    public var maxInFlight: Int
    /// How long a stopping worker waits for running handlers.
    public var drainTimeout: Duration
    /// How often a worker reports its session (id, seq) and gateway progress.
    public var reportInterval: Duration
}

extension WorkerConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(
            maxInFlight: reader.int("maxInFlight", default: 256, range: 1...65536),
            drainTimeout: reader.duration("drainTimeout", default: .seconds(5)),
            reportInterval: reader.duration("reportInterval", default: .milliseconds(100), min: .milliseconds(1), max: .seconds(60))
        )
        reader.finish()
    }
}
