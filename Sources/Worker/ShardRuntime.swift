import ClusterCore
import ClusterProtocol
import Logging
import QQGateway
import Synchronization
import UserCache

/// What a shard's runtime reports as it goes (the supervisor's IPC link implements it; a lone worker logs).
public protocol RuntimeObserver: Sendable {
    /// The session a successor would resume: its id and the seq up to which every dispatch is handled.
    func sessionCommitted(sessionID: String, seq: Int)
    /// The session is gone: a successor must identify.
    func sessionInvalidated()
    func ready(sessionID: String, resumed: Bool)
    func heartbeatAcknowledged(latency: Duration)
    func disconnected(code: UInt16?)
    func failed(_ reason: GatewaySessionStateMachine.FatalReason)
}

extension RuntimeObserver {
    /// Ignores the committed session by default.
    public func sessionCommitted(sessionID: String, seq: Int) {}
    /// Ignores the invalidation by default.
    public func sessionInvalidated() {}
    /// Ignores READY and RESUMED by default.
    public func ready(sessionID: String, resumed: Bool) {}
    /// Ignores heartbeat ACKs by default.
    public func heartbeatAcknowledged(latency: Duration) {}
    /// Ignores disconnects by default.
    public func disconnected(code: UInt16?) {}
    /// Ignores the gateway's failure by default.
    public func failed(_ reason: GatewaySessionStateMachine.FatalReason) {}
}

/// Counters of one shard's runtime.
public struct RuntimeStats: Sendable {
    public var received = 0
    public var handled = 0
    public var duplicatesSkipped = 0
    public var undecodable = 0
    public var handlerErrors = 0
    public var reconnects = 0
    public var lastEventAt: MonotonicInstant?
    public var heartbeatLatency: Duration?
    /// Event received -> handler entered.
    public var dispatchLatency = LatencyHistogram()
    /// Dispatches received, by event type (bounded: see `WorkerMetrics.maxLabels`).
    public var eventsByType: [String: Int64] = [:]
    /// How long handlers ran (those that ended, with or without an error).
    public var handlerDuration = MetricHistogram(bounds: MetricHistogram.Bounds.handler)
    /// Every heartbeat ACK's round trip.
    public var heartbeatLatencies = MetricHistogram(bounds: MetricHistogram.Bounds.heartbeat)
}

/// How a runtime ended.
public struct RuntimeOutcome: Sendable {
    public var gateway: GatewayClientOutcome
    /// The session and committed seq to resume from (nil after an invalid session).
    public var sessionID: String?
    public var committedSeq: Int
    /// Handlers still running when the drain timeout ran out (they were cancelled).
    public var abandoned: Int
    public var stats: RuntimeStats
}

/// Runs one shard: the gateway client feeds dispatches, which are claimed (effectively once), handed to the bot's
/// handler with at most `maxInFlight` running (the reader waits beyond that: backpressure, not memory), and
/// tracked so that the committed seq — what a successor resumes from — never passes an unfinished event.
public final class ShardRuntime: Sendable {
    /// What a runtime runs: its shard, how many handlers run at once, and how long a stop waits for them.
    public struct Configuration: Sendable {
        public var shard: ShardID
        public var maxInFlight: Int
        public var drainTimeout: Duration

        /// A runtime configuration from the shard, the handler limit and the drain timeout.
        public init(shard: ShardID, maxInFlight: Int, drainTimeout: Duration) {
            self.shard = shard
            self.maxInFlight = maxInFlight
            self.drainTimeout = drainTimeout
        }
    }

    struct State {
        var tracker = SeqTracker()
        var sessionID: String?
        var stats = RuntimeStats()
        var inFlight = 0
        /// The session and seq `finishDispatch` waits for the committed seq to reach.
        var fence: (sessionID: String, seq: Int)?

