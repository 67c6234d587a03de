import ArgumentParser
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Supervisor

/// Connects to the running supervisor named by cluster.json, or says clearly that none runs there.
func connectToSupervisor(_ options: CommonOptions) async throws -> IPCClient {
    // Only the socket path is needed: the secrets may be unset in this shell.
    let config = try options.loadConfig(secrets: .notNeeded)
    let path = config.supervisor.socket
    guard FileManager.default.fileExists(atPath: path) else {
        printError("no supervisor is running: \(path) does not exist (start one with botcluster launch)")
        throw ExitCode(1)
    }
    let client: IPCClient
    do {
        client = try await IPCClient.connect(path: path, hello: Hello(role: .control, pid: getpid()))
    } catch {
        printError("no supervisor answers on \(path): \(error)")
        throw ExitCode(1)
    }
    var inbound = client.inbound.makeAsyncIterator()
    switch await inbound.next() {
    case .helloAck: return client
    case .refused(let reason):
        printError("the supervisor refused this command: \(reason)")
        throw ExitCode(1)
    default:
        printError("no answer from the supervisor on \(path)")
        throw ExitCode(1)
    }
}

/// Sends one control request and returns the reply body, or exits 1 with the supervisor's reason. Progress
/// lines the supervisor sends meanwhile are printed as they come.
func control(_ options: CommonOptions, _ command: ControlCommand, timeout: Duration = .seconds(10)) async throws -> String {
    let client = try await connectToSupervisor(options)
    defer { client.close() }
    let ok: Bool, body: String
    do {
        (ok, body) = try await client.control(command, timeout: timeout, progress: { printLine($0) })
    } catch {
        printError("\(command.name): \(error)")
        throw ExitCode(1)
    }
    guard ok else {
        printError(body)
        throw ExitCode(1)
    }
    return body
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show every worker of the running cluster.")

    @OptionGroup var options: CommonOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Flag(name: .long, help: "Keep the view on screen, redrawn in place every --interval, until interrupted.") var watch = false
    @Option(name: .long, help: "With --watch: how often to redraw (e.g. 2s, 500ms).") var interval = "2s"

    func validate() throws {
        guard !(json && watch) else { throw ValidationError("--watch redraws the table: leave out --json (or poll status --json yourself)") }
        guard let every = DurationFormat.parse(interval), every >= .milliseconds(100) else {
            throw ValidationError("--interval: give a duration of at least 100ms, like 2s, got \"\(interval)\"")
        }
        _ = every
    }

    func run() async throws {
        guard watch else {
            let body = try await control(options, .status)
            if json { printLine(body) } else { printLine(Self.render(body).joined(separator: "\n")) }
            return
        }
        let every = DurationFormat.parse(interval) ?? .seconds(2)
        let terminal = isatty(STDOUT_FILENO) == 1
        while !Task.isCancelled {
            let lines: [String]
            do {
                lines = Self.render(try await control(options, .status))
            } catch {
                printLine((terminal ? "\u{1B}[H\u{1B}[2J" : "") + "\(error)")
                throw ExitCode(1)
            }
            let footer = "every \(DurationFormat.human(every)) · \(Self.clock()) · ctrl-c to quit"
            // Home, the frame with each line's rest erased, then the rest of the screen erased: no flicker.
            let frame = terminal
                ? "\u{1B}[H" + (lines + ["", footer]).map { $0 + "\u{1B}[K" }.joined(separator: "\n") + "\u{1B}[J"
                : (lines + [footer, ""]).joined(separator: "\n")
            OutputWriter.standardOutput.write(frame + (terminal ? "" : "\n"))
            try await Task.sleep(for: every)
        }
    }

    static func clock() -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm:ss"
        return formatter.string(from: Date())
    }

    /// The table `status` prints for the supervisor's answer (the answer itself when it is not a status).
    static func render(_ body: String) -> [String] {
        guard let status = try? JSONDecoder().decode(ClusterStatus.self, from: Data(body.utf8)) else { return [body] }
        func text(_ value: (any CustomStringConvertible)?) -> String { value.map { "\($0)" } ?? "-" }
        var rows = [["ORD", "SHARD", "PID", "STATE", "UPTIME", "RESTARTS", "LAST EXIT", "GW MS", "EVENTS/S"]]
        for worker in status.workers {
            let uptime = worker.uptimeSeconds.map { DurationFormat.human(.milliseconds(Int64($0 * 1000))) } ?? "-"
            let state = worker.failure.map { "\(worker.state) (\($0))" } ?? worker.state
            rows.append([
                String(worker.ordinal), worker.shard.map(String.init).joined(separator: "/"), text(worker.pid), state, uptime,
                String(worker.restarts), text(worker.lastExit), text(worker.gatewayLatencyMs), text(worker.eventsPerSecond),
            ])
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        var lines = rows.map { row in
            row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        if let startup = status.startup {
            lines.append((status.otherLayouts.isEmpty ? "launch: " : "rescale: ") + startup.line)
        }
        if let webhook = status.webhook {
            lines.append("events by webhook: \(webhook.queued) acknowledged and not yet handled (limit \(webhook.limit))")
        }
        if let cluster = status.cluster { lines += cluster.lines }
        if !status.unresponsive.isEmpty {
            lines.append("not answering IPC: workers \(status.unresponsive.map(String.init).joined(separator: ", "))")
        }
        return lines
    }
}

struct RestartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restart",
        abstract: "Replace a worker's process, or every worker's one at a time (--rolling); each successor resumes its predecessor's session."
    )

    @OptionGroup var options: CommonOptions
    @Argument(help: "The worker's ordinal.") var ordinal: Int?
    @Option(name: .long, help: "The shard instead of the ordinal.") var shard: Int?
    @Flag(name: .long, help: "Replace every worker, a few at a time (after deploying a new binary).") var rolling = false
    @Option(name: .long, help: "With --rolling: how many workers may be down at once.") var maxUnavailable = 1

    func validate() throws {
        if rolling {
            guard ordinal == nil && shard == nil else { throw ValidationError("--rolling replaces every worker: give no ordinal or --shard") }
            guard maxUnavailable >= 1 else { throw ValidationError("--max-unavailable: must be at least 1, got \(maxUnavailable)") }
        } else {
            guard (ordinal == nil) != (shard == nil) else { throw ValidationError("give an ordinal, --shard K, or --rolling") }
        }
    }

    func run() async throws {
        if rolling {
            printLine(try await control(options, .rollingRestart(maxUnavailable: maxUnavailable), timeout: .seconds(3600)))
            return
        }
        // Worker K runs shard K: both name the same process.
        printLine(try await control(options, .restart(ordinal: shard ?? ordinal!)))
    }
}

