import ArgumentParser
import ClusterCore
import Logging
import ServiceLifecycle
import UnixSignals
import Worker

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run one shard in this process, without a supervisor (the embedded emulator by default)."
    )

    @OptionGroup var options: CommonOptions

    @Option(name: .long, help: "The shard to run, as ID/TOTAL (0/1 for an unsharded bot).")
    var shard: String = "0/1"

    func run() async throws {
        guard let shard = ShardID(parsing: shard) else {
            printError("--shard: must be ID/TOTAL with 0 <= ID < TOTAL, got \"\(self.shard)\"")
            throw ExitCode(1)
        }
        let config = try options.loadConfig()
        guard config.gateway.mode == .websocket else {
            printError("gateway.mode is \"webhook\": events come to the supervisor's ingress, so a shard cannot run alone; use botcluster launch")
            throw ExitCode(1)
        }
        let logger = makeLogger("botcluster.run", config: config)
        let gateway = ResolvedGateway.resolve(config, logger: makeLogger("emulator", config: config))
        let shardService = LoneShard(
            config: config, shard: shard, endpoints: { try await gateway.ready() }, handler: BotCluster.handler, logger: logger,
            say: { printLine($0) }, complain: { printError($0) }
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let emulator = gateway.emulator { services.append(.init(service: emulator)) }
        services.append(.init(service: shardService, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        if let status = shardService.exitStatus.current, status != 0 { throw ExitCode(status) }
    }
}

