import ArgumentParser
import ClusterCore

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with cluster.json.",
        subcommands: [Check.self]
    )

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate cluster.json and print it normalized (defaults filled in, secrets redacted)."
        )

        @OptionGroup var options: CommonOptions
        @Flag(name: .long, help: "Print every key with its default instead (no file is read).") var printDefaults = false

        func run() async throws {
            let config = printDefaults ? ClusterConfig.defaults : try options.loadConfig()
            printLine(config.normalized.serialized(pretty: true))
        }
    }
}
