import ClusterCore

/// Who should run which shard of a cluster that spans hosts: a pure function of the live hosts.
///
/// Hosts are numbered (`--host-id`, a StatefulSet pod's ordinal). With `H` one more than the highest live host
/// id, host `k` wants the range `[k·N/H, (k+1)·N/H)`: a host that restarts gets its own range back, and only
/// adding a host above the others (or removing the highest) moves ranges. A range whose host is not live is
/// spread over the live hosts in turn until it returns. Placement decides only what a host *tries*; the leases
/// decide who runs a shard.
public enum ShardPlacement {
    /// The host each shard should run on, for `liveHosts` (empty when no host is live).
    public static func assignment(shards: Int, liveHosts: Set<Int>) -> [Int] {
        guard shards > 0, let highest = liveHosts.max() else { return [] }
        let ranges = highest + 1
        let live = liveHosts.sorted()
        var owner = [Int](repeating: 0, count: shards)
        var orphans = 0
        for shard in 0..<shards {
            let wanted = shard * ranges / shards
            if liveHosts.contains(wanted) {
                owner[shard] = wanted
            } else {
                owner[shard] = live[orphans % live.count]
                orphans += 1
            }
        }
        return owner
    }
}

/// What one supervisor holds of the cluster's shard leases, until when it may run each shard, and what it asks
/// the store for at the next round. Pure: the store's answers and the time come in, changes for the workers go out.
///
/// Safety rests on one rule: a shard runs here only until `validUntil`, which is when the round that granted or
/// renewed the lease *started*, plus the lease's time to live, less `fenceMargin`. The database set the expiry
/// from its own clock at a moment after that start, so the lease outlives what this host believes, whatever the
/// two clocks read; the margin covers killing the worker and a local clock running slow. Another host takes a
/// shard only when the database says its lease expired or was released.
public struct LeaseKeeper: Sendable {
    /// The lease timings.
    public struct Configuration: Sendable, Equatable {
        /// How long a lease lasts after each renewal (on the database's clock).
        public var ttl: Duration
        /// How often a round runs (renews, takes, releases).
        public var renewInterval: Duration
        /// How long before the lease can expire this host stops the shard's worker when it could not renew.
        public var fenceMargin: Duration

        /// Timings as given; `ttl` should exceed `renewInterval` + `fenceMargin` by a few rounds.
        public init(ttl: Duration, renewInterval: Duration, fenceMargin: Duration) {
            self.ttl = ttl
            self.renewInterval = renewInterval
            self.fenceMargin = fenceMargin
        }
    }

    /// A lease this host holds.
    public struct Lease: Sendable, Equatable {
        /// The fencing token: it grows with every grant of the shard, and every write for it carries it.
        public var token: Int64
        /// Until when this host may run the shard (see the type's rule).
        public var validUntil: MonotonicInstant
        /// The shard is being handed to its placed host: released once its worker has stopped.
        public var handingOver: Bool
        /// The session stored with the lease when it was taken.
        public var sessionID: String?
        public var sessionSeq = 0
    }

    /// What the store showed in a round: the live hosts and who holds each unexpired lease.
    public struct View: Sendable, Equatable {
        /// Hosts whose heartbeat has not expired (this one included once it has beaten).
        public var liveHosts: Set<Int>
        /// The holder of every unexpired lease, by shard.
        public var holders: [Int: Int]

        /// A view of `liveHosts` and `holders`.
        public init(liveHosts: Set<Int>, holders: [Int: Int]) {
            self.liveHosts = liveHosts
            self.holders = holders
        }
    }

    /// What the workers are to do after a round or at a deadline.
    public enum Change: Sendable, Equatable {
        /// The lease is this host's now: start the shard, resuming its stored session.
        case gained(shard: Int, token: Int64)
        /// The lease is gone or about to expire unrenewed: kill the shard's worker now.
        case lost(shard: Int, reason: String)
        /// Another live host is placed to run the shard: drain its worker, then release the lease.
        case handOver(shard: Int)
    }

    public let configuration: Configuration
    /// This host's id.
    public let host: Int
    /// The cluster's shard count.
    public let shards: Int
    /// The leases held, by shard.
    public private(set) var held: [Int: Lease] = [:]
    /// The last view of the store, for the status of every host.
    public private(set) var view = View(liveHosts: [], holders: [:])
    /// When the last round succeeded.
    public private(set) var lastRenewal: MonotonicInstant?
    /// Grows with every change of `held`: the workers apply the latest set only.
    public private(set) var version: UInt64 = 0
    /// The host is stopping: it takes no shard and hands none over (it releases everything at the end).
    public private(set) var stopping = false
    /// The layout no longer serves (a rescale replaced it, or gave it up): it takes nothing, hands nothing over, and
    /// releases each lease once its worker has stopped.
    public private(set) var retiring = false

