import ClusterCore
import Foundation
import QQGateway
import Testing

/// Drives the session state machine by hand: no sockets, no sleeping.
struct Harness {
    var machine: GatewaySessionStateMachine
    var now = MonotonicInstant(nanoseconds: 1_000_000_000)

    init(resuming: (id: String, seq: Int)? = nil) {
        var configuration = GatewaySessionStateMachine.Configuration()
        configuration.seed = 42
        machine = GatewaySessionStateMachine(configuration: configuration, resuming: resuming)
    }

    mutating func feed(_ input: GatewaySessionStateMachine.Input) -> [GatewaySessionStateMachine.Action] {
        machine.handle(input, now: now)
    }

    mutating func advance(_ duration: Duration) { now = now + duration }

    /// Advances to the machine's next deadline and ticks.
    mutating func tickAtDeadline() -> [GatewaySessionStateMachine.Action] {
        if let deadline = machine.nextDeadline, deadline > now { now = deadline }
        return feed(.tick)
    }

    static func hello(_ ms: Int = 1000) -> GatewaySessionStateMachine.Input {
        .frame(GatewayFrame(op: 10, d: .object([("heartbeat_interval", .number(Double(ms)))])))
    }

    static func dispatch(_ name: String, s: Int, d: JSONValue = .object([])) -> GatewaySessionStateMachine.Input {
        .frame(GatewayFrame(op: 0, d: d, s: s, t: name, id: "\(name):\(s)"))
    }

    static let ready = dispatch("READY", s: 1, d: .object([("session_id", .string("sess-1")), ("shard", .array([.number(0), .number(2)]))]))

    /// start -> connected -> hello -> permit -> READY.
    mutating func bringUp() {
        #expect(feed(.start) == [.connect])
        #expect(feed(.connected) == [])
        #expect(feed(Harness.hello()) == [.requestIdentifyPermit])
        #expect(feed(.permitGranted) == [.sendIdentify])
        #expect(feed(Harness.ready) == [.ready(sessionID: "sess-1", shard: ShardID(0, of: 2))])
    }
}

@Suite("gateway session state machine")
struct SessionStateMachineTests {
    @Test func identifyThenReadyThenDispatches() {
        var h = Harness()
        h.bringUp()
        #expect(h.machine.isReady)
        let frame = GatewayFrame(op: 0, d: .object([]), s: 2, t: "AT_MESSAGE_CREATE", id: "x")
        #expect(h.feed(.frame(frame)) == [.dispatch(frame)])
        #expect(h.machine.lastSeq == 2)
        #expect(h.machine.sessionID == "sess-1")
    }

