/// The supervisor's files and timings.
public struct SupervisorConfig: Sendable {
    /// Directory for the socket, lock, databases and logs (relative paths are under the working directory).
    public var runDirectory: String
    /// The IPC socket path; defaults to `<runDirectory>/botcluster.sock`.
    public var socket: String
    /// How often a worker stores a beat in the liveness table the supervisor reads.
    public var heartbeatInterval: Duration
    /// Beats missed in a row before a worker counts as hung.
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
    /// How many workers may be starting at once (spawned, not yet ready); the rest wait their turn. The supervisor
    /// raises it to twice `max_concurrency`, so that the identify ledger always has workers waiting.
    public var maxStarting: Int = 32
}

extension SupervisorConfig {
    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        let runDirectory = reader.string("runDirectory", default: "run")
        let socket = reader.string("socket", default: runDirectory + "/botcluster.sock")
        let heartbeat = reader.object("heartbeat")
        let heartbeatInterval = heartbeat.duration("interval", default: .milliseconds(500), min: .milliseconds(10), max: .seconds(60))
        let heartbeatMisses = heartbeat.int("misses", default: 2, range: 1...100)
        heartbeat.finish()
        self.init(
            runDirectory: runDirectory,
            socket: socket,
            heartbeatInterval: heartbeatInterval,
            heartbeatMisses: heartbeatMisses,
            helloTimeout: reader.duration("helloTimeout", default: .seconds(10), min: .milliseconds(100)),
            readyTimeout: reader.duration("readyTimeout", default: .seconds(60), min: .milliseconds(100)),
            abortGrace: reader.duration("abortGrace", default: .milliseconds(500)),
            stopGrace: reader.duration("stopGrace", default: .seconds(10)),
            controlIdleTimeout: reader.duration("controlIdleTimeout", default: .seconds(60), min: .milliseconds(100)),
            maxStarting: reader.int("maxStarting", default: 32, range: 1...ShardsConfig.maxCount)
        )
        if runDirectory.isEmpty { reader.report("runDirectory", "must not be empty") }
        if socket.utf8.count > maxSocketPathLength {
            reader.report(
                reader.raw("socket") != nil ? "socket" : "runDirectory",
                "the socket path \"\(socket)\" is \(socket.utf8.count) bytes; Unix-domain socket paths hold at most \(maxSocketPathLength). Use a shorter supervisor.runDirectory or supervisor.socket (a relative path is taken from the working directory)."
            )
        }
        reader.finish()
    }
}

/// The longest Unix-domain socket path Linux takes (`sizeof(sun_path) - 1`).
public let maxSocketPathLength = 107
