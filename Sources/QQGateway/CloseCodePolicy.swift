/// What a client does after the gateway closes its socket with a given code (section 6 of the protocol).
public enum CloseCodePolicy: Sendable, Equatable {
    /// Reconnect and Resume the session.
    case resume
    /// Reconnect, Resume, but only after a backoff (sending too fast).
    case resumeAfterBackoff
    /// Drop the session and Identify afresh.
    case identify
    /// Refresh the access token, then Identify.
    case refreshTokenAndIdentify
    /// A configuration error: reconnecting cannot help.
    case fatalConfiguration
    /// This shard layout has too many guilds: the cluster must reshard.
    case reshardRequired
    /// The bot is delisted or banned: stop, do not restart.
    case stop

    /// The policy for a close code; nil (no close frame: a dropped socket) resumes.
    public static func forCode(_ code: UInt16?) -> CloseCodePolicy {
        guard let code else { return .resume }
        switch code {
        case 4001, 4002, 4006, 4007: return .identify
        case 4004: return .refreshTokenAndIdentify
        case 4008: return .resumeAfterBackoff
        case 4009: return .resume
        case 4010, 4012, 4013, 4014: return .fatalConfiguration
        case 4011: return .reshardRequired
        case 4900...4913: return .identify
        case 4914, 4915: return .stop
        default: return .resume
        }
    }

    /// Whether a worker that ended with this code should not be restarted in a loop.
    public var isFatal: Bool {
        switch self {
        case .fatalConfiguration, .reshardRequired, .stop: return true
        default: return false
        }
    }
}
