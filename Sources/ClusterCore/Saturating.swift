/// Arithmetic that clamps at the ends of the range instead of trapping or wrapping: for values that come from a
/// peer or the network (a `Retry-After`, a lease count, a seq), where a trap takes the process down and a wrap
/// turns "wait a very long time" into "retry at once".
extension Int64 {
    /// `self + other`, clamped to `Int64.min...Int64.max`.
    @inlinable
    public func saturatingAdd(_ other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        guard overflow else { return sum }
        return other > 0 ? .max : .min
    }

    /// `self - other`, clamped to `Int64.min...Int64.max`.
    @inlinable
    public func saturatingSubtract(_ other: Int64) -> Int64 {
        let (difference, overflow) = subtractingReportingOverflow(other)
        guard overflow else { return difference }
        return other < 0 ? .max : .min
    }

    /// `self * other`, clamped to `Int64.min...Int64.max`.
    @inlinable
    public func saturatingMultiply(_ other: Int64) -> Int64 {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        guard overflow else { return product }
        return (self < 0) == (other < 0) ? .max : .min
    }
}

extension Duration {
    /// A duration read from the network or a peer, clamped to `range` (a NaN or infinite count of seconds reads as
    /// the low end): no later arithmetic on it can overflow, and no peer can ask for a wait of years.
    public static func clamped(seconds: Double, to range: ClosedRange<Duration>) -> Duration {
        guard seconds.isFinite else { return range.lowerBound }
        if seconds <= range.lowerBound.seconds { return range.lowerBound }
        if seconds >= range.upperBound.seconds { return range.upperBound }
        return .nanoseconds(Int64(seconds * 1e9))
    }

    /// `milliseconds` from a peer, clamped to `range`.
    public static func clamped(milliseconds: Int64, to range: ClosedRange<Duration>) -> Duration {
        let value = Duration.nanoseconds(milliseconds.saturatingMultiply(1_000_000))
        return min(max(value, range.lowerBound), range.upperBound)
    }
}

extension Duration {
    /// A retry's wait: `base` doubled for each of `attempts` past the first (0 and 1 both wait `base`), never more
    /// than `cap`; any count of attempts is safe.
    public static func backoff(_ base: Duration, attempts: Int, cap: Duration) -> Duration {
        min(cap, base * (1 << min(max(attempts - 1, 0), 20)))
    }
}
