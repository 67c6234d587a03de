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

        func run() async throws {
            let config = try options.loadConfig()
            printLine(config.normalized.serialized(pretty: true))
        }
    }
}
