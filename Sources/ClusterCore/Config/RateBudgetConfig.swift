/// The cluster-wide REST budget.
public struct RateBudgetConfig: Sendable {
    /// Requests per second for the whole bot.
    public var globalRate: Double
    /// Requests that may be sent at once after a quiet period.
    public var globalBurst: Int
    /// Tokens a worker takes per lease.
    public var leaseSize: Int
    /// How long a leased token stays valid.
    public var leaseTTL: Duration
}

extension RateBudgetConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        let global = reader.object("global")
        let globalRate = global.double("rate", default: 50, range: 0.001...1_000_000)
        let globalBurst = global.int("burst", default: 10, range: 1...1_000_000)
        global.finish()
        let lease = reader.object("lease")
        self.init(
            globalRate: globalRate,
            globalBurst: globalBurst,
            leaseSize: lease.int("size", default: 4, range: 1...10_000),
            leaseTTL: lease.duration("ttl", default: .milliseconds(250), min: .milliseconds(1))
        )
        lease.finish()
        reader.finish()
    }
}
