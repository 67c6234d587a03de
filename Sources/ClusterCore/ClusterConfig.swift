/// The whole of cluster.json, typed and validated. Every field has a default; see the README for the reference.
public struct ClusterConfig: Sendable {
    public var app: AppConfig
    public var gateway: GatewayConfig
    public var shards: ShardsConfig
    public var supervisor: SupervisorConfig
    public var restart: RestartConfig
    public var identify: IdentifyConfig
    public var worker: WorkerConfig
    public var cache: CacheConfig
    public var rateBudget: RateBudgetConfig
    public var exactlyOnce: ExactlyOnceConfig
    public var scale: ScaleConfig
    public var emulator: EmulatorConfig
    public var log: LogConfig

    /// The normalized document: every key with its effective value, secrets redacted.
    public var normalized: JSONValue
}

/// The bot's credentials on the platform.
public struct AppConfig: Sendable {
    public var id: String
    public var secret: Secret

    /// Credentials the embedded emulator accepts when cluster.json names none (a local development bot).
    public static let emulatorDefaultID = "102000001"
    public static let emulatorDefaultSecret = "emulator-development-secret"
}

/// Where the gateway and OpenAPI are.
public struct GatewayConfig: Sendable {
    /// Run the bundled emulator in-process and point every worker at it.
    public var embedded: Bool
    /// The OpenAPI base URL (`https://api.sgroup.qq.com`, or `http://127.0.0.1:8080` for an emulator elsewhere).
    public var url: String?
    /// The access-token endpoint (`https://bots.qq.com/app/getAppAccessToken`).
    public var tokenURL: String?
    /// The intents each shard identifies with.
    public var intents: GatewayIntents
    /// A PEM file of certificate authorities trusted besides the system's (a private gateway, a test CA).
    public var trustRoots: String?

    public static let platformURL = "https://api.sgroup.qq.com"
    public static let platformTokenURL = "https://bots.qq.com/app/getAppAccessToken"
}

/// How many shards, and how they map to workers.
public struct ShardsConfig: Sendable {
    public enum Count: Sendable, Equatable {
        case fixed(Int)
        /// The platform's recommendation from `/gateway/bot`.
        case auto
    }

    public var count: Count
    public static let maxCount = 1024
}

/// The supervisor's files and timings.
public struct SupervisorConfig: Sendable {
    /// Directory for the socket, lock, databases and logs (relative paths are under the working directory).
    public var runDirectory: String
    /// The IPC socket path; defaults to `<runDirectory>/botcluster.sock`.
    public var socket: String
    /// How often workers send an IPC heartbeat.
    public var heartbeatInterval: Duration
    /// Heartbeats missed in a row before a worker counts as hung.
    public var heartbeatMisses: Int
    /// How long a spawned worker has to say hello.
    public var helloTimeout: Duration
    /// How long a worker has to become ready once it has a slot.
    public var readyTimeout: Duration
    /// Between SIGABRT of a hung worker and SIGKILL of its process group.
    public var abortGrace: Duration
    /// How long draining workers get on stop before SIGKILL.
    public var stopGrace: Duration
    /// A control connection (status, scale, ...) with no request in flight is closed after this long.
    public var controlIdleTimeout: Duration
}

/// The restart policy for crashed workers.
public struct RestartConfig: Sendable {
    public var baseDelay: Duration
    public var maxDelay: Duration
    public var multiplier: Double
    /// Fraction of each delay drawn at random (0 = none, 0.2 = up to 20% either way).
    public var jitter: Double
    /// How long a worker must stay ready before its backoff resets.
    public var resetAfter: Duration
    /// More than this many crashes within `crashWindow` marks a worker failed.
    public var maxCrashes: Int
    public var crashWindow: Duration
}

/// Identify pacing.
public struct IdentifyConfig: Sendable {
    /// The platform's identify window (5 s). With the embedded emulator, its own window is used instead.
    public var window: Duration
    /// Added to every identify window, to absorb the time between a grant and the server seeing the Identify.
    public var margin: Duration
    /// How long a granted slot may stay unused before the ledger counts it spent.
    public var slotTimeout: Duration
}

