/// How many shards, and how they map to workers.
public struct ShardsConfig: Sendable {
    /// How the shard count is given: a fixed number, or `auto`.
    public enum Count: Sendable, Equatable {
        case fixed(Int)
        /// The platform's recommendation from `/gateway/bot`.
        case auto
    }

    public var count: Count
    public static let maxCount = 1024
}

extension ShardsConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        var count = ShardsConfig.Count.fixed(4)
        switch reader.raw("count") {
        case .string("auto"):
            count = .auto
        case .some(let value):
            if let n = value.intValue, (1...ShardsConfig.maxCount).contains(n) {
                count = .fixed(n)
            } else if let n = value.intValue {
                reader.report("count", "must be 1...\(ShardsConfig.maxCount), got \(n)")
            } else {
                let got = value.stringValue.map { "\"\($0)\"" } ?? value.kindDescription
                reader.report("count", "must be 1...\(ShardsConfig.maxCount) or \"auto\", got \(got)")
            }
        case .none:
            break
        }
        switch count {
        case .auto: reader.recordNormalized("count", .string("auto"))
        case .fixed(let n): reader.recordNormalized("count", .number(Double(n)))
        }
        reader.finish()
        self.init(count: count)
    }
}
