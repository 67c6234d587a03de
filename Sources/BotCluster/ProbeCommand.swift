import ArgumentParser
import ClusterCore
import QQGateway

/// `botcluster probe URL`: a container health check that needs no curl in the image (GET, exit 0 on a 2xx).
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "GET a URL (the supervisor's /healthz or /readyz) and exit 0 on a 2xx answer, 1 otherwise."
    )

    @Argument(help: "The URL, e.g. http://127.0.0.1:9464/healthz.") var url: String
    @Option(name: .long, help: "How long to wait for the answer (e.g. 5s).") var timeout = "5s"

    func validate() throws {
        guard URLTarget(url)?.scheme == "http" || URLTarget(url)?.scheme == "https" else { throw ValidationError("give an http:// or https:// URL, got \"\(url)\"") }
        guard DurationFormat.parse(timeout) != nil else { throw ValidationError("--timeout: give a duration like 5s, got \"\(timeout)\"") }
    }

    func run() async throws {
        let http = try PlatformHTTP(.init(maxConnectionsPerHost: 1))
        let status: Int
        do {
            status = try await http.get(url, timeout: DurationFormat.parse(timeout) ?? .seconds(5)).status
        } catch {
            await http.shutdown()
            printError("\(url): \(error)")
            throw ExitCode(1)
        }
        await http.shutdown()
        guard (200..<300).contains(status) else {
            printError("\(url): HTTP \(status)")
            throw ExitCode(1)
        }
        printLine("\(url): HTTP \(status)")
    }
}
