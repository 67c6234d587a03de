/// The shared user cache.
public struct CacheConfig: Sendable {
    public var lruSize: Int
    public var ttl: Duration
    public var flushSize: Int
    public var flushInterval: Duration
    /// Ask the OpenAPI for users missing from the cache (spends rate budget).
    public var fetchMissing: Bool
}

extension CacheConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        self.init(
            lruSize: reader.int("lruSize", default: 10_000, range: 1...10_000_000),
            ttl: reader.duration("ttl", default: .seconds(300)),
            flushSize: reader.int("flushSize", default: 256, range: 1...100_000),
            flushInterval: reader.duration("flushInterval", default: .milliseconds(50), min: .milliseconds(1)),
            fetchMissing: reader.bool("fetchMissing", default: false)
        )
        reader.finish()
    }
}
