/// Who may send an Identify, and when: one per bucket (`shard_id % max_concurrency`) per identify window, within
/// the daily session-start budget. A pure state machine: requests, acknowledgements and ticks in, grants out.
///
/// A bucket's window starts when the Identify leaves (the holder's acknowledgement), or at the grant when the
/// holder dies or never acknowledges: whichever is later, so the server never sees two Identifies of one bucket
/// closer than `window + margin`. Buckets are independent: a slow or stuck shard holds only its own bucket, and
/// only until `slotTimeout`.
public struct IdentifyLedger: Sendable {
    /// Limits: `maxConcurrency` buckets, one Identify each per `window + margin`, a grant held `slotTimeout` at most.
    public struct Configuration: Sendable, Equatable {
        public var maxConcurrency: Int
        public var window: Duration
        public var margin: Duration
        public var slotTimeout: Duration

        /// Pacing with the platform's 5 s window by default; a `maxConcurrency` below 1 counts as 1.
        public init(maxConcurrency: Int, window: Duration = .seconds(5), margin: Duration = .milliseconds(50), slotTimeout: Duration = .seconds(10)) {
            self.maxConcurrency = max(1, maxConcurrency)
            self.window = window
            self.margin = margin
            self.slotTimeout = slotTimeout
        }
    }

    /// A request's identity, chosen by the caller (a worker's ordinal and generation, a correlation id).
    public typealias RequestID = UInt64

    /// The answer to a request: a slot granted now, or denied because the daily budget is spent.
    public enum Decision: Sendable, Equatable {
        case granted(RequestID)
        /// The daily budget is spent: no Identify is possible until the reset.
        case denied(RequestID, reason: String)
    }

    struct Bucket: Sendable {
        /// When the last Identify of this bucket left (or is assumed to have left).
        var lastStart: MonotonicInstant?
        /// The grant not yet acknowledged: who holds it and since when.
        var outstanding: (id: RequestID, grantedAt: MonotonicInstant)?
        var queue: [RequestID] = []
    }

    public private(set) var configuration: Configuration
    /// Identifies left today, as the platform reported them (decremented per grant).
    public private(set) var remaining: Int
    var buckets: [Int: Bucket] = [:]
    var bucketOf: [RequestID: Int] = [:]
    /// Grants handed out so far.
    public private(set) var granted = 0

    /// An empty ledger with `remaining` identifies left today.
    public init(configuration: Configuration, remaining: Int) {
        self.configuration = configuration
        self.remaining = remaining
    }

    /// Resets the daily budget (from a fresh `/gateway/bot`).
    public mutating func updateRemaining(_ remaining: Int) {
        self.remaining = remaining
    }

    /// Asks for a slot for `shard`; the decisions that can be made now (this request's or others').
    public mutating func request(_ id: RequestID, shard: Int, now: MonotonicInstant) -> [Decision] {
        let bucket = ShardMath.bucket(ofShard: shard, maxConcurrency: configuration.maxConcurrency)
        bucketOf[id] = bucket
        buckets[bucket, default: Bucket()].queue.append(id)
        return tick(now: now)
    }

    /// The holder of `id` reports that its Identify left now: its bucket's window starts now.
    public mutating func sent(_ id: RequestID, now: MonotonicInstant) -> [Decision] {
        guard let bucket = bucketOf[id], let outstanding = buckets[bucket]?.outstanding, outstanding.id == id else { return [] }
        buckets[bucket]!.outstanding = nil
        buckets[bucket]!.lastStart = max(buckets[bucket]!.lastStart ?? now, now)
        bucketOf[id] = nil
        return tick(now: now)
    }

    /// The requester is gone (its worker exited, the request was cancelled). A grant it held counts as used now.
    public mutating func cancel(_ id: RequestID, now: MonotonicInstant) -> [Decision] {
        guard let bucket = bucketOf.removeValue(forKey: id) else { return [] }
        if let outstanding = buckets[bucket]?.outstanding, outstanding.id == id {
            buckets[bucket]!.outstanding = nil
            buckets[bucket]!.lastStart = max(buckets[bucket]!.lastStart ?? now, now)
        }
        buckets[bucket]?.queue.removeAll { $0 == id }
        return tick(now: now)
    }

    /// Grants every slot that is due; expires grants never acknowledged.
    public mutating func tick(now: MonotonicInstant) -> [Decision] {
        var decisions: [Decision] = []
        for key in buckets.keys.sorted() {
            var bucket = buckets[key]!
            if let outstanding = bucket.outstanding, now - outstanding.grantedAt >= configuration.slotTimeout {
                // Never acknowledged: assume it left at the latest possible moment.
                bucket.outstanding = nil
                bucket.lastStart = max(bucket.lastStart ?? now, now)
                bucketOf[outstanding.id] = nil
            }
            while bucket.outstanding == nil, let next = bucket.queue.first {
                if remaining <= 0 {
                    bucket.queue.removeFirst()
                    bucketOf[next] = nil
                    decisions.append(.denied(next, reason: "the daily session start limit is spent"))
                    continue
                }
                if let last = bucket.lastStart, now < last + configuration.window + configuration.margin { break }
                bucket.queue.removeFirst()
                bucket.outstanding = (next, now)
                bucket.lastStart = now
                remaining -= 1
                granted += 1
                decisions.append(.granted(next))
            }
            buckets[key] = bucket
        }
        return decisions
    }

    /// When the next grant or slot expiry can happen, if anything waits.
    public var nextDeadline: MonotonicInstant? {
        var deadline: MonotonicInstant?
        for bucket in buckets.values {
            var candidate: MonotonicInstant?
            if let outstanding = bucket.outstanding {
                candidate = outstanding.grantedAt + configuration.slotTimeout
            } else if !bucket.queue.isEmpty, let last = bucket.lastStart {
                candidate = last + configuration.window + configuration.margin
            }
            if let candidate { deadline = deadline.map { min($0, candidate) } ?? candidate }
        }
        return deadline
    }

    /// When the last of `pending` identifies can leave at the pace this ledger grants them: each bucket one per
    /// window (and margin) after its last start. `pending` counts, by bucket, the shards still to identify, those
    /// holding a grant included (their identify counts as left).
    public func estimatedFinish(pending: [Int: Int], now: MonotonicInstant) -> MonotonicInstant {
        let spacing = configuration.window + configuration.margin
        var finish = now
        for (key, count) in pending {
            let bucket = buckets[key]
            let toStart = count - (bucket?.outstanding == nil ? 0 : 1)
            guard toStart > 0 else { continue }
            let first = bucket?.lastStart.map { max(now, $0 + spacing) } ?? now
            finish = max(finish, first + spacing * (toStart - 1))
        }
        return finish
    }

    /// Requests waiting for a slot.
    public var waiting: Int { buckets.values.reduce(0) { $0 + $1.queue.count } }

    /// The least time `count` more identifies take at this concurrency: (ceil(count / maxConcurrency) - 1) windows.
    public static func minimumDuration(identifies count: Int, maxConcurrency: Int, window: Duration) -> Duration {
        guard count > 0 else { return .zero }
        let rounds = (count + max(1, maxConcurrency) - 1) / max(1, maxConcurrency)
        return window * (rounds - 1)
    }
}
