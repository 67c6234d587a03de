import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import GatewayEmulator
import Logging
import QQGateway
import Synchronization
import ServiceLifecycle
import Testing
import Worker

/// The supervisor's side of the wire, played by the test: it welcomes one worker with `assignment`, grants every
/// identify and budget request, answers claims with `decision`, and records everything else the worker says.
final class StandInSupervisor: IPCServerDelegate {
    let assignment: Assignment
    let decision: ClaimDecision
    let said = Mutex<[IPCMessage]>([])
    /// Poked as each message arrives (what `waitFor` waits on).
    let arrived = Wakeup()
    let worker = Mutex<IPCConnection?>(nil)

    init(assignment: Assignment, decision: ClaimDecision) {
        self.assignment = assignment
        self.decision = decision
    }

    func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
        worker.withLock { $0 = connection }
        connection.send(.welcome(assignment))
        return nil
    }

    func received(_ message: IPCMessage, on connection: IPCConnection) {
        switch message {
        case .identifyRequest(let id, _): connection.send(.identifyGrant(id: id))
        case .budgetRequest(let id, _, let count): connection.send(.budgetGrant(id: id, count: count, ttlMillis: 10_000))
        case .claims(let id, let keys): connection.send(.claimResults(id: id, decisions: keys.map { _ in decision }))
        default: break
        }
        said.withLock { $0.append(message) }
        arrived.poke()
    }

    func closed(_ connection: IPCConnection, reason: String?) {}

    func send(_ message: IPCMessage) { worker.withLock { $0 }?.send(message) }

    /// Waits until the worker has said something `matching` (checked as each message arrives), for 30 s at most.
    func waitFor(_ what: String, _ matching: (IPCMessage) -> Bool) async throws {
        let deadline = MonotonicInstant.now() + .seconds(30)
        while !said.withLock({ $0.contains(where: matching) }) {
            if MonotonicInstant.now() >= deadline {
                Issue.record("timed out waiting for the worker's \(what); it said last: \(said.withLock { $0.suffix(5) })")
                throw CancellationError()
            }
            await arrived.wait(until: deadline)
        }
    }
}

/// Runs an emulator, a stand-in supervisor on a real Unix socket and a `ClusterWorker` for shard 0/1 in this
/// process, in a `ServiceGroup` as the `worker` command runs it; `body` drives them and may stop the worker the way
/// the supervisor does (graceful shutdown, which SIGTERM triggers in the process), else it is stopped after `body`.
/// Returns the worker's exit status.
func withClusterWorker(
    holdDispatch: Bool = false, decision: ClaimDecision = .handle,
    liveness: LivenessTable? = nil,
    _ body: @Sendable (ShardHarness, StandInSupervisor, _ stop: @Sendable () async -> Void) async throws -> Void
) async throws -> Int32 {
    let dir = NSTemporaryDirectory() + "worker-" + UUID().uuidString.prefix(8)
    try RunDirectory.prepare(dir)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try ClusterConfig.parse(#"""
        {"emulator": \#(testEmulator)}, "supervisor": {"runDirectory": "\#(dir)", "heartbeat": {"interval": "50ms"}},
         "rateBudget": {"global": {"rate": 100000, "burst": 1000}}}
        """#)
    var logger = Logger(label: "cluster-worker-test")
    logger.logLevel = .critical
    let emulator = GatewayEmulator(config: config.emulator, app: config.app, logger: logger)
    let emulatorTask = Task { try await emulator.run() }
    defer { emulatorTask.cancel() }
    let base = try await emulator.baseURL()
    let harness = ShardHarness(emulator: emulator, base: base, config: config)
    let assignment = Assignment(
        shard: 0, total: 1, generation: 1, resumeSessionID: nil, resumeSeq: 0, apiBase: base, tokenURL: harness.endpoints.tokenURL,
        gatewayURL: base.replacingOccurrences(of: "http", with: "ws") + "/websocket", holdDispatch: holdDispatch
    )
    let supervisor = StandInSupervisor(assignment: assignment, decision: decision)
    let server = IPCServer(configuration: .init(path: dir + "/s.sock"), delegate: supervisor, logger: logger)
    try await server.start()
    do {
        let (client, welcome) = try await ClusterWorker.join(socket: dir + "/s.sock", ordinal: 0, generation: 1, supervisorPID: getpid())
        #expect(welcome == assignment)
        let worker = ClusterWorker(config: config, client: client, assignment: welcome, handler: ExampleBot(), liveness: liveness.map { ($0, 5) }, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
            logger: logger
        ))
        let run = Task { try await group.run() }
        let stop: @Sendable () async -> Void = { await group.triggerGracefulShutdown() }
        do {
            try await body(harness, supervisor, stop)
        } catch {
            await stop()
            _ = try? await run.value
            throw error
        }
        await stop()
        try await run.value
        await server.close()
        return try #require(worker.exitStatus.current)
    } catch {
        await server.close()
        throw error
    }
}

@Suite("the worker under a supervisor, in process", .timeLimit(.minutes(2)))
struct ClusterWorkerTests {
    @Test func answersWhatTheSupervisorClaimsAndDrainsOnGracefulShutdown() async throws {
        let liveness = try LivenessTable.create()
        let status = try await withClusterWorker(liveness: liveness) { h, supervisor, stop in
            try await supervisor.waitFor("READY") { if case .gatewayState(.ready) = $0 { true } else { false } }
            // It beats in its slot, and nowhere else.
            let beat = try #require(liveness.lastBeat(slot: 5))
            #expect(MonotonicInstant.now() - beat < .seconds(60))
            #expect(liveness.lastBeat(slot: 4) == nil && liveness.lastBeat(slot: 6) == nil)
            h.emulator.burst(count: 20)
            try await h.waitFor("20 replies") { $0.messagesReplied == 20 }
            #expect(h.stats().messagesRepliedMoreThanOnce == 0)
            await stop()
            try await supervisor.waitFor("drained") { if case .drained(let id, let seq) = $0 { id != nil && seq == 21 } else { false } }
        }
        #expect(status == WorkerExitStatus.stopped)
    }

    @Test func whatAnotherWorkerHandledIsSkipped() async throws {
        _ = try await withClusterWorker(decision: .skip) { h, supervisor, _ in
            try await supervisor.waitFor("READY") { if case .gatewayState(.ready) = $0 { true } else { false } }
            h.emulator.burst(count: 10)
            // Skipped, they are done with: the committed seq moves past them (READY is seq 1), and none is answered.
            try await supervisor.waitFor("seq 11 committed") { if case .heartbeat(let progress) = $0 { progress.session?.seq == 11 } else { false } }
            #expect(h.stats().messagesReplied == 0)
        }
    }

    @Test func aHeldWorkerHandlesNothingUntilTheSwitchAndReportsTheRetirement() async throws {
        _ = try await withClusterWorker(holdDispatch: true) { h, supervisor, _ in
            try await supervisor.waitFor("READY") { if case .gatewayState(.ready) = $0 { true } else { false } }
            h.emulator.burst(count: 10)
            try await h.waitFor("10 delivered") { $0.messagesDelivered == 10 }
            #expect(h.stats().messagesReplied == 0)
            supervisor.send(.startDispatch)
            try await h.waitFor("10 replies") { $0.messagesReplied == 10 }
            supervisor.send(.finishDispatch(fence: 3))
            try await supervisor.waitFor("dispatchFinished") { $0 == .dispatchFinished(fence: 3) }
        }
    }
}
