/// Exit statuses a worker uses to tell the supervisor why it ended.
public enum WorkerExitStatus {
    /// Stopped on request (drained, session saved).
    public static let stopped: Int32 = 0
    /// A configuration error the platform reported (4010, 4012-4014): restarting cannot help.
    public static let configurationError: Int32 = 78
    /// This layout has too many guilds (4011): the cluster must reshard.
    public static let reshardRequired: Int32 = 79
    /// The bot is delisted or banned (4914, 4915): do not restart.
    public static let banned: Int32 = 80
    /// The IPC link to the supervisor ended: the worker is an orphan and left.
    public static let orphaned: Int32 = 81

    /// Whether a worker that ended with `status` must not be restarted in a loop.
    public static func isFatal(_ status: Int32) -> Bool {
        status == configurationError || status == reshardRequired || status == banned
    }
}
