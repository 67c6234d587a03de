import Logging
import Synchronization

/// A failure that repeats (a full disk, a locked file) logged at most once per `interval`, with how many times
/// it happened in between: the log says what is wrong without filling the disk that is already full.
public final class RateLimitedLog: Sendable {
    struct State {
        var lastAt: MonotonicInstant?
        var suppressed = 0
    }

    let interval: Duration
    let state = Mutex(State())

    /// A log that lets one line through per `interval` (10 s by default).
    public init(interval: Duration = .seconds(10)) {
        self.interval = interval
    }

    /// Logs `message` now unless one went out within `interval`; then counts it for the next line.
    public func log(_ logger: Logger, _ level: Logger.Level, _ message: String, metadata: Logger.Metadata = [:], now: MonotonicInstant = .now()) {
        let suppressed = state.withLock { state -> Int? in
            if let last = state.lastAt, now - last < interval {
                state.suppressed += 1
                return nil
            }
            state.lastAt = now
            defer { state.suppressed = 0 }
            return state.suppressed
        }
        guard let suppressed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["repeated"] = "\(suppressed) more times since the last line" }
        logger.log(level: level, "\(message)", metadata: metadata)
    }

    /// The failure is over: the next one logs at once.
    public func reset() {
        state.withLock { $0 = State() }
    }
}
