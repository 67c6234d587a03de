import ArgumentParser
import ClusterCore
import Logging
import Worker

/// The `botcluster` command line. A bot's own executable hands its event handler to ``main(handler:)`` and gets
/// every subcommand with it:
///
/// ```swift
/// import BotCluster
/// try await BotCluster.main(handler: MyBot())
/// ```
public enum BotCluster {
    @TaskLocal static var handler: any EventHandler = ExampleBot()

    /// Parses the command line (or `arguments`) and runs the chosen subcommand with `handler` as the bot; exits
    /// with its status.
    public static func main(handler: some EventHandler, arguments: [String]? = nil) async {
        LoggingSystem.bootstrap { label in StreamLogHandler.standardError(label: label) }
        await $handler.withValue(handler) {
            await BotClusterCommand.main(arguments)
        }
    }
}

struct BotClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "botcluster",
        abstract: "Run one QQ bot across many gateway shards as a supervised cluster of worker processes.",
        subcommands: [
            LaunchCommand.self, StatusCommand.self, ScaleCommand.self, RestartCommand.self, StopCommand.self, UserCommand.self, RunCommand.self,
            WorkerCommand.self, EmulatorCommand.self, ConfigCommand.self,
        ]
    )
}

/// Options every command shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "Path of the cluster configuration.")
    var config: String = "cluster.json"

    /// Loads the configuration or prints its problems and exits with status 1.
    func loadConfig() throws -> ClusterConfig {
        do {
            return try ClusterConfig.load(path: config, environment: processEnvironment())
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
    }
}

/// Makes a logger at the configured level; libraries get it passed in.
func makeLogger(_ label: String, config: ClusterConfig) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = Logger.Level(rawValue: config.log.level) ?? .info
    return logger
}
