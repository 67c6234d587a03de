import ArgumentParser
import BenchSupport
import ClusterCore

/// Posts to the emulator's admin API: `botcluster-bench admin --url U --path /emulator/traffic --body '{"rate":1000}'`.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "POST to the emulator's admin API.")
    @Option var url: String
    @Option var path: String
    @Option var body: String

    func run() async throws {
        print(try await postAdmin(url + path, body).serialized())
    }
}
