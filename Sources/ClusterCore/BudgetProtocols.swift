/// Permission to send an Identify: the supervisor's ledger in a cluster, a local pacer for a lone worker.
public protocol IdentifyPermit: Sendable {
    /// Waits until `shard` may identify; throws when it never may (the daily budget is spent) or on cancellation.
    func acquire(shard: ShardID) async throws
    /// The Identify left now: the bucket's window counts from here.
    func identifySent(shard: ShardID)
}

/// The REST budget every OpenAPI request spends first.
public protocol RequestBudget: Sendable {
    /// Waits (by suspension, never by polling) until a request on `route` may go.
    func acquire(route: String) async throws
    /// The platform answered 429 on `route`: pause that scope for `retryAfter`, everywhere.
    func rateLimited(route: String, retryAfter: Duration)
}

/// A budget wait that would outlast its deadline.
public struct BudgetTimeout: Error, Sendable, CustomStringConvertible {
    public var route: String
    public var wait: Duration
    /// The error for a request on `route` that would have had to wait `wait`.
    public init(route: String, wait: Duration) {
        self.route = route
        self.wait = wait
    }
    public var description: String { "rate budget for \(route) would wait \(DurationFormat.format(wait)), past the deadline" }
}
