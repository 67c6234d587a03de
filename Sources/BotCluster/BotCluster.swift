import Foundation
import ArgumentParser
import ClusterCore
import Logging
import Worker
#if canImport(Glibc)
import Glibc
#endif

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
        // Log lines go through a queue with a thread of its own: a standard error nobody reads does not stop the
        // event loops (see OutputWriter); whatever is queued is written before the process exits.
        LoggingSystem.bootstrap { label in StreamLogHandler(label: label, stream: OutputWriterStream(.standardError)) }
        atexit { OutputWriter.flushAll(within: .seconds(2)) }
        // Files this process creates (databases, the lock, the socket) are its user's alone.
        umask(0o077)
        // A file-size limit (a full quota) makes a write fail, which the databases handle, instead of killing us.
        signal(SIGXFSZ, SIG_IGN)
        // A supervisor holds three descriptors per worker (its IPC socket, its output pipe, its pidfd): the usual soft
        // limit of 1024 would stop a large cluster where the hard limit allows it.
        var files = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
        }
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
            WorkerCommand.self, EmulatorCommand.self, ConfigCommand.self, ProbeCommand.self,
        ]
    )
}

/// Options every command shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "Path of the cluster configuration.")
    var config: String = "cluster.json"

    /// Loads the configuration or prints its problems and exits with status 1. A command that never talks to the
    /// platform passes `.notNeeded`, so an unset secret variable does not stop it; one that can run on defaults
    /// alone (the emulator) passes `optional`, and then a missing default cluster.json means every default.
    func loadConfig(secrets: SecretResolution = .required, optional: Bool = false) throws -> ClusterConfig {
        if optional && config == "cluster.json" && access(config, F_OK) != 0 {
            return ClusterConfig.defaults
        }
        do {
            return try ClusterConfig.load(path: config, environment: ProcessInfo.processInfo.environment, secrets: secrets)
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
