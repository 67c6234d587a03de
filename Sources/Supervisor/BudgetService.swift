import ClusterCore
import ClusterIPC
import ClusterProtocol
import RateBudget
import Synchronization

/// The REST budget served over IPC: lease requests are granted on the event loop that received them when tokens
/// are there, or by the budget's own clock when they come.
public final class BudgetService: Sendable {
    let authority: Mutex<BudgetAuthority>
    let connections = Mutex<[UInt64: IPCConnection]>([:])
    let wakeup = Wakeup()

    /// A service for a budget of `configuration`, with a full bucket and no requests.
    public init(configuration: BudgetAuthority.Configuration) {
        authority = Mutex(BudgetAuthority(configuration: configuration))
    }

    var snapshot: (granted: Int, waiting: Int) {
        authority.withLock { ($0.granted, $0.waiting) }
    }

    /// Spends `share` of the configured budget from now on (several hosts: the share of the shards run here).
    public func setShare(_ share: Double) {
        authority.withLock { $0.setShare(share, now: .now()) }
        wakeup.poke()
    }

    /// The part of the configured budget this host spends.
    public var share: Double { authority.withLock { $0.share } }

    /// Tokens granted per worker connection so far.
    public var grantedTo: [UInt64: Int] { authority.withLock { $0.grantedTo } }

    /// A worker's request `id` for `count` tokens on `route`; grants that can be made now are sent at once.
    public func request(from connection: IPCConnection, id: UInt64, route: String, count: Int) {
        connections.withLock { $0[connection.id] = connection }
        deliver(authority.withLock { $0.request(.init(requester: connection.id, id: id, route: route, count: count), now: .now()) })
    }

    /// A worker withdrew its request `id`; whatever can be granted now is sent.
    public func cancel(from connection: IPCConnection, id: UInt64) {
        deliver(authority.withLock { $0.cancel(requester: connection.id, id: id, now: .now()) })
    }

    /// A worker gives back `count` unused tokens of `route` (at most what it was granted within the lease TTL).
    public func giveBack(from connection: IPCConnection, route: String, count: Int) {
        deliver(authority.withLock { $0.giveBack(requester: connection.id, route: route, count: count, now: .now()) })
    }

    /// A 429 somewhere: the route is paused for everyone; returns how long from now.
    public func rateLimited(route: String, retryAfter: Duration) -> Duration {
        let now = MonotonicInstant.now()
        let until = authority.withLock { $0.rateLimited(route: route, retryAfter: retryAfter, now: now) }
        wakeup.poke()
        return until - now
    }

    /// Another host's 429 on `route`, `remaining` from now: paused here too. How long from now, when that is new or
    /// ends more than a second after the pause here (the workers are to be told); nil when this host knew already
    /// (each round reads the same pause again, a round's time later).
    public func pauseFromElsewhere(route: String, remaining: Duration) -> Duration? {
        let now = MonotonicInstant.now()
        guard authority.withLock({ $0.pause(route: route, until: now + remaining, now: now, slack: .seconds(1)) }) else { return nil }
        wakeup.poke()
        return min(remaining, BudgetAuthority.maxPause)
    }

    /// A worker's connection closed: its queued requests leave, and whatever can be granted now is sent.
    public func connectionClosed(_ connection: IPCConnection) {
        connections.withLock { _ = $0.removeValue(forKey: connection.id) }
        deliver(authority.withLock { $0.requesterGone(connection.id, now: .now()) })
    }

    func deliver(_ grants: [BudgetAuthority.Grant]) {
        if !grants.isEmpty {
            let targets = connections.withLock { $0 }
            for grant in grants {
                targets[grant.requester]?.send(.budgetGrant(id: grant.id, count: Int32(grant.count), ttlMillis: Int32(clamping: grant.ttl.nanoseconds / 1_000_000)))
            }
        }
        wakeup.poke()
    }

    /// Runs the budget's clock for the life of the supervisor.
    public func run() async {
        while !Task.isCancelled {
            let deadline = authority.withLock { $0.nextDeadline }
            await wakeup.wait(until: deadline)
            if Task.isCancelled { return }
            let grants = authority.withLock { $0.tick(now: .now()) }
            if !grants.isEmpty {
                let targets = connections.withLock { $0 }
                for grant in grants {
                    targets[grant.requester]?.send(.budgetGrant(id: grant.id, count: Int32(grant.count), ttlMillis: Int32(clamping: grant.ttl.nanoseconds / 1_000_000)))
                }
            }
        }
    }
}
