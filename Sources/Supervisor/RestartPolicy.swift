import ClusterCore

/// When to bring a crashed worker back: the first crash at once, then jittered exponential backoff up to a cap;
/// the backoff resets only after the worker has stayed ready for `resetAfter`; more than `maxCrashes` crashes in
/// `crashWindow` mark the worker failed (retried at the cap). Pure: the time is a parameter.
public struct RestartPolicy: Sendable {
    /// When to respawn a crashed worker: now, after a backoff delay, or (marked failed) after `retryAfter`.
    public enum Decision: Sendable, Equatable {
        case now
        case after(Duration)
        /// Too many crashes: the worker shows as failed and is tried again after `retryAfter`.
        case failed(retryAfter: Duration)
    }

    let config: RestartConfig
    var recentCrashes: [MonotonicInstant] = []
    /// Crashes since the worker last stayed ready long enough.
    public private(set) var consecutive = 0
    var readySince: MonotonicInstant?

    /// A policy for `config`, with no crashes yet.
    public init(config: RestartConfig) {
        self.config = config
    }

    /// The worker became ready.
    public mutating func ready(now: MonotonicInstant) {
        if readySince == nil { readySince = now }
    }

    /// The worker crashed (or hung and was killed): what to do.
    public mutating func crashed(now: MonotonicInstant, rng: inout SplitMix64) -> Decision {
        if let since = readySince, now - since >= config.resetAfter { consecutive = 0 }
        readySince = nil
        recentCrashes.append(now)
        recentCrashes.removeAll { now - $0 > config.crashWindow }
        consecutive += 1
        if recentCrashes.count > config.maxCrashes { return .failed(retryAfter: config.maxDelay) }
        if consecutive == 1 { return .now }
        var delay = Double(config.baseDelay.nanoseconds)
        for _ in 0..<(consecutive - 2) { delay *= config.multiplier }
        delay = min(delay, Double(config.maxDelay.nanoseconds))
        let spread = (Double(rng.next() % 2_000_001) / 1_000_000 - 1) * config.jitter
        return .after(.nanoseconds(Int64(max(0, delay * (1 + spread)))))
    }
}
