/// Observations counted into fixed buckets: what a worker measures and the supervisor merges exactly (bucket by
/// bucket) into one cluster-wide histogram.
public struct MetricHistogram: Sendable, Equatable {
    /// Upper bounds of the buckets, ascending (seconds for the durations); a last bucket takes the rest (+Inf).
    public let bounds: [Double]
    /// Observations per bucket (not cumulative): `bounds.count + 1` of them.
    public private(set) var counts: [Int64]
    /// The sum of every observation.
    public private(set) var sum: Double

    /// An empty histogram with `bounds`.
    public init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count + 1)
        sum = 0
    }

    /// A histogram with `bounds` holding `counts` (one more than the bounds) and `sum`; nil when they do not fit.
    public init?(bounds: [Double], counts: [Int64], sum: Double) {
        guard counts.count == bounds.count + 1, counts.allSatisfy({ $0 >= 0 }), sum.isFinite else { return nil }
        self.bounds = bounds
        self.counts = counts
        self.sum = sum
    }

    /// Observations so far.
    public var count: Int64 { counts.reduce(0, &+) }

    /// Counts one observation.
    public mutating func record(_ value: Double) {
        guard value.isFinite else { return }
        let index = bounds.firstIndex { value <= $0 } ?? bounds.count
        counts[index] &+= 1
        sum += value
    }

    /// Counts one duration, in seconds.
    public mutating func record(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        record(Double(seconds) + Double(attoseconds) / 1e18)
    }

    /// Adds `other`'s observations (a histogram of other bounds adds nothing).
    public mutating func add(_ other: MetricHistogram) {
        guard other.bounds == bounds else { return }
        for i in counts.indices { counts[i] &+= other.counts[i] }
        sum += other.sum
    }

    /// The bucket bounds every worker and the supervisor agree on (seconds).
    public enum Bounds {
        /// A handler's run: 1 ms to 10 s.
        public static let handler: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
        /// The gateway heartbeat's round trip: 5 ms to 5 s.
        public static let heartbeat: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
        /// An IPC request's round trip: 50 µs to 1 s.
        public static let ipc: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    }
}

/// A REST request's route template and the answer's HTTP status (0: no answer, a transport error).
public struct RESTOutcome: Sendable, Hashable {
    public var route: String
    public var status: Int

    /// `route` answered with `status`.
    public init(route: String, status: Int) {
        self.route = route
        self.status = status
    }
}

/// What one worker process counted since it started, as the supervisor asks for it at a scrape: cumulative, so a
/// lost answer loses nothing but freshness.
public struct WorkerMetrics: Sendable, Equatable {
    /// Dispatches received, by event type (at most `maxLabels` types; the rest count as `other`).
    public var eventsByType: [String: Int64] = [:]
    /// Dispatches another worker (or an earlier process) had handled already: skipped.
    public var duplicates: Int64 = 0
    public var handlerErrors: Int64 = 0
    public var handlerDuration = MetricHistogram(bounds: MetricHistogram.Bounds.handler)
    public var heartbeatLatency = MetricHistogram(bounds: MetricHistogram.Bounds.heartbeat)
    /// Claims round trips to the supervisor (the IPC on every event's path).
    public var ipcRoundTrip = MetricHistogram(bounds: MetricHistogram.Bounds.ipc)
    /// REST requests by route and status (at most `maxLabels` pairs).
    public var restRequests: [RESTOutcome: Int64] = [:]
    /// User lookups answered from memory, and those that were not.
    public var cacheHits: Int64 = 0
    public var cacheMisses: Int64 = 0

    /// Nothing counted yet.
    public init() {}

    /// The most distinct label values a labelled count keeps (what a peer sends cannot grow a scrape).
    public static let maxLabels = 64
    /// The longest label value kept.
    public static let maxLabelLength = 64
    /// The label value that takes counts past `maxLabels`.
    public static let otherLabel = "other"

    /// Adds `count` to `key` in `table`, keeping at most `maxLabels` keys (the rest go to `overflow`).
    public static func tally<Key: Hashable>(_ table: inout [Key: Int64], _ key: Key, _ count: Int64, overflow: Key) {
        if table[key] != nil || table.count < maxLabels {
            table[key, default: 0] &+= count
        } else {
            table[overflow, default: 0] &+= count
        }
    }

    /// The event type as a label: itself when short, `other` otherwise.
    public static func eventLabel(_ name: String) -> String {
        name.utf8.count <= maxLabelLength ? name : otherLabel
    }

    /// Adds another process's counts (the supervisor's cluster-wide sum).
    public mutating func add(_ other: WorkerMetrics) {
        for (type, count) in other.eventsByType { Self.tally(&eventsByType, type, count, overflow: Self.otherLabel) }
        duplicates &+= other.duplicates
        handlerErrors &+= other.handlerErrors
        handlerDuration.add(other.handlerDuration)
        heartbeatLatency.add(other.heartbeatLatency)
        ipcRoundTrip.add(other.ipcRoundTrip)
        for (key, count) in other.restRequests {
            Self.tally(&restRequests, key, count, overflow: RESTOutcome(route: Self.otherLabel, status: key.status))
        }
        cacheHits &+= other.cacheHits
        cacheMisses &+= other.cacheMisses
    }
}
