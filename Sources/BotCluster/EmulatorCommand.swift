import ArgumentParser
import ClusterCore
import GatewayEmulator
import Logging
import ServiceLifecycle
import UnixSignals

struct EmulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emulator",
        abstract: "Run the bundled QQ gateway + OpenAPI emulator on its own."
    )

    @OptionGroup var options: CommonOptions

    @Option(name: .long, help: "Port to listen on (0 picks a free one); overrides emulator.port.")
    var port: Int?

    func run() async throws {
        var config = try options.loadConfig(optional: true)
        if let port {
            guard (0...65535).contains(port) else {
                printError("--port: must be 0...65535, got \(port)")
                throw ExitCode(1)
            }
            config.emulator.port = port
        }
        let logger = makeLogger("emulator", config: config)
        let emulator = GatewayEmulator(config: config.emulator, app: config.app, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: emulator)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                let url = try await emulator.baseURL()
                printLine("emulator listening on \(url)")
            }
            try await tasks.waitForAll()
        }
    }
}
