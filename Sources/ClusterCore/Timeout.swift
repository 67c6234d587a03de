/// A wait that outlasted its deadline.
public struct TimeoutError: Error, Sendable, CustomStringConvertible {
    /// What was waited for ("the access token", "the close handshake").
    public var what: String
    public var limit: Duration

    /// The error for a wait for `what` that got no answer within `limit`.
    public init(what: String, limit: Duration) {
        self.what = what
        self.limit = limit
    }

    public var description: String { "\(what): no answer within \(DurationFormat.format(limit))" }
}

/// Runs `operation` with a deadline: past `limit` it is cancelled and `TimeoutError` thrown. The operation must
/// honour cancellation (the call returns only once it has ended).
public func withTimeout<T: Sendable>(
    _ limit: Duration, _ what: String, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        guard let value = first else { throw TimeoutError(what: what, limit: limit) }
        return value
    }
}