    @Test func identifyWaitsForThePermit() {
        var h = Harness()
        _ = h.feed(.start)
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.requestIdentifyPermit])
        // Heartbeats go on while the permit is pending.
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: nil)])
        guard case .waitingForPermit = h.machine.state else { Issue.record("\(h.machine.state)"); return }
        #expect(h.feed(.permitGranted) == [.sendIdentify])
    }

    @Test func eachStateCarriesItsOwnDeadlinesAndHeartbeat() {
        var h = Harness()
        _ = h.feed(.start)
        #expect(h.machine.state == .connecting(helloBy: h.now + .seconds(10)))
        h.advance(.milliseconds(3))
        _ = h.feed(.connected)
        #expect(h.machine.state == .awaitingHello(by: h.now + .seconds(10)))
        #expect(h.machine.state.heartbeat == nil)
        _ = h.feed(Harness.hello(500))
        guard case .waitingForPermit(let heartbeat) = h.machine.state else { Issue.record("\(h.machine.state)"); return }
        #expect(heartbeat.interval == .milliseconds(500))
        #expect(heartbeat.unacknowledgedSince == nil)
        _ = h.feed(.permitGranted)
        #expect(h.machine.state == .identifying(heartbeat, readyBy: h.now + .seconds(30)))
        #expect(h.machine.nextDeadline == heartbeat.nextAt)
        let sentAt = heartbeat.nextAt
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: nil)])
        #expect(h.machine.state.heartbeat?.unacknowledgedSince == sentAt)
        #expect(h.machine.state.heartbeat?.nextAt == sentAt + .milliseconds(500))
        _ = h.feed(Harness.ready)
        guard case .ready = h.machine.state else { Issue.record("\(h.machine.state)"); return }
        #expect(h.machine.state.heartbeat?.unacknowledgedSince == sentAt, "the heartbeat outlives the handshake")
        _ = h.feed(.frame(GatewayFrame(op: 7)))
        #expect(h.machine.state == .closing(then: .resume))
        #expect(h.machine.nextDeadline == nil)
        #expect(h.machine.state.heartbeat == nil)
    }

    @Test func firstHeartbeatIsJitteredThenRegular() {
        var h = Harness()
        h.bringUp()
        let start = h.now
        let first = try! #require(h.machine.nextDeadline)
        #expect(first >= start && first <= start + .seconds(1))
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
        h.advance(.milliseconds(20))
        #expect(h.feed(.frame(GatewayFrame(op: 11))) == [.heartbeatAcknowledged(latency: .milliseconds(20))])
        let second = try! #require(h.machine.nextDeadline)
        #expect(second - first == .seconds(1))
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
    }

    @Test func missingAckIsAZombieDetectedWithinTwoIntervalsThenResumed() {
        var h = Harness()
        h.bringUp()
        let lastGood = h.now
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
        // No ACK comes back; at the next beat the connection is declared dead.
        let actions = h.tickAtDeadline()
        #expect(actions.contains(.closeSocket(code: GatewaySessionStateMachine.resumableCloseCode)))
        #expect(h.now - lastGood <= .seconds(2))
        let closed = h.feed(.closed(code: 4000))
        #expect(closed.contains(.connect))
        #expect(!closed.contains(.sessionInvalidated))
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.sendResume(sessionID: "sess-1", seq: 1)])
        #expect(h.feed(Harness.dispatch("RESUMED", s: 5)) == [.resumed])
        #expect(h.machine.reconnects == 1)
    }

    @Test func aBlockedReaderIsNotTakenForAZombie() {
        var h = Harness()
        h.bringUp()
        _ = h.tickAtDeadline()
        _ = h.feed(.readerBlocked(true))
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
    }

    @Test func reconnectOpcodeResumesAtOnce() {
        var h = Harness()
        h.bringUp()
        #expect(h.feed(.frame(GatewayFrame(op: 7))) == [.closeSocket(code: 4000)])
        let actions = h.feed(.closed(code: 4000))
        #expect(actions == [.disconnected(code: 4000, reconnectIn: .zero), .connect])
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.sendResume(sessionID: "sess-1", seq: 1)])
    }

    @Test func invalidSessionIdentifiesAfresh() {
        var h = Harness()
        h.bringUp()
        let actions = h.feed(.frame(GatewayFrame(op: 9, d: .bool(false))))
        #expect(actions.contains(.sessionInvalidated))
        #expect(actions.contains(.closeSocket(code: 4000)))
        #expect(h.machine.sessionID == nil)
        #expect(h.feed(.closed(code: 4009)).contains(.connect))
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.requestIdentifyPermit])
    }

    @Test(arguments: [
        (UInt16?.none, CloseCodePolicy.resume),
        (UInt16(4009), .resume),
        (UInt16(1000), .resume),
        (UInt16(4008), .resumeAfterBackoff),
        (UInt16(4006), .identify),
        (UInt16(4007), .identify),
        (UInt16(4001), .identify),
        (UInt16(4905), .identify),
        (UInt16(4004), .refreshTokenAndIdentify),
        (UInt16(4010), .fatalConfiguration),
        (UInt16(4013), .fatalConfiguration),
        (UInt16(4014), .fatalConfiguration),
        (UInt16(4011), .reshardRequired),
        (UInt16(4914), .stop),
        (UInt16(4915), .stop),
    ])
    func closeCodesFollowTheTable(code: UInt16?, policy: CloseCodePolicy) {
        #expect(CloseCodePolicy.forCode(code) == policy)
        var h = Harness()
        h.bringUp()
        let actions = h.feed(.closed(code: code))
        switch policy {
        case .resume:
            #expect(actions.contains(.connect))
            #expect(!actions.contains(.sessionInvalidated))
        case .resumeAfterBackoff:
            #expect(!actions.contains(.connect))
            guard case .backoff(let until) = h.machine.state else { Issue.record("no backoff: \(h.machine.state)"); return }
            #expect(until - h.now >= .milliseconds(200))
            #expect(h.tickAtDeadline() == [.connect])
            _ = h.feed(.connected)
            #expect(h.feed(Harness.hello()) == [.sendResume(sessionID: "sess-1", seq: 1)])
        case .identify, .refreshTokenAndIdentify:
            #expect(actions.contains(.sessionInvalidated))
            #expect(actions.contains(.connect))
            #expect(actions.contains(.invalidateToken) == (policy == .refreshTokenAndIdentify))
            _ = h.feed(.connected)
            #expect(h.feed(Harness.hello()) == [.requestIdentifyPermit])
        case .fatalConfiguration:
            #expect(actions.last == .failed(.configuration(code: code!)))
            #expect(h.feed(.tick) == [])
        case .reshardRequired:
            #expect(actions.last == .failed(.reshardRequired))
        case .stop:
            #expect(actions.last == .failed(.stopped(code: code!)))
        }
    }

    @Test func backoffGrowsExponentiallyWithJitterAndResetsWhenReady() {
        var h = Harness()
        _ = h.feed(.start)
        var delays: [Duration] = []
        for _ in 0..<8 {
            // The connection fails before Hello each time.
            let actions = h.feed(.closed(code: nil))
            if case .disconnected(_, let delay?) = actions.first { delays.append(delay) }
            if case .backoff = h.machine.state { #expect(h.tickAtDeadline() == [.connect]) }
        }
        #expect(delays[0] == .zero)
        for (i, delay) in delays.enumerated().dropFirst() {
            let nominal = min(250.0 * pow(2, Double(i - 1)), 30_000)
            #expect(delay.milliseconds >= nominal * 0.8 - 1 && delay.milliseconds <= nominal * 1.2 + 1, "attempt \(i): \(delay)")
        }
        _ = h.feed(.connected)
        _ = h.feed(Harness.hello())
        _ = h.feed(.permitGranted)
        _ = h.feed(Harness.ready)
        #expect(h.feed(.closed(code: nil)).contains(.connect), "a ready session reconnects at once again")
    }

    @Test func stopClosesResumablyAndEnds() {
        var h = Harness()
        h.bringUp()
        #expect(h.feed(.stop) == [.closeSocket(code: 4000)])
        #expect(h.feed(.closed(code: 4000)) == [.disconnected(code: 4000, reconnectIn: nil), .stopped])
        #expect(h.machine.state == .stopped)
        #expect(h.machine.sessionID == "sess-1")
    }

    @Test func stopDuringBackoffEndsAtOnce() {
        var h = Harness()
        _ = h.feed(.start)
        _ = h.feed(.closed(code: nil))
        _ = h.feed(.closed(code: nil))
        #expect(h.feed(.stop) == [.stopped])
    }

    @Test func aStoredSessionResumesOnFirstConnect() {
        var h = Harness(resuming: (id: "old", seq: 77))
        _ = h.feed(.start)
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.sendResume(sessionID: "old", seq: 77)])
        #expect(h.feed(Harness.dispatch("AT_MESSAGE_CREATE", s: 78)).count == 1)
        #expect(h.feed(Harness.dispatch("RESUMED", s: 79)) == [.resumed])
        #expect(h.machine.lastSeq == 79)
    }

    @Test func aFenceIsAHeartbeatWhoseAckFollowsEverythingQueuedBeforeIt() {
        var h = Harness()
        h.bringUp()
        #expect(h.feed(.fence) == [.sendHeartbeat(seq: 1)])
        #expect(h.feed(Harness.dispatch("AT_MESSAGE_CREATE", s: 2)).count == 1)
        h.advance(.milliseconds(5))
        #expect(h.feed(.frame(GatewayFrame(op: 11))) == [.heartbeatAcknowledged(latency: .milliseconds(5)), .fenceReached(seq: 2)])
        // Reached once: the next ACK is an ordinary one.
        _ = h.tickAtDeadline()
        #expect(h.feed(.frame(GatewayFrame(op: 11))).allSatisfy { if case .fenceReached = $0 { false } else { true } })
    }

    @Test func aFenceBehindAnUnansweredHeartbeatWaitsForTheSecondAck() {
        var h = Harness()
        h.bringUp()
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
        #expect(h.feed(.fence) == [.sendHeartbeat(seq: 1)])
        let first = h.feed(.frame(GatewayFrame(op: 11)))
        #expect(!first.contains(.fenceReached(seq: 1)))
        #expect(h.feed(.frame(GatewayFrame(op: 11))) == [.fenceReached(seq: 1)])
    }

    @Test func aFenceWaitsForTheSessionAndGoesOutAgainAfterAReconnect() {
        var h = Harness()
        _ = h.feed(.start)
        _ = h.feed(.connected)
        // Not ready yet: pending until READY.
        #expect(h.feed(.fence) == [])
        _ = h.feed(Harness.hello())
        _ = h.feed(.permitGranted)
        #expect(h.feed(Harness.ready) == [.ready(sessionID: "sess-1", shard: ShardID(0, of: 2)), .sendHeartbeat(seq: 1)])
        // The socket drops before the ACK: the fence goes out again once RESUMED (after the replay).
        #expect(h.feed(.closed(code: nil)).contains(.connect))
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.sendResume(sessionID: "sess-1", seq: 1)])
        #expect(h.feed(Harness.dispatch("AT_MESSAGE_CREATE", s: 2)).count == 1)
        #expect(h.feed(Harness.dispatch("RESUMED", s: 3)) == [.resumed, .sendHeartbeat(seq: 3)])
        #expect(h.feed(.frame(GatewayFrame(op: 11))).last == .fenceReached(seq: 3))
    }

    @Test func aFenceIsReachedWhenTheClientStopsOrHasStopped() {
        var h = Harness()
        h.bringUp()
        #expect(h.tickAtDeadline() == [.sendHeartbeat(seq: 1)])
        _ = h.feed(.fence)
        _ = h.feed(.stop)
        #expect(h.feed(.closed(code: 4000)) == [.disconnected(code: 4000, reconnectIn: nil), .stopped, .fenceReached(seq: 1)])
        #expect(h.feed(.fence) == [.fenceReached(seq: 1)])
    }

    @Test func aPermitGrantedWhileDisconnectedIsKept() {
        var h = Harness()
        _ = h.feed(.start)
        _ = h.feed(.connected)
        _ = h.feed(Harness.hello())
        _ = h.feed(.closed(code: nil))
        #expect(h.feed(.permitGranted) == [])
        _ = h.feed(.connected)
        #expect(h.feed(Harness.hello()) == [.sendIdentify])
    }

    @Test func protocolSurprisesAreReportedNotFatal() {
        var h = Harness()
        h.bringUp()
        #expect(h.feed(Harness.ready) == [.protocolViolation("READY while ready")])
        #expect(h.feed(.frame(GatewayFrame(op: 2))) == [.protocolViolation("unexpected op 2 from the server")])
        #expect(h.feed(.frame(GatewayFrame(op: 42))) == [.protocolViolation("unexpected op 42 from the server")])
        #expect(h.machine.isReady)
    }

    @Test func noHelloInTimeClosesAndRetries() {
        var h = Harness()
        _ = h.feed(.start)
        _ = h.feed(.connected)
        let actions = h.tickAtDeadline()
        #expect(actions.contains(.closeSocket(code: 4000)))
        #expect(h.feed(.closed(code: nil)).contains(.connect))
    }
}

