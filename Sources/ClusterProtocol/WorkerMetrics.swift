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

    /// A histogram with `bounds` holding `counts` (one more than the bounds) and `sum`; nil when they do not fit
    /// (a negative or huge count or sum: the observations are durations).
    public init?(bounds: [Double], counts: [Int64], sum: Double) {
        guard counts.count == bounds.count + 1, counts.allSatisfy({ (0...WorkerMetrics.maxCount).contains($0) }),
            sum.isFinite, sum >= 0, sum <= Double(WorkerMetrics.maxCount)
        else { return nil }
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
        counts[index] = WorkerMetrics.sum(counts[index], 1)
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
        for i in counts.indices { counts[i] = WorkerMetrics.sum(counts[i], other.counts[i]) }
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

    /// The most distinct label values a labelled count keeps, `other` included (what a peer sends cannot grow a
    /// scrape).
    public static let maxLabels = 64
    /// The largest count taken from a peer (2^53: still exact as a float in the text format; sums saturate there).
    public static let maxCount: Int64 = 1 << 53
    /// The label value that takes counts past `maxLabels`.
    public static let otherLabel = "other"

    /// `a + b`, saturating at `maxCount` (a peer's numbers cannot trap or wrap a sum).
    public static func sum(_ a: Int64, _ b: Int64) -> Int64 {
        let (total, overflow) = a.addingReportingOverflow(b)
        return overflow || total > maxCount ? maxCount : max(0, total)
    }

    /// Adds `count` to `key` in `table`, keeping at most `maxLabels` keys: a new key when `maxLabels - 1` are
    /// taken goes to `overflow`.
    public static func tally<Key: Hashable>(_ table: inout [Key: Int64], _ key: Key, _ count: Int64, overflow: Key) {
        let named = table.count - (table[overflow] == nil ? 0 : 1)
        let admitted = table[key] != nil || named < maxLabels - 1 || key == overflow
        let target = admitted ? key : overflow
        table[target] = sum(table[target] ?? 0, count)
    }

    /// The event type as a label: itself when it is a plain name (letters, digits, `_`; at most 64), else `other`.
    public static func eventLabel(_ name: String) -> String {
        isPlainName(name, maxLength: 64) ? name : otherLabel
    }

    /// A REST route template as a label: itself when printable ASCII of at most 128 bytes, else `other`.
    public static func routeLabel(_ route: String) -> String {
        !route.isEmpty && route.utf8.count <= 128 && route.utf8.allSatisfy({ (0x20...0x7E).contains($0) && $0 != 0x22 && $0 != 0x5C }) ? route : otherLabel
    }

    static func isPlainName(_ name: String, maxLength: Int) -> Bool {
        !name.isEmpty && name.utf8.count <= maxLength
            && name.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) || $0 == 0x5F }
    }

    /// The key every REST outcome past `maxLabels` counts under.
    public static let otherREST = RESTOutcome(route: otherLabel, status: 0)

    /// Adds another process's counts (the supervisor's cluster-wide sum). Which labels are kept apart is decided
    /// once, in `labels` (kept by the caller across sums, keys taken in sorted order), so a series never moves to
    /// `other` when the processes that counted it come and go.
    public mutating func add(_ other: WorkerMetrics, labels: inout Labels) {
        for (type, count) in other.eventsByType.sorted(by: { $0.key < $1.key }) {
            let label = labels.admit(type, into: \.eventTypes, overflow: Self.otherLabel)
            eventsByType[label] = Self.sum(eventsByType[label] ?? 0, count)
        }
        duplicates = Self.sum(duplicates, other.duplicates)
        handlerErrors = Self.sum(handlerErrors, other.handlerErrors)
        handlerDuration.add(other.handlerDuration)
        heartbeatLatency.add(other.heartbeatLatency)
        ipcRoundTrip.add(other.ipcRoundTrip)
        for (key, count) in other.restRequests.sorted(by: { ($0.key.route, $0.key.status) < ($1.key.route, $1.key.status) }) {
            let label = labels.admit(key, into: \.restOutcomes, overflow: Self.otherREST)
            restRequests[label] = Self.sum(restRequests[label] ?? 0, count)
        }
        cacheHits = Self.sum(cacheHits, other.cacheHits)
        cacheMisses = Self.sum(cacheMisses, other.cacheMisses)
    }

    /// The label values a cluster-wide sum keeps apart: admitted once, at most `maxLabels - 1` of each, for good.
    public struct Labels: Sendable {
        var eventTypes: Set<String> = []
        var restOutcomes: Set<RESTOutcome> = []

        /// None admitted yet.
        public init() {}

        mutating func admit<Key: Hashable>(_ key: Key, into set: WritableKeyPath<Labels, Set<Key>>, overflow: Key) -> Key {
            if key == overflow || self[keyPath: set].contains(key) { return key }
            guard self[keyPath: set].count < WorkerMetrics.maxLabels - 1 else { return overflow }
            self[keyPath: set].insert(key)
            return key
        }
    }
}
