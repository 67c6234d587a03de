import ClusterCore

/// The cluster's REST budget, held by the supervisor: one global bucket, buckets per route learned from 429s,
/// pauses per route, and a queue of lease requests from workers. Pure: the time is a parameter.
///
/// Workers take leases of a few tokens so that a request rarely waits for a round trip. Under contention the
/// queue is first come, first served and a request gets what is there (at least one token): a worker that wants
/// more asks again and joins the back of the queue, so workers with equal demand get equal shares.
public struct BudgetAuthority: Sendable {
    /// The budget cluster.json sets: requests per second, the burst, the tokens of one lease and how long it lasts.
    public struct Configuration: Sendable {
        public var rate: Double
        public var burst: Int
        public var leaseSize: Int
        public var leaseTTL: Duration

        /// A budget of `rate` requests per second with a burst of `burst`, leased `leaseSize` tokens for `leaseTTL`.
        public init(rate: Double, burst: Int, leaseSize: Int, leaseTTL: Duration) {
            self.rate = rate
            self.burst = burst
            self.leaseSize = leaseSize
            self.leaseTTL = leaseTTL
        }
    }

    /// A lease request: who asked (a connection), their correlation id, the route, how many tokens.
    public struct Request: Sendable, Equatable {
        public var requester: UInt64
        public var id: UInt64
        public var route: String
        public var count: Int

        /// A request of `count` tokens for `route` by connection `requester`, answered under correlation id `id`.
        public init(requester: UInt64, id: UInt64, route: String, count: Int) {
            self.requester = requester
            self.id = id
            self.route = route
            self.count = count
        }
    }

    /// Tokens for one request: the requester and correlation id it answers, how many, and how long they are valid.
    public struct Grant: Sendable, Equatable {
        public var requester: UInt64
        public var id: UInt64
        public var count: Int
        public var ttl: Duration
    }

    struct Route: Sendable {
        /// A limit learned from a 429 on this route.
        var bucket: GCRA?
        var pausedUntil: MonotonicInstant?
        /// Grant times of the last second, to learn the route's rate when it is limited.
        var recent: [MonotonicInstant] = []
    }

    public let configuration: Configuration
    var global: GCRA
    var routes: [String: Route] = [:]
    var queue: [Request] = []
    /// Tokens granted to each requester within the last lease TTL: all a requester can give back (a lease
    /// expires after its TTL, so older tokens are spent or void).
    var recentGrants: [UInt64: [(at: MonotonicInstant, count: Int)]] = [:]

    /// The longest pause a 429 report can set (the platform's own `Retry-After` is clamped the same way).
    public static let maxPause = Duration.seconds(60)
    /// Route names kept apart; more (from a broken peer) share one bucket.
    public static let maxRoutes = 256
    public static let maxRouteLength = 200
    public static let otherRoutes = "(other routes)"
    /// Tokens granted so far, and per requester (for fairness checks and status).
    public private(set) var granted = 0
    public private(set) var grantedTo: [UInt64: Int] = [:]

    /// An authority with a full global bucket, no learned routes and an empty queue.
    public init(configuration: Configuration) {
        self.configuration = configuration
        global = GCRA(rate: configuration.rate, burst: configuration.burst)
    }

    /// This authority's part of the whole budget, 0...1 (1: all of it; several hosts: the share of the shards
    /// this host runs).
    public private(set) var share = 1.0

    /// Spends only `share` of the configured budget from now on (its rate and its burst). What the bucket owes
    /// stays owed: a smaller share does not turn spent tokens into new ones.
    public mutating func setShare(_ share: Double, now: MonotonicInstant) {
        let share = min(1, max(0, share))
        guard share != self.share else { return }
        self.share = share
        // A rate of zero is a bucket that refills once a day: nothing to spend without a shard.
        let rate = max(configuration.rate * share, 1.0 / 86_400)
        var bucket = GCRA(rate: rate, burst: max(1, Int((Double(configuration.burst) * share).rounded(.down))))
        bucket.tat = max(global.tat, now.nanoseconds.saturatingSubtract(bucket.tolerance))
        global = bucket
    }

    /// Requests waiting for tokens.
    public var waiting: Int { queue.count }

    /// The routes with a bucket or a pause of their own.
    public var knownRoutes: [String] { Array(routes.keys) }

    /// The route a peer named, as kept: long names are cut, and past `maxRoutes` new names share one bucket.
    func routeKey(_ route: String) -> String {
        let route = route.utf8.count > Self.maxRouteLength ? String(route.prefix(Self.maxRouteLength)) : route
        if routes[route] != nil || routes.count < Self.maxRoutes { return route }
        return Self.otherRoutes
    }

    /// A worker asks for tokens; the grants that can be made now (its own or earlier ones). A request for more
    /// than a lease (or for none) asks for one lease.
    public mutating func request(_ request: Request, now: MonotonicInstant) -> [Grant] {
        var request = request
        request.route = routeKey(request.route)
        request.count = min(max(1, request.count), max(1, configuration.leaseSize))
        queue.append(request)
        return serve(now: now)
    }

