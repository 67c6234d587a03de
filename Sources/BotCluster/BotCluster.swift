import ArgumentParser
import ClusterCore
import Logging

/// The `botcluster` command line: a bot's executable hands its event handler to ``main()`` and gets every
/// subcommand (launch, run, worker, emulator, config, status, restart, stop, scale).
public enum BotCluster {
    /// Parses the command line and runs the chosen subcommand; exits the process with its status.
    public static func main() async {
        await BotClusterCommand.main()
    }
}

struct BotClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "botcluster",
        abstract: "Run one QQ bot across many gateway shards as a supervised cluster of worker processes.",
        subcommands: [EmulatorCommand.self, ConfigCommand.self]
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
