import Synchronization

/// REST answers counted by route template and HTTP status (0: no answer, a transport error), for the metrics.
/// Routes are this package's templates and statuses are three digits, so the table stays small; it is bounded
/// all the same (`maxEntries` with the one that takes the rest: route `other`, status 0).
public final class RESTTally: Sendable {
    /// A route template and a status.
    public struct Key: Hashable, Sendable {
        public var route: String
        public var status: Int
    }

    let counts = Mutex<[Key: Int64]>([:])
    /// The most route and status pairs kept apart.
    public static let maxEntries = 64

    /// An empty tally.
    public init() {}

    /// Counts one answer of `status` on `route`.
    public func count(route: String, status: Int) {
        counts.withLock { counts in
            var key = Key(route: route, status: (0...999).contains(status) ? status : 0)
            if counts[key] == nil && counts.count >= Self.maxEntries - 1 { key = Key(route: "other", status: 0) }
            counts[key, default: 0] &+= 1
        }
    }

    /// The counts so far.
    public var snapshot: [Key: Int64] { counts.withLock { $0 } }
}
