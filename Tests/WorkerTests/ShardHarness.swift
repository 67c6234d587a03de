import ClusterCore
import Foundation
import GatewayEmulator
import Logging
import NIOCore
import QQGateway
import RateBudget
import Synchronization
import Testing
import Worker

/// An emulator and one shard runtime in this process, over real sockets.
struct ShardHarness: Sendable {
    let emulator: GatewayEmulator
    let base: String
    let config: ClusterConfig

    var endpoints: GatewayEndpoints { .emulator(base: base) }

    func stats() -> EmulatorStats { emulator.stats() }

    /// Waits until the emulator's counters satisfy `condition` (checked as its state changes, no fixed sleep).
    func waitFor(_ what: String, _ condition: (EmulatorStats) -> Bool) async throws {
        let start = MonotonicInstant.now()
        while !condition(stats()) {
            if MonotonicInstant.now() - start > .seconds(30) {
                Issue.record("timed out waiting for \(what): \(stats())")
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

extension ShardHarness {
    /// Waits until the emulator has the session and the runtime has taken READY in: a fault injected earlier would
    /// find a shard still identifying, which rightly identifies again rather than resuming.
    func waitForReady(_ runtime: ShardRuntime) async throws {
        try await waitFor("READY") { $0.activeSessions == 1 && runtime.committed.sessionID != nil }
    }
}

/// Collects what a runtime reports.
final class RecordingObserver: RuntimeObserver {
    let events = Mutex<[String]>([])
    func ready(sessionID: String, resumed: Bool) { events.withLock { $0.append(resumed ? "resumed" : "ready") } }
    func sessionInvalidated() { events.withLock { $0.append("invalidated") } }
    func failed(_ reason: GatewaySessionStateMachine.FatalReason) { events.withLock { $0.append("failed \(reason)") } }
    var all: [String] { events.withLock { $0 } }
}

/// Runs an emulator configured by `emulatorJSON` (and cluster keys in `clusterJSON`), a shard runtime with
/// `handler`, and `body`; stops both at the end and returns the runtime's outcome.
@discardableResult
func withShard(
    emulator emulatorJSON: String = "{}", cluster clusterJSON: String = "",
    handler: any EventHandler = ExampleBot(), observer: RecordingObserver? = nil,
    _ body: @Sendable (ShardHarness, ShardRuntime) async throws -> Void
) async throws -> RuntimeOutcome {
    // Unless a test says otherwise, the REST budget is not what it measures: make it large.
    let extra = ", " + (clusterJSON.isEmpty ? #""rateBudget": {"global": {"rate": 100000, "burst": 1000}}"# : clusterJSON)
    let config = try ClusterConfig.parse(#"{"emulator": \#(emulatorJSON)\#(extra)}"#)
    var logger = Logger(label: "worker-test")
    logger.logLevel = .critical
    let emulator = GatewayEmulator(config: config.emulator, app: config.app, logger: logger)
    return try await withThrowingTaskGroup(of: RuntimeOutcome?.self) { group in
        group.addTask {
            try await emulator.run()
            return nil
        }
        let base = try await emulator.baseURL()
        let harness = ShardHarness(emulator: emulator, base: base, config: config)
        let budget = LocalRateBudget(rate: config.rateBudget.globalRate, burst: config.rateBudget.globalBurst)
        let clients = try PlatformClients(config: config, endpoints: harness.endpoints, budget: budget, logger: logger)
        let info = try await clients.api.gatewayBot()
        let permit = LocalIdentifyPermit(
            configuration: .init(maxConcurrency: info.maxConcurrency, window: config.effectiveIdentifyWindow, margin: config.identify.margin, slotTimeout: config.identify.slotTimeout),
            remaining: info.remaining
        )
        let runtime = ShardRuntime.make(
            config: config, clients: clients, gatewayURL: info.url, shard: ShardID(0, of: 1), handler: handler, resume: nil,
            permit: permit, claims: LocalEventClaims(ttl: .seconds(600)), users: nil, observer: observer, logger: logger
        )
        group.addTask {
            await permit.run()
            return nil
        }
        let runTask = Task { await runtime.run() }
        do {
            try await body(harness, runtime)
        } catch {
            runtime.stop()
            _ = await runTask.value
            await clients.shutdown()
            group.cancelAll()
            throw error
        }
        runtime.stop()
        let outcome = await runTask.value
        // Close the client's pooled connections first: the server waits for open connections when it stops.
        await clients.shutdown()
        group.cancelAll()
        return outcome
    }
}

/// Emulator settings for tests: no background traffic, a short identify window.
let testEmulator = #"{"restRate": 100000, "identifyWindow": "100ms", "unrepliedGrace": "1ms", "traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0, "renameShare": 0}"#

/// A handler that counts what it sees and replies like the example bot.
final class CountingBot: EventHandler {
    let seen = Mutex<[String: Int]>([:])
    let ids = Mutex<Set<String>>([])

    func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        seen.withLock { $0["AT_MESSAGE_CREATE", default: 0] += 1 }
        ids.withLock { _ = $0.insert(message.id) }
        try await ctx.reply(to: message, content: ExampleBot.answer(message.content))
    }

    func unknown(_ ctx: Context, name: String, payload: JSONValue) async throws {
        seen.withLock { $0[name, default: 0] += 1 }
    }

    var atMessages: Int { seen.withLock { $0["AT_MESSAGE_CREATE"] ?? 0 } }
}
