import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Logging
import Synchronization

/// The identify ledger served over IPC: requests are answered on the event loop that received them when a slot
/// is free, or by the ledger's own clock when one comes free.
///
/// With several hosts (`ClusterSlots`), the local ledger orders this host's requests and a grant is only the
/// right to ask the store: the bucket's slot is reserved in SQL, cluster-wide, before the worker hears of it, and
/// given back when its Identify left (or never will).
final class IdentifyLedgerService: Sendable {
    /// The store that every host's identifies go through.
    struct ClusterSlots: Sendable {
        let authority: PostgresAuthority
        /// Unique to this supervisor's life: `host/random`, then the request's id.
        let holderPrefix: String
    }

    struct Request {
        var connection: IPCConnection
        var correlation: UInt64
        var shard: Int32
    }

    struct State {
        var ledger: IdentifyLedger
        var requests: [IdentifyLedger.RequestID: Request] = [:]
        var nextID: IdentifyLedger.RequestID = 0
        /// Requests holding a cluster-wide slot (several hosts), by id: their bucket.
        var clusterHeld: [IdentifyLedger.RequestID: Int] = [:]
    }

    /// The platform's count of the day's session starts now, and the time to its reset (`/gateway/bot`).
    typealias Starts = @Sendable () async throws -> (remaining: Int, resetAfter: Duration)

    let state: Mutex<State>
    let wakeup = Wakeup()
    let cluster: ClusterSlots?
    let logger: Logger
    let failures = RateLimitedLog()
    let platformStarts: Starts?
    /// When the platform was last asked for the day's count (see `freshStarts`).
    let lastLook = Mutex<MonotonicInstant?>(nil)
    /// The shortest time between two looks at the platform's count, however many requests are denied.
    static let lookInterval = Duration.seconds(5)

    init(ledger: IdentifyLedger, authority: ClusterSlots? = nil, platformStarts: Starts? = nil, logger: Logger = Logger(label: "botcluster.identify")) {
        state = Mutex(State(ledger: ledger))
        cluster = authority
        self.platformStarts = platformStarts
        self.logger = logger
    }

    /// The day's count, when there are starts again: the ledger counts only down and the store keeps the figure the
    /// hosts reported, so once spent, the day's reset would go unseen and every Identify be denied until a restart.
    /// Before a request is denied, the platform is asked (`/gateway/bot`; at most once per `lookInterval`, counted
    /// from the end of the last look; without a new look, nil: the denial stands). Across hosts the store takes the
    /// platform's count only once its own day is over: the count returned is the store's.
    func freshStarts() async -> Int? {
        guard let platformStarts else { return nil }
        let mayLook = lastLook.withLock { last -> Bool in
            if let last, MonotonicInstant.now() - last < Self.lookInterval { return false }
            last = .now()
            return true
        }
        guard mayLook else { return nil }
        defer { lastLook.withLock { $0 = .now() } }
        guard let starts = try? await platformStarts(), starts.remaining > 0 else { return nil }
        var remaining = starts.remaining
        if let cluster {
            guard let stored = try? await cluster.authority.setSessionStarts(remaining: starts.remaining, resetAfter: starts.resetAfter), stored > 0 else {
                return nil
            }
            remaining = stored
        }
        state.withLock { $0.ledger.updateRemaining(remaining) }
        logger.info("the platform's day was reset: session starts again", metadata: ["remaining": "\(remaining)"])
        return remaining
    }

