import ClusterCore
import GatewayEmulator
import QQGateway
import Synchronization
import Testing
import Worker

@Suite("shard runtime against the emulator", .timeLimit(.minutes(2)))
struct ShardRuntimeTests {
    @Test func everyMessageGetsOneReply() async throws {
        let bot = CountingBot()
        let outcome = try await withShard(emulator: testEmulator + "}", handler: bot) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 200)
            try await h.waitFor("200 replies") { $0.messagesReplied == 200 }
            let s = h.stats()
            #expect(s.messagesRepliedMoreThanOnce == 0)
            #expect(s.messagesUnreplied == 0)
            #expect(s.identifies == 1)
        }
        #expect(bot.atMessages == 200)
        #expect(outcome.stats.handled == 201)  // and READY
        #expect(outcome.committedSeq == 201)
        #expect(outcome.sessionID != nil)
        #expect(outcome.gateway == .stopped(sessionID: outcome.sessionID, seq: 201))
    }

    @Test func reconnectResumesWithNoSeqMissing() async throws {
        let observer = RecordingObserver()
        try await withShard(emulator: testEmulator + "}", observer: observer) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 50)
            try await h.waitFor("50 replies") { $0.messagesReplied == 50 }
            h.emulator.inject(EmulatorFault(kind: .reconnect))
            // Messages generated while the shard reconnects are held by its session and replayed on Resume.
            h.emulator.burst(count: 50)
            try await h.waitFor("resume and 100 replies") { $0.resumes == 1 && $0.messagesReplied == 100 }
            let s = h.stats()
            #expect(s.identifies == 1)
            #expect(s.messagesUndelivered == 0)
            #expect(s.messagesRepliedMoreThanOnce == 0)
        }
        #expect(observer.all == ["ready", "resumed"])
    }

    @Test func invalidSessionIdentifiesAfresh() async throws {
        let observer = RecordingObserver()
        try await withShard(emulator: testEmulator + "}", observer: observer) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.inject(EmulatorFault(kind: .invalidSession))
            try await h.waitFor("a second identify") { $0.identifies == 2 && $0.activeSessions == 1 }
            h.emulator.burst(count: 20)
            try await h.waitFor("20 replies") { $0.messagesReplied == 20 }
            #expect(h.stats().resumes == 0)
        }
        #expect(observer.all == ["ready", "invalidated", "ready"])
    }

    @Test func stoppedAcksAreDetectedAsAZombieAndResumed() async throws {
        // Short heartbeats, but not so short that a starved test machine delays an ACK past the next one.
        let emulator = #"{"restRate": 100000, "heartbeatInterval": "300ms", "heartbeatTimeout": "30s", "identifyWindow": "100ms", "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0, "renameShare": 0}}"#
        try await withShard(emulator: emulator) { h, runtime in
            try await h.waitForReady(runtime)
            let identifies = h.stats().identifies, reconnects = runtime.stats.reconnects
            h.emulator.inject(EmulatorFault(kind: .stopAcks))
            try await h.waitFor("a resume after the zombie") { $0.resumes >= 1 }
            h.emulator.burst(count: 10)
            try await h.waitFor("10 replies") { $0.messagesReplied == 10 }
            // The zombie cost a reconnect and no identify (on a starved machine an ACK of the resumed session can
            // come late too, and cost one more resume: still no identify).
            #expect(h.stats().identifies == identifies)
            #expect(runtime.stats.reconnects > reconnects)
            // A reconnect is counted when the socket closes, its resume when the emulator takes it: wait for both.
            try await h.waitFor("a resume for every reconnect") { $0.resumes == runtime.stats.reconnects - reconnects }
            #expect(h.stats().identifies == identifies)
        }
    }

    @Test(arguments: [UInt16(4009), 4008, 4900])
    func resumeOrIdentifyClassCloseCodesKeepTheShardServing(code: UInt16) async throws {
        try await withShard(emulator: testEmulator + "}") { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.inject(EmulatorFault(kind: .close, code: code))
            let identify = CloseCodePolicy.forCode(code) == .identify
            try await h.waitFor("reconnected") { identify ? $0.identifies == 2 : $0.resumes == 1 }
            h.emulator.burst(count: 10)
            try await h.waitFor("10 replies") { $0.messagesReplied == 10 }
        }
    }

    @Test(arguments: [
        (UInt16(4010), GatewaySessionStateMachine.FatalReason.configuration(code: 4010)),
        (UInt16(4013), .configuration(code: 4013)),
        (UInt16(4011), .reshardRequired),
        (UInt16(4914), .stopped(code: 4914)),
    ])
    func fatalCloseCodesEndTheShardWithTheReason(code: UInt16, reason: GatewaySessionStateMachine.FatalReason) async throws {
        let observer = RecordingObserver()
        let outcome = try await withShard(emulator: testEmulator + "}", observer: observer) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.inject(EmulatorFault(kind: .close, code: code))
            while !observer.all.contains(where: { $0.hasPrefix("failed") }) { try await Task.sleep(for: .milliseconds(5)) }
            #expect(h.stats().identifies == 1)
        }
        #expect(outcome.gateway == .failed(reason))
    }

    @Test func theTokenIsRenewedBeforeItExpires() async throws {
        let emulator = #"{"restRate": 100000, "tokenLifetime": "2s", "identifyWindow": "100ms", "unrepliedGrace": "1ms", "traffic": {"rate": 40, "groupRate": 0, "c2cRate": 0, "renameShare": 0}}"#
        let bot = CountingBot()
        let outcome = try await withShard(emulator: emulator, handler: bot) { h, runtime in
            try await h.waitFor("two renewals") { $0.tokensIssued >= 3 }
            h.emulator.setTraffic(rate: 0)
            // Messages made before the shard was up reached nobody; every delivered one is answered.
            try await h.waitFor("every message replied") { $0.messagesPending == 0 && $0.messagesReplied == $0.messagesDelivered }
            #expect(h.stats().messagesUnreplied == 0)
        }
        #expect(outcome.stats.handlerErrors == 0)
    }

    @Test func rateLimitedRequestsWaitForRetryAfter() async throws {
        // The client's own budget is far above the emulator's limit, so the emulator answers 429.
        let emulator = #"{"restRate": 10, "identifyWindow": "100ms", "unrepliedGrace": "1ms", "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0, "renameShare": 0}}"#
        let outcome = try await withShard(emulator: emulator, cluster: #""rateBudget": {"global": {"rate": 1000, "burst": 100}}"#) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 30)
            try await h.waitFor("30 replies") { $0.messagesReplied == 30 }
            let s = h.stats()
            #expect(s.rateLimited >= 1)
            // Every retry waited for the pause: a tight loop would send hundreds.
            #expect(s.rateLimited < 90)
            #expect(s.messagesRepliedMoreThanOnce == 0)
        }
        #expect(outcome.stats.handlerErrors == 0)
    }

    @Test func badFramesAreSkippedAndTheShardGoesOn() async throws {
        let outcome = try await withShard(emulator: testEmulator + "}") { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.inject(EmulatorFault(kind: .badFrames))
            h.emulator.burst(count: 10)
            try await h.waitFor("10 replies") { $0.messagesReplied == 10 }
            #expect(h.stats().identifies == 1)
        }
        #expect(outcome.stats.undecodable == 1)
        #expect(outcome.stats.handled == 11)
    }

    @Test func duplicatePushesAreHandledOnce() async throws {
        let emulator = #"{"restRate": 100000, "identifyWindow": "100ms", "unrepliedGrace": "1ms", "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0, "renameShare": 0, "duplicateShare": 1}}"#
        let bot = CountingBot()
        let outcome = try await withShard(emulator: emulator, handler: bot) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 40)
            try await h.waitFor("40 replies") { $0.messagesReplied == 40 && $0.dispatched == 80 }
            #expect(h.stats().messagesRepliedMoreThanOnce == 0)
        }
        #expect(bot.atMessages == 40)
        #expect(outcome.stats.duplicatesSkipped == 40)
    }

    @Test func aSlowHandlerHoldsOnlyItsSlotsAndTheReaderWaits() async throws {
        let gate = AsyncSignal<Void>()
        let bot = GatedBot(gate: gate)
        let outcome = try await withShard(emulator: testEmulator + "}", cluster: #""worker": {"maxInFlight": 4}, "rateBudget": {"global": {"rate": 100000, "burst": 1000}}"#, handler: bot) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 50)
            while bot.running.withLock({ $0 }) < 4 { try await Task.sleep(for: .milliseconds(5)) }
            // Four run; the rest wait in the socket, not in memory; the committed seq stays behind them.
            #expect(runtime.stats.received <= 6)
            #expect(runtime.committed.seq < 6)
            gate.set(())
            try await h.waitFor("50 replies") { $0.messagesReplied == 50 }
        }
        #expect(bot.maxRunning.withLock { $0 } == 4)
        #expect(outcome.committedSeq == 51)
    }

    @Test func finishDispatchReturnsOnceEverythingSentBeforeItIsHandled() async throws {
        let gate = AsyncSignal<Void>()
        let bot = GatedBot(gate: gate)
        try await withShard(emulator: testEmulator + "}", cluster: #""worker": {"maxInFlight": 4}, "rateBudget": {"global": {"rate": 100000, "burst": 1000}}"#, handler: bot) { h, runtime in
            try await h.waitForReady(runtime)
            // All 50 are queued on the connection before the fence's heartbeat; most still wait in the socket.
            h.emulator.burst(count: 50)
            let finished = AsyncSignal<Int>()
            let finish = Task {
                await runtime.finishDispatch()
                finished.set(h.stats().messagesReplied)
            }
            while bot.running.withLock({ $0 }) < 4 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(finished.current == nil)
            gate.set(())
            await finish.value
            #expect(finished.current == 50)
        }
    }

    @Test func aThrowingHandlerIsLoggedAndTheShardGoesOn() async throws {
        let outcome = try await withShard(emulator: testEmulator + "}", handler: ThrowingBot()) { h, runtime in
            try await h.waitForReady(runtime)
            h.emulator.burst(count: 10)
            try await h.waitFor("5 replies") { $0.messagesReplied == 5 }
        }
        #expect(outcome.stats.handlerErrors == 5)
    }
}

/// Replies only after the gate opens, counting how many run at once.
final class GatedBot: EventHandler {
    let gate: AsyncSignal<Void>
    let running = Mutex(0)
    let maxRunning = Mutex(0)
    init(gate: AsyncSignal<Void>) { self.gate = gate }

    func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        let now = running.withLock { $0 += 1; return $0 }
        maxRunning.withLock { $0 = max($0, now) }
        defer { running.withLock { $0 -= 1 } }
        try await gate.wait()
        try await ctx.reply(to: message, content: "done")
    }
}

/// Fails every other message.
struct ThrowingBot: EventHandler {
    struct Boom: Error {}
    func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        if ctx.seq % 2 == 0 { throw Boom() }
        try await ctx.reply(to: message, content: "ok")
    }
}

@Suite("example bot")
struct ExampleBotTests {
    @Test func answers() {
        #expect(ExampleBot.answer("<@!1185> ping") == "pong")
        #expect(ExampleBot.answer("ping") == "pong")
        #expect(ExampleBot.answer("  <@!1> <@!2>  hello there ") == "echo: hello there")
        #expect(ExampleBot.answer("<@!1>") == "(empty)")
        #expect(ExampleBot.answer("") == "(empty)")
    }
}