        /// RESUMED of `sessionID` at `seq`. The replay comes before it, numbered in the session this process knew:
        /// in a process started to resume it (no session known yet), that is this one, and its dispatches still in
        /// flight keep the committed seq back (were they forgotten, a successor would resume past them).
        mutating func resumed(sessionID: String, seq: Int) {
            if self.sessionID == nil {
                self.sessionID = sessionID
            } else if self.sessionID != sessionID {
                tracker.reset()
                self.sessionID = sessionID
            }
            tracker.observe(seq)
        }

        /// Whether the fence is passed: every dispatch up to its seq handled, or its session gone.
        var fencePassed: Bool {
            guard let fence else { return true }
            return sessionID != fence.sessionID || tracker.committed >= fence.seq
        }
    }

    let configuration: Configuration
    let handler: any EventHandler
    let client: any EventSource
    let api: OpenAPIClient
    let claims: any EventClaims
    let users: UserDirectory?
    let observer: (any RuntimeObserver)?
    let logger: Logger
    let slots: AsyncSemaphore
    /// Set once events may go to the handler (a new layout waits for the switch of a rescale).
    let dispatchGate: AsyncSignal<Void>
    let state = Mutex(State())
    let idle = Wakeup()
    /// Poked when the committed seq reaches `State.fence` (what `finishDispatch` waits on).
    let fenceReached = Wakeup()
    /// One `finishDispatch` at a time: `State.fence` is one fence (a second request beside the first would clear it
    /// under the first's feet). Each takes its own fence once its turn comes, later than its request.
    let fenceTurn = AsyncSemaphore(permits: 1)
    /// Poked when a dispatch is done with (the committed seq may have moved): a reporter waits on it instead of
    /// polling, so an idle shard's reporter sleeps.
    public let sessionMoved = Wakeup()
    let jobs: AsyncStream<@Sendable () async -> Void>
    let jobsContinuation: AsyncStream<@Sendable () async -> Void>.Continuation

    /// Creates the runtime; with `holdDispatch`, events wait for `startDispatch()` (a rescale's new layout).
    public init(
        configuration: Configuration, handler: any EventHandler, client: any EventSource, api: OpenAPIClient,
        claims: any EventClaims, users: UserDirectory? = nil, observer: (any RuntimeObserver)?, logger: Logger,
        holdDispatch: Bool = false
    ) {
        self.configuration = configuration
        self.handler = handler
        self.client = client
        self.api = api
        self.claims = claims
        self.users = users
        self.observer = observer
        var logger = logger
        logger[metadataKey: "shard.id"] = "\(configuration.shard)"
        self.logger = logger
        slots = AsyncSemaphore(permits: configuration.maxInFlight)
        dispatchGate = AsyncSignal()
        if !holdDispatch { dispatchGate.set(()) }
        (jobs, jobsContinuation) = AsyncStream.makeStream()
    }

    /// The counters so far.
    public var stats: RuntimeStats { state.withLock { $0.stats } }

    /// The session a successor would resume from now.
    public var committed: (sessionID: String?, seq: Int) {
        state.withLock { ($0.sessionID, $0.tracker.committed) }
    }

    /// Lets events go to the handler (the switch of a rescale).
    public func startDispatch() {
        dispatchGate.set(())
    }

    /// Handles everything the gateway had sent this shard when called, and returns once it is handled: the layout
    /// it belongs to is retired at a rescale's switch, and nothing it alone received may be left unhandled. Events
    /// that arrive later also go to the handler until the worker stops; the cluster's claims keep each to one.
    public func finishDispatch() async {
        guard (try? await fenceTurn.acquire()) != nil else { return }
        defer { fenceTurn.release() }
        let (session, fenceSeq) = await client.fence()
        guard let session, let seq = fenceSeq else { return }
        state.withLock { $0.fence = (session, seq) }
        // A handler ending past the fence pokes; a poke left from an earlier fence only costs one more look.
        while !Task.isCancelled && !state.withLock({ $0.fencePassed }) {
            await fenceReached.wait(until: nil)
        }
        state.withLock { $0.fence = nil }
    }

