import ClusterCore

/// The generic cell rate algorithm: a token bucket of `rate` per second holding up to `burst`, kept as one
/// timestamp (the theoretical arrival time). Pure: the time is a parameter. Counts may come from a peer (a lease
/// returned), so every product and sum saturates instead of trapping.
public struct GCRA: Sendable, Equatable {
    /// Nanoseconds between tokens.
    public let interval: Int64
    /// How far ahead of now the arrival time may run: `burst` tokens' worth.
    public let tolerance: Int64
    /// Theoretical arrival time, nanoseconds of the monotonic clock (0: the bucket starts full).
    var tat: Int64 = 0

    /// A full bucket of `burst` tokens refilled at `rate` per second (both must be positive).
    public init(rate: Double, burst: Int) {
        precondition(rate > 0 && burst >= 1)
        interval = max(1, Int64((1e9 / rate).rounded()))
        tolerance = interval.saturatingMultiply(Int64(burst))
    }

    /// Takes `count` tokens if they are there now.
    public mutating func take(_ count: Int = 1, now: MonotonicInstant) -> Bool {
        let start = max(tat, now.nanoseconds)
        let next = start.saturatingAdd(cost(count))
        guard next.saturatingSubtract(now.nanoseconds) <= tolerance else { return false }
        tat = next
        return true
    }

    /// Reserves `count` tokens and returns when they may be used (now, or later when the bucket is empty).
    /// Reservations queue in order, so waiting callers are served first come, first served.
    public mutating func reserve(_ count: Int = 1, now: MonotonicInstant) -> MonotonicInstant {
        let start = max(tat, now.nanoseconds)
        tat = start.saturatingAdd(cost(count))
        return MonotonicInstant(nanoseconds: max(now.nanoseconds, tat.saturatingSubtract(tolerance)))
    }

    /// Gives back tokens taken but not used.
    public mutating func refund(_ count: Int, now: MonotonicInstant) {
        tat = max(now.nanoseconds.saturatingSubtract(tolerance), tat.saturatingSubtract(cost(count)))
    }

    /// Tokens available right now.
    public func available(now: MonotonicInstant) -> Int {
        let used = max(0, tat.saturatingSubtract(now.nanoseconds))
        return Int(max(0, tolerance - min(used, tolerance)) / interval)
    }

    /// When `count` tokens will be available (in the past when they are now).
    public func availableAt(_ count: Int) -> MonotonicInstant {
        MonotonicInstant(nanoseconds: tat.saturatingAdd(cost(count)).saturatingSubtract(tolerance))
    }

    /// How long until `count` tokens are available.
    public func wait(for count: Int = 1, now: MonotonicInstant) -> Duration {
        let start = max(tat, now.nanoseconds)
        return .nanoseconds(max(0, start.saturatingAdd(cost(count)).saturatingSubtract(tolerance).saturatingSubtract(now.nanoseconds)))
    }

    /// The time `count` tokens take to come, saturating.
    func cost(_ count: Int) -> Int64 {
        interval.saturatingMultiply(Int64(count))
    }
}