/// The worker runtime.
public struct WorkerConfig: Sendable {
    /// At most this many handler invocations run at once; further events wait (backpressure).
    public var maxInFlight: Int
    /// How long a stopping worker waits for running handlers.
    public var drainTimeout: Duration
    /// How often a worker reports its session (id, seq) and gateway progress.
    public var reportInterval: Duration
}

/// The shared user cache.
public struct CacheConfig: Sendable {
    public var lruSize: Int
    public var ttl: Duration
    public var flushSize: Int
    public var flushInterval: Duration
    /// Ask the OpenAPI for users missing from the cache (spends rate budget).
    public var fetchMissing: Bool
}

/// The cluster-wide REST budget.
public struct RateBudgetConfig: Sendable {
    /// Requests per second for the whole bot.
    public var globalRate: Double
    /// Requests that may be sent at once after a quiet period.
    public var globalBurst: Int
    /// Tokens a worker takes per lease.
    public var leaseSize: Int
    /// How long a leased token stays valid.
    public var leaseTTL: Duration
}

/// The shared record of handled events.
public struct ExactlyOnceConfig: Sendable {
    /// How long a handled event id is remembered.
    public var ttl: Duration
}

/// Rescaling.
public struct ScaleConfig: Sendable {
    /// Reshard to the recommendation when a shard is closed with 4011.
    public var reshardOn4011: Bool
    /// How long a new generation has to become ready before the switch is abandoned.
    public var readyTimeout: Duration
}

/// Logging.
public struct LogConfig: Sendable {
    public var level: String
    public static let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
}

/// The bundled gateway emulator.
public struct EmulatorConfig: Sendable {
    public var host: String
    public var port: Int
    public var tokenLifetime: Duration
    public var heartbeatInterval: Duration
    /// A session whose client sends no heartbeat for this long is closed.
    public var heartbeatTimeout: Duration
    /// How long a session stays resumable after its socket closes.
    public var sessionTTL: Duration
    /// Dispatches each session keeps for Resume.
    public var resumeBuffer: Int
    public var grantedIntents: GatewayIntents
    public var sessionStartTotal: Int
    public var sessionStartRemaining: Int
    public var sessionStartResetAfter: Duration
    public var maxConcurrency: Int
    /// The identify window (5 s on the platform; shorter in tests; 0 turns the per-bucket limit off).
    public var identifyWindow: Duration
    public var guildsPerShard: Int
    /// REST requests per second for the whole app before 429.
    public var restRate: Double
    /// Delivered messages without a reply after this long count as unreplied.
    public var unrepliedGrace: Duration
    public var traffic: TrafficConfig
    /// Serve https and wss with this certificate and key (PEM files) instead of http and ws.
    public var tls: TLSFiles?
    /// The bearer token the admin API (`POST /emulator/...`) requires; without one the admin API is off.
    public var adminToken: Secret?
}

/// A certificate chain and its private key, as PEM files.
public struct TLSFiles: Sendable, Equatable {
    public var certificate: String
    public var key: String

    public init(certificate: String, key: String) {
        self.certificate = certificate
        self.key = key
    }
}

/// The emulator's simulated community and its message traffic.
public struct TrafficConfig: Sendable {
    public var guilds: Int
    public var channelsPerGuild: Int
    public var users: Int
    /// AT_MESSAGE_CREATE per second (0 = none until changed through the admin API).
    public var rate: Double
    /// Messages sent at once every `burstEvery` (0 = no bursts).
    public var burstSize: Int
    public var burstEvery: Duration
    /// GROUP_AT_MESSAGE_CREATE and C2C_MESSAGE_CREATE per second.
    public var groupRate: Double
    public var c2cRate: Double
    /// Share of users who change their username, each every `renameEvery`.
    public var renameShare: Double
    public var renameEvery: Duration
    /// Share of messages the platform pushes twice.
    public var duplicateShare: Double
    public var seed: Int
}

extension ClusterConfig {
    /// The identify window the ledger paces by: the embedded emulator's own, or the configured platform window.
    public var effectiveIdentifyWindow: Duration {
        gateway.embedded ? emulator.identifyWindow : identify.window
    }
}

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
