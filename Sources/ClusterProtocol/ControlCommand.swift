/// What a control client (`botcluster status`, `scale`, `restart`, `stop`, `user`) asks the supervisor to do.
public enum ControlCommand: Sendable, Equatable {
    /// Every worker of the running cluster (answered with a `ClusterStatus`).
    case status
    /// Replace one worker's process; its successor resumes. Worker `ordinal` runs shard `ordinal` in every layout,
    /// so `restart --shard K` is this command too.
    case restart(ordinal: Int)
    /// Replace every worker's process, at most `maxUnavailable` at a time.
    case rollingRestart(maxUnavailable: Int)
    /// Change the shard count live (`planOnly`: say what would happen).
    case scale(ScaleTarget, planOnly: Bool)
    /// Drain every worker and end.
    case stop
    /// What each worker's cache serves for a user.
    case user(id: String)

    /// The shard count a scale asks for.
    public enum ScaleTarget: Sendable, Equatable {
        case count(Int)
        /// The platform's recommendation from `/gateway/bot`.
        case recommended
    }

    /// A short name for logs.
    public var name: String {
        switch self {
        case .status: return "status"
        case .restart: return "restart"
        case .rollingRestart: return "rolling restart"
        case .scale: return "scale"
        case .stop: return "stop"
        case .user: return "user"
        }
    }
}
