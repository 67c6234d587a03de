import ArgumentParser

/// Load generators and measuring clients for scripts/bench.sh. Each subcommand prints `name value unit` lines.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "botcluster-bench",
        abstract: "Measuring clients for scripts/bench.sh.",
        subcommands: [EmulatorDispatch.self, EmulatorReplies.self, EndToEnd.self, BenchBotCommand.self, Admin.self, IPCBench.self, KillResumeBench.self, CacheHammer.self, CacheBench.self, BudgetBench.self, RescaleBench.self, HostsBench.self]
    )
}

struct Target: ParsableArguments {
    @Option(help: "Emulator base URL, http://127.0.0.1:PORT.") var url: String
    @Option(help: "Rounds to run; the median is reported.") var rounds: Int = 3

    var host: String { String(url.split(separator: "/")[1].split(separator: ":")[0]) }
    var port: Int { Int(url.split(separator: ":").last!)! }
}
