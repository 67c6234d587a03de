import ClusterCore
import ClusterProtocol

/// The cluster's record of handled events, which makes at-least-once delivery (resume replays, duplicate pushes,
/// two layouts overlapping during a rescale) into handling each event once. Pure: the time is a parameter.
///
/// A worker claims an event before its handler runs and completes it after (its reply has left). A claim held by
/// a live worker makes others wait; a claim of a worker that died is released, so its replacement, which gets the
/// event again by resuming, handles it. Completed events are remembered for `ttl`.
public struct ClaimLedger: Sendable {
    /// What a claim gets: handle the event, skip it, or wait for the worker that holds it.
    public typealias Decision = ClaimDecision

    /// A decision made later for a key that had to wait.
    public struct Resolution: Sendable, Equatable {
        public var requester: UInt64
        public var key: String
        public var decision: Decision

        /// The decision `decision` for `requester`'s claim of `key`.
        public init(requester: UInt64, key: String, decision: Decision) {
            self.requester = requester
            self.key = key
            self.decision = decision
        }
    }

    enum Entry: Sendable, Equatable {
        case inProgress(owner: UInt64)
        case done(at: MonotonicInstant)
    }

    public let ttl: Duration
    var entries: [String: Entry] = [:]
    var waiters: [String: [UInt64]] = [:]
    var owned: [UInt64: Set<String>] = [:]
    /// Requesters whose claims are refused (an old layout after a rescale's switch).
    var retired: Set<UInt64> = []
    /// Keys completed in the order they were, for expiry.
    var doneOrder: [(key: String, at: MonotonicInstant)] = []
    var doneHead = 0
    /// Completed keys not yet written to the database.
    public private(set) var unpersisted: [(key: String, at: MonotonicInstant)] = []

    /// An empty ledger that remembers completed events for `ttl`.
    public init(ttl: Duration) {
        self.ttl = ttl
    }

    /// Keys remembered as done (for status).
    public var remembered: Int { doneOrder.count - doneHead }

    /// Claims `keys` for `requester`: one decision per key, in order; a retired requester skips them all.
    public mutating func claim(_ keys: [String], by requester: UInt64, now: MonotonicInstant) -> [Decision] {
        expire(now: now)
        guard !retired.contains(requester) else { return keys.map { _ in .skip } }
        return keys.map { key in
            switch entries[key] {
            case nil:
                entries[key] = .inProgress(owner: requester)
                owned[requester, default: []].insert(key)
                return .handle
            case .done:
                return .skip
            case .inProgress(let owner):
                if owner == requester { return .skip }
                waiters[key, default: []].append(requester)
                return .wait
            }
        }
    }

    /// The handlers of `keys` finished: done for everyone; whoever waited skips.
    public mutating func complete(_ keys: [String], by requester: UInt64, now: MonotonicInstant) -> [Resolution] {
        var resolutions: [Resolution] = []
        for key in keys {
            guard case .inProgress(let owner) = entries[key], owner == requester else { continue }
            entries[key] = .done(at: now)
            owned[requester]?.remove(key)
            doneOrder.append((key, now))
            unpersisted.append((key, now))
            for waiter in waiters.removeValue(forKey: key) ?? [] {
                resolutions.append(Resolution(requester: waiter, key: key, decision: .skip))
            }
        }
        return resolutions
    }

    /// The handlers of `keys` did not finish: the first waiter, if any, handles them.
    public mutating func release(_ keys: [String], by requester: UInt64) -> [Resolution] {
        var resolutions: [Resolution] = []
        for key in keys {
            guard case .inProgress(let owner) = entries[key], owner == requester else { continue }
            owned[requester]?.remove(key)
            resolutions += handOver(key)
        }
        return resolutions
    }

    /// A worker is gone: everything it held is released (its replacement gets the events again by resuming).
    public mutating func requesterGone(_ requester: UInt64) -> [Resolution] {
        retired.remove(requester)
        for key in waiters.keys { waiters[key]?.removeAll { $0 == requester } }
        var resolutions: [Resolution] = []
        for key in owned.removeValue(forKey: requester) ?? [] {
            resolutions += handOver(key)
        }
        return resolutions
    }

    /// From now on `requester` may not start handlers (its claims are answered skip); what it holds stays its own
    /// until it completes or releases it.
    public mutating func retire(_ requester: UInt64) {
        retired.insert(requester)
    }

    mutating func handOver(_ key: String) -> [Resolution] {
        var queue = waiters.removeValue(forKey: key) ?? []
        guard !queue.isEmpty else {
            entries[key] = nil
            return []
        }
        let next = queue.removeFirst()
        entries[key] = .inProgress(owner: next)
        owned[next, default: []].insert(key)
        if !queue.isEmpty { waiters[key] = queue }
        return [Resolution(requester: next, key: key, decision: .handle)]
    }

    /// Loads keys completed before (from the database), as done.
    public mutating func remember(_ keys: [(key: String, at: MonotonicInstant)]) {
        for (key, at) in keys where entries[key] == nil {
            entries[key] = .done(at: at)
            doneOrder.append((key, at))
        }
    }

    /// Every key remembered as done (to write again after the database was made anew).
    public func allRemembered() -> [(key: String, at: MonotonicInstant)] {
        doneOrder[doneHead...].filter { entry in
            if case .done(let at) = entries[entry.key], at == entry.at { return true }
            return false
        }
    }

    /// Hands over the completed keys to write.
    public mutating func takeUnpersisted() -> [(key: String, at: MonotonicInstant)] {
        defer { unpersisted = [] }
        return unpersisted
    }

    mutating func expire(now: MonotonicInstant) {
        while doneHead < doneOrder.count, now - doneOrder[doneHead].at > ttl {
            let (key, at) = doneOrder[doneHead]
            if case .done(let stored) = entries[key], stored == at { entries[key] = nil }
            doneHead += 1
        }
        if doneHead > 4096 && doneHead * 2 > doneOrder.count {
            doneOrder.removeFirst(doneHead)
            doneHead = 0
        }
    }
}
