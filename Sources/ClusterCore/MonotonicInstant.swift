#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A point on the monotonic clock, in nanoseconds. Pure state machines take it as a parameter, so tests drive
/// time by hand; I/O code reads `MonotonicInstant.now()`.
public struct MonotonicInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    /// The instant `nanoseconds` on the monotonic clock.
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// The current time of CLOCK_MONOTONIC.
    public static func now() -> MonotonicInstant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return MonotonicInstant(nanoseconds: Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec))
    }

    public static let zero = MonotonicInstant(nanoseconds: 0)

    /// Whether `lhs` is earlier than `rhs`.
    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    // Saturating, not wrapping: a duration far past the end of the clock (a hostile `Retry-After`) means "never",
    // and must not wrap around into "long ago", which reads as "now".

    /// The instant `rhs` later (earlier for a negative duration), clamped at the ends of the clock.
    public static func + (lhs: MonotonicInstant, rhs: Duration) -> MonotonicInstant {
        MonotonicInstant(nanoseconds: lhs.nanoseconds.saturatingAdd(rhs.nanoseconds))
    }

    /// The instant `rhs` earlier, clamped at the ends of the clock.
    public static func - (lhs: MonotonicInstant, rhs: Duration) -> MonotonicInstant {
        MonotonicInstant(nanoseconds: lhs.nanoseconds.saturatingSubtract(rhs.nanoseconds))
    }

    /// The time from `rhs` to `lhs` (negative when `lhs` is earlier), clamped instead of overflowing.
    public static func - (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Duration {
        .nanoseconds(lhs.nanoseconds.saturatingSubtract(rhs.nanoseconds))
    }

    public var description: String { "\(Double(nanoseconds) / 1e9)s" }
}

/// Wall-clock time in milliseconds since 1970, for timestamps that leave the process.
public func wallClockMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// A small, fast, seedable random number generator (SplitMix64), for jitter and simulated traffic that must be
/// reproducible from a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator whose whole sequence is fixed by `seed`.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
