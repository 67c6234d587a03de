#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fixed-size histogram of durations on a log scale (1 µs to about 2 minutes, 8 buckets per doubling, so a
/// percentile is within 9% of the truth), for p50 and p99 without keeping samples.
public struct LatencyHistogram: Sendable, Equatable {
    static let subBuckets = 8.0
    static let bucketCount = 27 * 8
    var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
    public private(set) var count: UInt64 = 0
    public private(set) var max: Duration = .zero

    /// An empty histogram.
    public init() {}

    static func bucket(of duration: Duration) -> Int {
        let micros = Swift.max(1.0, Double(duration.nanoseconds) / 1000)
        return Swift.min(bucketCount - 1, Int(log2(micros) * subBuckets))
    }

    static func upperBound(of bucket: Int) -> Duration {
        .nanoseconds(Int64(exp2(Double(bucket + 1) / subBuckets) * 1000))
    }

    /// Adds one sample of `duration`.
    public mutating func record(_ duration: Duration) {
        counts[Self.bucket(of: duration)] += 1
        count += 1
        if duration > max { max = duration }
    }

    /// Adds every sample of `other` (its counts and its maximum).
    public mutating func merge(_ other: LatencyHistogram) {
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        if other.max > max { max = other.max }
    }

    /// The duration below which `fraction` of the samples fall (a bucket's upper bound), or nil when empty.
    public func percentile(_ fraction: Double) -> Duration? {
        guard count > 0 else { return nil }
        let target = Swift.max(1, UInt64((Double(count) * fraction).rounded(.up)))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= target { return Swift.min(Self.upperBound(of: i), max) }
        }
        return max
    }
}