struct ScaleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "Change the shard count live: a new layout gets ready while the current one serves, then takes over."
    )

    @OptionGroup var options: CommonOptions
    @Option(name: .long, help: "The new shard count, or auto for the platform's recommendation.") var shards: String
    @Flag(name: .long, help: "Only print what would happen.") var plan = false

    func validate() throws {
        guard shards == "auto" || Int(shards).map({ (1...ShardsConfig.maxCount).contains($0) }) == true else {
            throw ValidationError("--shards: must be 1...\(ShardsConfig.maxCount) or auto, got \(shards)")
        }
    }

    func run() async throws {
        let target: ControlCommand.ScaleTarget = shards == "auto" ? .recommended : .count(Int(shards)!)
        printLine(try await control(options, .scale(target, planOnly: plan), timeout: .seconds(3600)))
    }
}

struct StopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Drain every worker and stop the supervisor.")

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let client = try await connectToSupervisor(options)
        let reply = try await client.request(timeout: .seconds(10)) { .controlRequest(id: $0, command: .stop) }
        if case .controlReply(_, _, let body) = reply { printLine(body) }
        // The supervisor closes its socket as it exits.
        let reason = try await client.closed.wait()
        _ = reason
        printLine("stopped")
    }
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Show what each worker's cache serves for a user id.")

    @OptionGroup var options: CommonOptions
    @Argument(help: "The user's id.") var id: String
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() async throws {
        let body = try await control(options, .user(id: id))
        guard !json, let reply = try? JSONValue.parse(body), case .object(let workers) = reply["workers"] ?? .null else {
            printLine(body)
            return
        }
        for (ordinal, name) in workers {
            printLine("worker \(ordinal): \(name.stringValue ?? "(not cached)")")
        }
        if case .array(let missing) = reply["unresponsive"] ?? .null, !missing.isEmpty {
            printLine("not answering: workers \(missing.compactMap { $0.intValue }.map(String.init).joined(separator: ", "))")
        }
    }
}
