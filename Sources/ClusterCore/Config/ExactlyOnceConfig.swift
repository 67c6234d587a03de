/// The shared record of handled events.
public struct ExactlyOnceConfig: Sendable {
    /// How long a handled event id is remembered.
    public var ttl: Duration
}

extension ExactlyOnceConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(ttl: reader.duration("ttl", default: .seconds(600), min: .seconds(1)))
        reader.finish()
    }
}
