/// The running cluster as `botcluster status --json` prints it (and as the supervisor answers a `status` request):
/// one Codable type for the supervisor that builds it and every reader.
public struct ClusterStatus: Codable, Sendable, Equatable {
    /// The supervisor process.
    public struct Supervisor: Codable, Sendable, Equatable {
        public var pid: Int32
        public var uptimeSeconds: Double
        public var shards: Int
        public var socket: String

        /// The supervisor process as it stands.
        public init(pid: Int32, uptimeSeconds: Double, shards: Int, socket: String) {
            self.pid = pid
            self.uptimeSeconds = uptimeSeconds
            self.shards = shards
            self.socket = socket
        }
    }

    /// The identify ledger.
    public struct Identify: Codable, Sendable, Equatable {
        public var maxConcurrency: Int
        public var remainingToday: Int
        public var granted: Int
        public var waiting: Int

        /// The identify ledger as it stands.
        public init(maxConcurrency: Int, remainingToday: Int, granted: Int, waiting: Int) {
            self.maxConcurrency = maxConcurrency
            self.remainingToday = remainingToday
            self.granted = granted
            self.waiting = waiting
        }
    }

    /// The cluster-wide REST budget.
    public struct RateBudget: Codable, Sendable, Equatable {
        /// Requests per second for the whole bot.
        public var rate: Double
        /// Tokens granted so far.
        public var granted: Int
        /// Lease requests waiting.
        public var waiting: Int

        /// The REST budget as it stands.
        public init(rate: Double, granted: Int, waiting: Int) {
            self.rate = rate
            self.granted = granted
            self.waiting = waiting
        }
    }

    /// A layout on its way up (the launch, or a rescale's new layout): how far, and how long the identify
    /// ledger's pace says is left.
    public struct Startup: Codable, Sendable, Equatable {
        public var ready: Int
        public var total: Int
        /// The identify buckets with shards still to identify (none while every remaining shard resumes).
        public var identifyingBuckets: [Int]
        /// Until the last identify can leave, at the pace the limits allow.
        public var secondsLeft: Double

        /// A layout `ready` of `total` shards, identifying in `identifyingBuckets`, with `secondsLeft` to go.
        public init(ready: Int, total: Int, identifyingBuckets: [Int], secondsLeft: Double) {
            self.ready = ready
            self.total = total
            self.identifyingBuckets = identifyingBuckets
            self.secondsLeft = secondsLeft
        }

        /// `ready 312/1024 · identifying bucket 0 · about 59 min left`.
        public var line: String {
            var parts = ["ready \(ready)/\(total)"]
            switch identifyingBuckets.count {
            case 0: break
            case 1: parts.append("identifying bucket \(identifyingBuckets[0])")
            default: parts.append("identifying \(identifyingBuckets.count) buckets")
            }
            if secondsLeft >= 1 { parts.append("about \(Self.roughly(secondsLeft)) left") }
            return parts.joined(separator: " · ")
        }

        /// "40 s", "59 min", "1 h 25 min".
        static func roughly(_ seconds: Double) -> String {
            let whole = Int(seconds.rounded(.up))
            if whole < 90 { return "\(whole) s" }
            let minutes = Int((seconds / 60).rounded())
            if minutes < 90 { return "\(minutes) min" }
            return "\(minutes / 60) h \(minutes % 60) min"
        }
    }

    /// The record of handled events.
    public struct ExactlyOnce: Codable, Sendable, Equatable {
        /// Event ids remembered as handled.
        public var remembered: Int

        /// The record of handled events as it stands.
        public init(remembered: Int) { self.remembered = remembered }
    }

    /// A worker's session: what a replacement resumes.
    public struct Session: Codable, Sendable, Equatable {
        public var id: String
        public var seq: Int

        /// A session id and its last committed seq.
        public init(id: String, seq: Int) {
            self.id = id
            self.seq = seq
        }
    }

    /// One worker slot and the process filling it.
    public struct Worker: Codable, Sendable, Equatable {
        public var ordinal: Int
        /// `[id, total]`.
        public var shard: [Int]
        public var pid: Int32?
        public var state: String
        public var generation: UInt64
        public var uptimeSeconds: Double?
        public var restarts: Int
        public var lastExit: String?
        public var gatewayLatencyMs: Double?
        public var lastEventAgeMs: Int64?
        public var eventsPerSecond: Double?
        public var reconnects: Int?
        public var handled: Int64?
        /// The IPC ping's round trip (workers of the active layout).
        public var ipcLatencyMs: Double?
        /// REST tokens granted to this worker's connection.
        public var restTokens: Int?
        public var session: Session?
        /// Why the worker is failed, when it is.
        public var failure: String?
        /// `incoming` or `retiring` for a worker of a layout that is not the active one.
        public var layout: String?

        /// A worker with what every worker has; the optional figures are filled in as they are known.
        public init(ordinal: Int, shard: [Int], pid: Int32?, state: String, generation: UInt64, restarts: Int) {
            self.ordinal = ordinal
            self.shard = shard
            self.pid = pid
            self.state = state
            self.generation = generation
            self.restarts = restarts
        }
    }

