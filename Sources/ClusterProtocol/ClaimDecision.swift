/// What the cluster's record of handled events says about a claimed event.
public enum ClaimDecision: UInt8, Sendable, Equatable {
    /// Someone handled it, or this worker may no longer handle events: skip.
    case skip = 0
    case handle = 1
    /// Another live worker is handling it: the answer comes when that one completes or releases it.
    case wait = 2
}