    /// A keeper for `host` in a cluster of `shards` shards, holding nothing yet. `joined`: the host has already
    /// seen the others in a round (a rescale's new layout), so it takes free shards placed here from its first
    /// round on.
    public init(configuration: Configuration, host: Int, shards: Int, joined: Bool = false) {
        self.configuration = configuration
        self.host = host
        self.shards = shards
        if joined { lastRenewal = .now() }
    }

    /// The tokens to renew in the next round (handovers included: a draining worker still runs on its lease).
    public var renewals: [Int: Int64] { held.mapValues(\.token) }

    /// The shards to try to take, given the round's view: free ones placed here. Nothing in the first round: hosts
    /// that start together see one another's heartbeats first, instead of the first one taking every shard.
    public func wanted(in view: View) -> [Int] {
        guard lastRenewal != nil, !stopping else { return [] }
        let owner = placement(in: view)
        return owner.indices.filter { owner[$0] == host && view.holders[$0] == nil && held[$0] == nil }
    }

    /// Who should run each shard, by `view`'s live hosts and this one (which is live as it asks).
    func placement(in view: View) -> [Int] {
        ShardPlacement.assignment(shards: shards, liveHosts: view.liveHosts.union([host]))
    }

    /// The handed-over shards whose workers have stopped (`stopped` says which shards run nothing here): the
    /// round releases them with their last session.
    public func releasable(stopped: Set<Int>) -> [Int: Int64] {
        held.filter { ($0.value.handingOver || retiring) && stopped.contains($0.key) }.mapValues(\.token)
    }

    /// A round that started at `startedAt` succeeded: `renewed` are the shards whose tokens the store renewed,
    /// `acquired` the leases it granted, `released` those it let go, and `view` what it showed.
    public mutating func roundSucceeded(
        startedAt: MonotonicInstant, renewed: Set<Int>, acquired: [Int: Int64], sessions: [Int: (id: String, seq: Int)] = [:],
        released: Set<Int>, view: View
    ) -> [Change] {
        defer { version += 1 }
        var changes: [Change] = []
        let validUntil = startedAt + configuration.ttl - configuration.fenceMargin
        for shard in released { held[shard] = nil }
        for (shard, lease) in held.sorted(by: { $0.key < $1.key }) {
            if renewed.contains(shard) {
                held[shard]!.validUntil = max(lease.validUntil, validUntil)
            } else {
                held[shard] = nil
                changes.append(.lost(shard: shard, reason: "the lease was taken by another host (token \(lease.token) is stale)"))
            }
        }
        for (shard, token) in acquired.sorted(by: { $0.key < $1.key }) where shard >= 0 && shard < shards {
            held[shard] = Lease(token: token, validUntil: validUntil, handingOver: false, sessionID: sessions[shard]?.id, sessionSeq: sessions[shard]?.seq ?? 0)
            changes.append(.gained(shard: shard, token: token))
        }
        self.view = view
        lastRenewal = startedAt
        let owner = placement(in: view)
        for (shard, lease) in held.sorted(by: { $0.key < $1.key }) where !lease.handingOver && !stopping {
            let placed = owner[shard]
            if placed != host, view.liveHosts.contains(placed) {
                held[shard]!.handingOver = true
                changes.append(.handOver(shard: shard))
            }
        }
        return changes
    }

    /// The leases whose validity ends by `now` without a renewal: their workers must stop now.
    public mutating func expire(now: MonotonicInstant) -> [Change] {
        var changes: [Change] = []
        defer { if !changes.isEmpty { version += 1 } }
        for (shard, lease) in held.sorted(by: { $0.key < $1.key }) where lease.validUntil <= now {
            held[shard] = nil
            changes.append(.lost(shard: shard, reason: "the lease could not be renewed in time"))
        }
        return changes
    }

    /// The host begins to stop: from now on it takes nothing and hands nothing over.
    public mutating func stop() {
        stopping = true
    }

    /// The layout stops serving here: from now on it takes nothing and hands nothing over, and every lease is
    /// released once its worker has stopped (`releasable`).
    public mutating func retire() {
        retiring = true
        stopping = true
    }

    /// Gives up every lease (this host is stopping and has released them, or must not run anything).
    public mutating func dropAll() {
        held = [:]
        version += 1
    }

    /// The leases as the workers' state machine takes them.
    public var grants: [Int: LeaseGrant] {
        held.mapValues { LeaseGrant(token: $0.token, sessionID: $0.sessionID, sessionSeq: $0.sessionSeq, handingOver: $0.handingOver) }
    }

    /// When the next lease runs out unrenewed, if any is held.
    public var nextExpiry: MonotonicInstant? {
        held.values.map(\.validUntil).min()
    }
}