    public var supervisor: Supervisor
    public var identify: Identify
    public var rateBudget: RateBudget
    public var exactlyOnce: ExactlyOnce
    /// The active layout's workers, by ordinal.
    public var workers: [Worker]
    /// Workers of a layout being switched to or retired (during a rescale).
    public var otherLayouts: [Worker]
    /// Ordinals whose worker did not answer an IPC ping in time.
    public var unresponsive: [Int]
    /// The launch (or a rescale's new layout) while it comes up; nil once it is ready.
    public var startup: Startup?
    /// How events arrive: "websocket" (a session per shard) or "webhook" (the supervisor's ingress).
    public var mode: String = "websocket"
    /// The webhook ingress's streams, in webhook mode.
    public var webhook: Webhook?
    /// Several hosts: every host of the cluster, its shards and leases; nil on one host.
    public var cluster: Cluster?

    /// A cluster of several hosts sharing a PostgreSQL store: every host the store knows, as of this host's last
    /// lease round.
    public struct Cluster: Codable, Sendable, Equatable {
        /// One host: its id, what it registered (name and status address), whether its heartbeat is current, the
        /// shards whose leases it holds and when the first of them expires unrenewed.
        public struct Host: Codable, Sendable, Equatable {
            public var id: Int
            public var address: String
            public var live: Bool
            public var shards: [Int]
            public var leasesExpireInSeconds: Double?

            /// Host `id` as the store shows it.
            public init(id: Int, address: String, live: Bool, shards: [Int], leasesExpireInSeconds: Double?) {
                self.id = id
                self.address = address
                self.live = live
                self.shards = shards
                self.leasesExpireInSeconds = leasesExpireInSeconds
            }
        }

        /// The host that answered.
        public var thisHost: Int
        /// The store, without its password.
        public var store: String
        /// Seconds since the last lease round that succeeded (nil: none yet).
        public var lastRoundSecondsAgo: Double?
        public var hosts: [Host]
        /// What this host's user cache told the other hosts and took from them (nil: its cache is not open).
        public var userChanges: UserChanges?

        /// Users published to the other hosts and applied from them, since this supervisor started.
        public struct UserChanges: Codable, Sendable, Equatable {
            public var published: Int
            public var applied: Int
            /// Left out: users too long to publish, publications of other hosts that were not readable.
            public var skipped: Int

            /// The feed's counts.
            public init(published: Int, applied: Int, skipped: Int) {
                self.published = published
                self.applied = applied
                self.skipped = skipped
            }
        }

        /// The cluster as `thisHost` sees it.
        public init(thisHost: Int, store: String, lastRoundSecondsAgo: Double?, hosts: [Host], userChanges: UserChanges? = nil) {
            self.thisHost = thisHost
            self.store = store
            self.lastRoundSecondsAgo = lastRoundSecondsAgo
            self.hosts = hosts
            self.userChanges = userChanges
        }

        /// The lines `status` prints: one per host.
        public var lines: [String] {
            let round = lastRoundSecondsAgo.map { "last lease round \($0) s ago" } ?? "no lease round yet"
            var lines = ["hosts sharing \(store) (this is host \(thisHost); \(round)):"]
            for host in hosts {
                let shards = host.shards.isEmpty ? "no shards" : "shards " + host.shards.map(String.init).joined(separator: ",")
                let expiry = host.leasesExpireInSeconds.map { "leases expire in \($0) s" } ?? ""
                lines.append("  host \(host.id)  \(host.live ? "live" : "gone")  \(shards)  \(expiry)  \(host.address)")
            }
            if let users = userChanges {
                var line = "  user cache: \(users.published) users published to the other hosts, \(users.applied) applied from them"
                if users.skipped > 0 { line += ", \(users.skipped) left out" }
                lines.append(line)
            }
            return lines
        }
    }

    /// The webhook ingress as it stands.
    public struct Webhook: Codable, Sendable, Equatable {
        /// Events acknowledged to the platform and not yet handled.
        public var queued: Int
        /// How many the streams may hold (`webhook.queueLimit`).
        public var limit: Int

        /// The ingress's streams with `queued` of `limit` events.
        public init(queued: Int, limit: Int) {
            self.queued = queued
            self.limit = limit
        }
    }

    /// The cluster as it stands.
    public init(
        supervisor: Supervisor, identify: Identify, rateBudget: RateBudget, exactlyOnce: ExactlyOnce,
        workers: [Worker], otherLayouts: [Worker], unresponsive: [Int], startup: Startup? = nil
    ) {
        self.startup = startup
        self.supervisor = supervisor
        self.identify = identify
        self.rateBudget = rateBudget
        self.exactlyOnce = exactlyOnce
        self.workers = workers
        self.otherLayouts = otherLayouts
        self.unresponsive = unresponsive
    }
}