    /// Request `id` would be denied (`reason`): asked again after a fresh look at the platform's count found starts,
    /// else denied.
    func denyUnlessReset(_ id: IdentifyLedger.RequestID, reason: String) async {
        if await freshStarts() != nil {
            let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
                guard let request = state.requests[id] else { return [] }
                return state.ledger.request(id, shard: Int(request.shard), now: .now())
            }
            deliver(decisions, lookFirst: false)
            wakeup.poke()
            return
        }
        let request = state.withLock { $0.requests.removeValue(forKey: id) }
        request?.connection.send(.identifyDenied(id: request!.correlation, reason: reason))
    }

    var snapshot: (remaining: Int, waiting: Int, granted: Int, maxConcurrency: Int) {
        state.withLock { ($0.ledger.remaining, $0.ledger.waiting, $0.ledger.granted, $0.ledger.configuration.maxConcurrency) }
    }

    /// When the last of `pending` identifies (by bucket) can leave.
    func estimatedFinish(pending: [Int: Int], now: MonotonicInstant) -> MonotonicInstant {
        state.withLock { $0.ledger.estimatedFinish(pending: pending, now: now) }
    }

    /// Takes the platform's count of session starts left today.
    func updateRemaining(_ remaining: Int) {
        state.withLock { $0.ledger.updateRemaining(remaining) }
    }

    func request(from connection: IPCConnection, correlation: UInt64, shard: Int32) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            state.nextID += 1
            state.requests[state.nextID] = Request(connection: connection, correlation: correlation, shard: shard)
            return state.ledger.request(state.nextID, shard: Int(shard), now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker on `connection` sent its Identify for `shard` now.
    func sent(from connection: IPCConnection, shard: Int32) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            guard let id = state.requests.first(where: { $0.value.connection == connection && $0.value.shard == shard })?.key else { return [] }
            state.requests[id] = nil
            giveBack(id, &state)
            return state.ledger.sent(id, now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker withdrew one request.
    func cancel(from connection: IPCConnection, correlation: UInt64) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            guard let id = state.requests.first(where: { $0.value.connection == connection && $0.value.correlation == correlation })?.key else { return [] }
            state.requests[id] = nil
            giveBack(id, &state)
            return state.ledger.cancel(id, now: .now())
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// The worker is gone: its queued requests leave, a grant it held counts as used now.
    func connectionClosed(_ connection: IPCConnection) {
        let decisions = state.withLock { state -> [IdentifyLedger.Decision] in
            var decisions: [IdentifyLedger.Decision] = []
            for (id, request) in state.requests where request.connection == connection {
                state.requests[id] = nil
                giveBack(id, &state)
                decisions += state.ledger.cancel(id, now: .now())
            }
            return decisions
        }
        deliver(decisions)
        wakeup.poke()
    }

    /// Sends the ledger's decisions: a grant (across hosts: once the store's slot is reserved), or a denial (after a
    /// look at the platform's count, unless `lookFirst` is false).
    func deliver(_ decisions: [IdentifyLedger.Decision], lookFirst: Bool = true) {
        let replies = state.withLock { state -> [(IPCConnection, IPCMessage)] in
            decisions.compactMap { decision in
                switch decision {
                case .granted(let id) where cluster != nil:
                    // The store decides: the worker hears once the cluster-wide slot is this request's.
                    if let request = state.requests[id] {
                        Task { await self.reserve(id, shard: Int(request.shard)) }
                    }
                    return nil
                case .granted(let id):
                    // Granted requests stay until the worker reports its Identify left (`sent`).
                    return state.requests[id].map { ($0.connection, .identifyGrant(id: $0.correlation)) }
                case .denied(let id, let reason) where lookFirst && platformStarts != nil:
                    if state.requests[id] != nil { Task { await self.denyUnlessReset(id, reason: reason) } }
                    return nil
                case .denied(let id, let reason):
                    return state.requests.removeValue(forKey: id).map { ($0.connection, .identifyDenied(id: $0.correlation, reason: reason)) }
                }
            }
        }
        for (connection, message) in replies { connection.send(message) }
    }

    /// The store's slot of `shard`'s bucket for request `id`: asked until granted (then the worker hears), spent
    /// (the worker is denied), or the request is gone. A store that does not answer is asked again each second.
    func reserve(_ id: IdentifyLedger.RequestID, shard: Int) async {
        guard let cluster else { return }
        let (maxConcurrency, spacing, slotTimeout) = state.withLock {
            ($0.ledger.configuration.maxConcurrency, $0.ledger.configuration.window + $0.ledger.configuration.margin, $0.ledger.configuration.slotTimeout)
        }
        let bucket = ShardMath.bucket(ofShard: shard, maxConcurrency: maxConcurrency)
        let holder = "\(cluster.holderPrefix)/\(id)"
        var looked = false
        while state.withLock({ $0.requests[id] != nil }) {
            let answer: PostgresAuthority.IdentifySlot
            do {
                answer = try await cluster.authority.reserveIdentify(bucket: bucket, holder: holder, spacing: spacing, slotTimeout: slotTimeout)
                failures.reset()
            } catch {
                failures.log(logger, .error, "cannot reserve an identify slot in the store; asking again", metadata: ["error": "\(String(describing: error).prefix(300))"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            switch answer {
            case .wait(let delay):
                try? await Task.sleep(for: min(delay, .seconds(1)))
            case .spent:
                // The platform's day may have been reset since the store's count was set: one look per request.
                if !looked {
                    looked = true
                    if await freshStarts() != nil { continue }
                }
                let request = state.withLock { $0.requests.removeValue(forKey: id) }
                let decisions = state.withLock { $0.ledger.cancel(id, now: .now()) }
                request?.connection.send(.identifyDenied(id: request!.correlation, reason: "the daily session start limit is spent (cluster-wide)"))
                deliver(decisions)
                return
            case .granted:
                let request = state.withLock { state -> Request? in
                    guard let request = state.requests[id] else { return nil }
                    state.clusterHeld[id] = bucket
                    return request
                }
                if let request {
                    request.connection.send(.identifyGrant(id: request.correlation))
                } else {
                    // Gone while the slot was reserved: give it back now.
                    try? await cluster.authority.identifyDone(bucket: bucket, holder: holder, spacing: spacing)
                }
                return
            }
        }
    }

    /// Request `id` holds a cluster-wide slot no more (its Identify left, or it is gone): the store hears it.
    func giveBack(_ id: IdentifyLedger.RequestID, _ state: inout State) {
        guard let cluster, let bucket = state.clusterHeld.removeValue(forKey: id) else { return }
        let spacing = state.ledger.configuration.window + state.ledger.configuration.margin
        let holder = "\(cluster.holderPrefix)/\(id)"
        Task {
            do {
                try await cluster.authority.identifyDone(bucket: bucket, holder: holder, spacing: spacing)
            } catch {
                // The slot stays held until its timeout: the bucket waits, nothing overlaps.
                self.failures.log(self.logger, .warning, "cannot report an identify to the store; its bucket waits for the slot timeout", metadata: ["error": "\(String(describing: error).prefix(300))"])
            }
        }
    }

    /// Runs the ledger's clock for the life of the supervisor.
    func run() async {
        while !Task.isCancelled {
            let deadline = state.withLock { $0.ledger.nextDeadline }
            await wakeup.wait(until: deadline)
            if Task.isCancelled { return }
            deliver(state.withLock { $0.ledger.tick(now: .now()) })
        }
    }
}
