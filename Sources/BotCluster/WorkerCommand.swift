import Foundation
import ArgumentParser
import CBotSystem
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Logging
import ServiceLifecycle
import UnixSignals
import Worker
#if canImport(Glibc)
import Glibc
#endif

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run one shard under a supervisor (started by botcluster launch, not by hand).",
        shouldDisplay: false
    )

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let socket = environment[WorkerEnvironment.socket], let ordinal = environment[WorkerEnvironment.ordinal].flatMap(Int32.init),
            let generation = environment[WorkerEnvironment.generation].flatMap(UInt64.init),
            let supervisorPID = environment[WorkerEnvironment.supervisorPID].flatMap(Int32.init)
        else {
            printError("botcluster worker is started by botcluster launch; to run one shard by hand use botcluster run --shard ID/TOTAL")
            throw ExitCode(2)
        }
        // No orphans: die with the supervisor, and make sure it had not died already.
        _ = cbot_set_parent_death_signal(SIGKILL)
        guard getppid() == supervisorPID else {
            printError("the supervisor (pid \(supervisorPID)) is gone; exiting")
            throw ExitCode(WorkerExitStatus.orphaned)
        }
        let config = try options.loadConfig()
        var logger = makeLogger("botcluster.worker", config: config)
        logger[metadataKey: "worker.ordinal"] = "\(ordinal)"

        let worker: ClusterWorker
        do {
            let (client, assignment) = try await ClusterWorker.join(socket: socket, ordinal: ordinal, generation: generation, supervisorPID: supervisorPID)
            let liveness = try Self.liveness(environment)
            worker = ClusterWorker(config: config, client: client, assignment: assignment, handler: BotCluster.handler, liveness: liveness, logger: logger)
        } catch {
            printError("\(error)")
            throw ExitCode(WorkerExitStatus.orphaned)
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
        ))
        try await group.run()
        throw ExitCode(worker.exitStatus.current ?? 0)
    }

    /// The liveness table the supervisor passed (at descriptor 3) and this worker's slot in it.
    static func liveness(_ environment: [String: String]) throws -> (table: LivenessTable, slot: Int) {
        guard let slot = environment[WorkerEnvironment.livenessSlot].flatMap(Int.init), (0..<LivenessTable.slotCount).contains(slot) else {
            throw LivenessError("no valid \(WorkerEnvironment.livenessSlot) in the environment")
        }
        return (try LivenessTable.attach(descriptor: LivenessTable.inheritedDescriptor), slot)
    }
}