@Suite("gateway frames and events")
struct GatewayFrameTests {
    @Test func decodesDispatchAndRequiresSeq() throws {
        let frame = try GatewayFrame.decode(#"{"op":0,"s":3,"t":"AT_MESSAGE_CREATE","id":"AT:1","d":{"id":"m1","channel_id":"10","guild_id":"20","content":"hi","author":{"id":"5","username":"a","bot":false}}}"#)
        #expect(frame.s == 3)
        let event = try GatewayEvent.decode(name: frame.t!, payload: frame.d)
        guard case .atMessageCreate(let message) = event else { Issue.record("\(event)"); return }
        #expect(message.author.username == "a")
        #expect(message.channelID == "10")
        #expect(throws: GatewayFrameError.self) { try GatewayFrame.decode(#"{"op":0,"t":"X","d":{}}"#) }
        #expect(throws: GatewayFrameError.self) { try GatewayFrame.decode(#"{"op":"zero"}"#) }
        #expect(throws: GatewayFrameError.self) { try GatewayFrame.decode("not json") }
    }

    @Test func unknownEventsKeepTheirPayload() throws {
        let event = try GatewayEvent.decode(name: "FORUM_THREAD_CREATE", payload: .object([("x", .number(1))]))
        #expect(event == .unknown(name: "FORUM_THREAD_CREATE", payload: .object([("x", .number(1))])))
    }

    @Test func wrongTypedFieldsNameTheField() {
        do {
            _ = try GatewayEvent.decode(name: "AT_MESSAGE_CREATE", payload: .object([("id", .bool(true))]))
            Issue.record("decoded")
        } catch {
            #expect(error.description == "AT_MESSAGE_CREATE: d.id must be a string, got a boolean")
        }
    }

    @Test func identifyAndResumeFrames() throws {
        let identify = GatewayFrame.identify(token: "t", intents: [.publicGuildMessages], shard: ShardID(1, of: 4))
        let text = identify.encoded()
        let back = try JSONValue.parse(text)
        #expect(back["op"]?.intValue == 2)
        #expect(back["d"]?["token"]?.stringValue == "QQBot t")
        #expect(back["d"]?["shard"] == .array([.number(1), .number(4)]))
        #expect(back["d"]?["intents"]?.intValue == 1 << 30)
        let resume = try JSONValue.parse(GatewayFrame.resume(token: "t", sessionID: "s", seq: 9).encoded())
        #expect(resume["d"]?["seq"]?.intValue == 9)
    }
}