    /// Set once `stop()` was called (what a shutdown deadline counts from).
    public let stopRequested = AsyncSignal<Void>()

    /// Stops reading, closes the socket resumably, and lets running handlers finish (up to the drain timeout).
    /// Events the reader holds for a free slot or for the switch of a rescale are not handled: the committed seq
    /// stays below them, so a successor's Resume gets them again.
    public func stop() {
        stopRequested.set(())
        slots.close()
        dispatchGate.fail(RuntimeStopped())
        client.stop()
    }

    struct RuntimeStopped: Error {}

    /// Runs until stopped or until the gateway fails for good.
    public func run() async -> RuntimeOutcome {
        let gatewayOutcome = AsyncSignal<GatewayClientOutcome>()
        var abandoned = 0
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    let outcome = await self.client.run { event in await self.handle(event) }
                    gatewayOutcome.set(outcome)
                    self.jobsContinuation.finish()
                }
                for await job in jobs {
                    group.addTask { await job() }
                }
                // Reading has stopped: give running handlers the drain timeout, then cancel what is left.
                try await self.drain()
            }
        } catch {
            abandoned = state.withLock { $0.inFlight }
            logger.warning("drain timed out; cancelled running handlers", metadata: ["handlers": "\(abandoned)"])
        }
        let (sessionID, committed, stats) = state.withLock { ($0.sessionID, $0.tracker.committed, $0.stats) }
        return RuntimeOutcome(
            gateway: gatewayOutcome.current ?? .stopped(sessionID: sessionID, seq: committed),
            sessionID: sessionID, committedSeq: committed, abandoned: abandoned, stats: stats
        )
    }

    struct DrainTimeout: Error {}

    func drain() async throws {
        let deadline = MonotonicInstant.now() + configuration.drainTimeout
        while state.withLock({ $0.inFlight }) > 0 {
            if MonotonicInstant.now() >= deadline { throw DrainTimeout() }
            await idle.wait(until: deadline)
        }
    }

    /// Reports the session to the observer at once (when it is new or resumed: a successor must find it even if
    /// this worker dies before its next progress report, which carries it from then on).
    func reportSession() {
        let (id, seq) = committed
        guard let id else { return }
        observer?.sessionCommitted(sessionID: id, seq: seq)
    }

    func handle(_ event: GatewayClientEvent) async {
        switch event {
        case .ready(let sessionID, _):
            state.withLock { state in
                state.tracker.reset(seq: 1)
                state.sessionID = sessionID
            }
            observer?.ready(sessionID: sessionID, resumed: false)
            reportSession()
            let ctx = Context(api: api, shard: configuration.shard, logger: logger, eventID: nil, seq: 1, users: users)
            await spawnHandler(name: "READY", ticket: nil, claimKey: nil) { try await self.handler.ready(ctx, sessionID: sessionID) }
        case .resumed(let sessionID, let seq):
            state.withLock { $0.resumed(sessionID: sessionID, seq: seq) }
            observer?.ready(sessionID: sessionID, resumed: true)
            reportSession()
        case .dispatch(let dispatch):
            await dispatchEvent(dispatch)
        case .sessionInvalidated:
            state.withLock { state in
                state.sessionID = nil
                state.tracker.reset()
            }
            observer?.sessionInvalidated()
        case .heartbeatAcknowledged(let latency):
            state.withLock { state in
                state.stats.heartbeatLatency = latency
                state.stats.heartbeatLatencies.record(latency)
            }
            observer?.heartbeatAcknowledged(latency: latency)
        case .disconnected(let code, let reconnectIn):
            if reconnectIn != nil { state.withLock { $0.stats.reconnects += 1 } }
            observer?.disconnected(code: code)
        case .failed(let reason):
            observer?.failed(reason)
        }
    }

    func dispatchEvent(_ dispatch: GatewayDispatch) async {
        // Held until the switch: the reader waits here, so the socket is not read (backpressure, no buffering).
        if dispatchGate.current == nil {
            do {
                try await dispatchGate.wait()
            } catch {
                return
            }
        }
        let ticket = state.withLock { state -> SeqTracker.Ticket in
            state.stats.received += 1
            WorkerMetrics.tally(&state.stats.eventsByType, WorkerMetrics.eventLabel(dispatch.name), 1, overflow: WorkerMetrics.otherLabel)
            state.stats.lastEventAt = dispatch.receivedAt
            return state.tracker.begin(dispatch.seq)
        }
        let event: GatewayEvent
        do {
            event = try GatewayEvent.decode(name: dispatch.name, payload: dispatch.payload)
        } catch {
            logger.warning("undecodable event skipped", metadata: ["event": "\(dispatch.name)", "session.seq": "\(dispatch.seq)", "problem": "\(error)"])
            state.withLock { state in
                state.stats.undecodable += 1
                state.tracker.end(ticket)
            }
            sessionMoved.poke()
            return
        }
        if let users {
            for user in event.users { users.observe(id: user.id, username: user.username, avatar: user.avatar, bot: user.bot) }
        }
        let key = dispatch.eventID ?? Self.messageID(of: event).map { "\(dispatch.name):\($0)" }
        let ctx = Context(api: api, shard: configuration.shard, logger: logger, eventID: dispatch.eventID, seq: dispatch.seq, users: users)
        let receivedAt = dispatch.receivedAt
        await spawnHandler(name: dispatch.name, ticket: ticket, claimKey: key) {
            self.state.withLock { $0.stats.dispatchLatency.record(.now() - receivedAt) }
            try await self.handler.handle(event, ctx: ctx)
        }
    }

    /// Waits for a free slot (backpressure), then runs the handler as its own task.
    func spawnHandler(name: String, ticket: SeqTracker.Ticket?, claimKey: String?, _ body: @escaping @Sendable () async throws -> Void) async {
        do {
            try await slots.acquire()
        } catch {
            // Stopping: the event is not handled, and its ticket stays open so that the committed seq — what a
            // successor resumes from — never passes it.
            return
        }
        state.withLock { $0.inFlight += 1 }
        jobsContinuation.yield {
            defer {
                self.slots.release()
                let (idle, fencePassed) = self.state.withLock { state -> (Bool, Bool) in
                    if let ticket { state.tracker.end(ticket) }
                    state.inFlight -= 1
                    return (state.inFlight == 0, state.fence != nil && state.fencePassed)
                }
                if idle { self.idle.poke() }
                if fencePassed { self.fenceReached.poke() }
                if ticket != nil { self.sessionMoved.poke() }
            }
            if let claimKey {
                guard await self.claims.claim(claimKey) else {
                    self.state.withLock { $0.stats.duplicatesSkipped += 1 }
                    return
                }
            }
            let started = MonotonicInstant.now()
            do {
                try await body()
                if let claimKey { self.claims.complete(claimKey) }
                self.state.withLock { state in
                    state.stats.handled += 1
                    state.stats.handlerDuration.record(.now() - started)
                }
            } catch is CancellationError {
                if let claimKey { self.claims.release(claimKey) }
            } catch {
                // The handler ran and failed: the event counts as handled (not retried), and the error is logged.
                if let claimKey { self.claims.complete(claimKey) }
                self.state.withLock { state in
                    state.stats.handlerErrors += 1
                    state.stats.handlerDuration.record(.now() - started)
                }
                self.logger.error("handler failed", metadata: ["event": "\(name)", "error": "\(error)"])
            }
        }
    }

    static func messageID(of event: GatewayEvent) -> String? {
        switch event {
        case .atMessageCreate(let m), .messageCreate(let m), .directMessageCreate(let m): return m.id
        case .groupAtMessageCreate(let m): return m.id
        case .c2cMessageCreate(let m): return m.id
        case .interactionCreate(let i): return i.id
        default: return nil
        }
    }
}