    /// A worker gives back tokens it did not use (it drains). At most what it was granted within the lease TTL
    /// and has not given back yet is taken back: returning tokens cannot raise the cluster over its rate.
    public mutating func giveBack(requester: UInt64, route: String, count: Int, now: MonotonicInstant) -> [Grant] {
        var grants = (recentGrants[requester] ?? []).filter { now - $0.at < configuration.leaseTTL }
        var left = min(max(0, count), grants.reduce(0) { $0 + $1.count })
        let taken = left
        while left > 0, let last = grants.last {
            let used = min(left, last.count)
            left -= used
            if used == last.count { grants.removeLast() } else { grants[grants.count - 1].count -= used }
        }
        recentGrants[requester] = grants.isEmpty ? nil : grants
        guard taken > 0 else { return [] }
        global.refund(taken, now: now)
        routes[routeKey(route)]?.bucket?.refund(taken, now: now)
        return serve(now: now)
    }

    /// The platform answered 429 on `route`: pause it for everyone (at most ``maxPause``), and from now on hold it
    /// below the rate it had reached. Returns the pause end for the workers to be told.
    public mutating func rateLimited(route: String, retryAfter: Duration, now: MonotonicInstant) -> MonotonicInstant {
        let route = routeKey(route)
        var state = routes[route] ?? Route()
        let until = now + min(max(.zero, retryAfter), Self.maxPause)
        state.pausedUntil = max(state.pausedUntil ?? until, until)
        let observed = state.recent.filter { now - $0 <= .seconds(1) }.count
        let learned = max(1.0, Double(observed) * 0.9)
        if state.bucket == nil || learned < Double(1e9) / Double(state.bucket!.interval) {
            state.bucket = GCRA(rate: learned, burst: max(1, Int(learned / 5)))
        }
        routes[route] = state
        return state.pausedUntil!
    }

    /// Another host got a 429 on `route`: pause it here too until `until` (at most ``maxPause`` from now). Learns
    /// no rate (that host's grants are not this one's). Whether the pause is new, or ends more than `slack` after
    /// the one here (the same pause read again, a little later each round, is nothing new): only then are the
    /// workers told.
    public mutating func pause(route: String, until: MonotonicInstant, now: MonotonicInstant, slack: Duration = .zero) -> Bool {
        let until = min(until, now + Self.maxPause)
        let key = routeKey(route)
        var state = routes[key] ?? Route()
        let current = state.pausedUntil.flatMap { $0 > now ? $0 + slack : nil } ?? now
        guard until > current else { return false }
        state.pausedUntil = until
        routes[key] = state
        return true
    }

    /// A worker is gone: its queued requests leave.
    public mutating func requesterGone(_ requester: UInt64, now: MonotonicInstant) -> [Grant] {
        queue.removeAll { $0.requester == requester }
        recentGrants[requester] = nil
        return serve(now: now)
    }

    /// A worker withdrew one request.
    public mutating func cancel(requester: UInt64, id: UInt64, now: MonotonicInstant) -> [Grant] {
        queue.removeAll { $0.requester == requester && $0.id == id }
        return serve(now: now)
    }

    /// Serves the queue with the tokens that came in by `now` (called when `nextDeadline` passes).
    public mutating func tick(now: MonotonicInstant) -> [Grant] {
        serve(now: now)
    }

    /// Serves the queue in order; a request whose route is paused or over its learned limit lets the others pass.
    mutating func serve(now: MonotonicInstant) -> [Grant] {
        var grants: [Grant] = []
        var index = 0
        while index < queue.count {
            let request = queue[index]
            var route = routes[request.route] ?? Route()
            if let until = route.pausedUntil, until > now {
                index += 1
                continue
            }
            var available = global.available(now: now)
            if let bucket = route.bucket { available = min(available, bucket.available(now: now)) }
            guard available >= 1 else {
                // The global bucket is empty for everyone: stop here, first come first served.
                if global.available(now: now) < 1 { break }
                index += 1
                continue
            }
            let count = min(request.count, available)
            _ = global.take(count, now: now)
            if route.bucket != nil { _ = route.bucket!.take(count, now: now) }
            route.recent.append(now)
            if route.recent.count > 4096 { route.recent.removeFirst(2048) }
            routes[request.route] = route
            queue.remove(at: index)
            granted += count
            grantedTo[request.requester, default: 0] += count
            var recent = (recentGrants[request.requester] ?? []).filter { now - $0.at < configuration.leaseTTL }
            recent.append((now, count))
            recentGrants[request.requester] = recent
            grants.append(Grant(requester: request.requester, id: request.id, count: count, ttl: configuration.leaseTTL))
        }
        return grants
    }

    /// When the next waiting request can be served.
    public var nextDeadline: MonotonicInstant? {
        var best: MonotonicInstant?
        for request in queue {
            let route = routes[request.route]
            var at = global.availableAt(1)
            if let bucket = route?.bucket { at = max(at, bucket.availableAt(1)) }
            if let pause = route?.pausedUntil { at = max(at, pause) }
            best = best.map { min($0, at) } ?? at
        }
        return best
    }
}
