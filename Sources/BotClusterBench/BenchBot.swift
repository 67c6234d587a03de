import ArgumentParser
import BotCluster
import Foundation
import QQGateway
import Synchronization
import Worker

/// A bot executable built on the library: `botcluster-bench bot <botcluster arguments>`. BENCH_HANDLER=count
/// counts events and replies once, to the BENCH_EXPECT-th; otherwise it replies like the example bot.
struct BenchBotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bot", abstract: "Run botcluster with a bench handler.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let expect = environment["BENCH_EXPECT"].flatMap(Int.init) ?? 20_000
        if environment["BENCH_HANDLER"] == "count" {
            await BotCluster.main(handler: CountingBenchBot(expect: expect), arguments: arguments)
        } else {
            await BotCluster.main(handler: ExampleBot(), arguments: arguments)
        }
    }
}

/// Counts AT_MESSAGE_CREATE and answers only the `expect`-th, so the emulator marks when all were handled.
final class CountingBenchBot: EventHandler {
    let expect: Int
    let seen = Atomic<Int>(0)
    init(expect: Int) { self.expect = expect }

    func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        if seen.add(1, ordering: .relaxed).newValue % expect == 0 {
            try await ctx.reply(to: message, content: "counted \(expect)")
        }
    }
}
