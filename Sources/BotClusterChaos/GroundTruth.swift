import BenchSupport
import ClusterCore
import Foundation
import Synchronization

/// The emulator's counters at the end of a chaos run, and what every run (one host or several) prints and judges
/// alike.
struct GroundTruth {
    let stats: JSONValue

    func n(_ key: String) -> Int { stats[key]?.intValue ?? 0 }

    /// Stops the traffic and lets it drain (every delivered message replied, or 60 s), calling `tick` on the way;
    /// then waits out the emulator's unreplied grace once more and reads the final counters.
    static func drain(_ url: String, tick: () async -> Void = {}) async throws -> GroundTruth {
        _ = try await postAdmin(url + "/emulator/traffic", #"{"rate": 0, "groupRate": 0, "c2cRate": 0}"#)
        let drainUntil = MonotonicInstant.now() + .seconds(60)
        while MonotonicInstant.now() < drainUntil {
            await tick()
            let stats = try await get(url + "/emulator/stats")
            if stats["messagesPending"]?.intValue == 0 && stats["messagesReplied"]?.intValue == stats["messagesDelivered"]?.intValue { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        try await Task.sleep(for: .seconds(3))
        return GroundTruth(stats: try await get(url + "/emulator/stats"))
    }

    /// The emulator's trace of the first `limit` messages nobody answered, and of the first `limit` nobody was
    /// delivered (every session that held them ended), a line each: where each went (session, shard, seq) and what
    /// became of that session, on the emulator's clock like the run's log lines. Empty when there are none.
    static func unrepliedLines(_ url: String, limit: Int = 20) async -> [String] {
        guard let trace = try? await get(url + "/emulator/unreplied?limit=\(limit)") else { return ["the emulator's trace of unreplied messages is unreadable"] }
        return lines(of: trace, "count", "messages", "unreplied") + lines(of: trace, "undeliveredCount", "undelivered", "undelivered")
    }

    /// One list of the trace (`unreplied` or `undelivered`), a line a message.
    static func lines(of trace: JSONValue, _ countKey: String, _ listKey: String, _ what: String) -> [String] {
        guard let count = trace[countKey]?.intValue, count > 0 else { return [] }
        guard case .array(let messages)? = trace[listKey] else { return ["the emulator's trace of \(count) \(what) messages is unreadable"] }
        func seconds(_ ms: Double?) -> String { ms.map { String(format: "%.2f s", $0 / 1000) } ?? "?" }
        let lines = messages.map { message -> String in
            let routes: [String]
            if case .array(let items)? = message["routes"] {
                routes = items.map { route in
                    let sent = [route["lastSeq"]?.intValue.map { "last \($0)" }, route["sentUpTo"]?.intValue.map { "sent to \($0)" }].compactMap { $0 }
                    return "session #\(route["session"]?.intValue ?? -1) \(route["sessionID"]?.stringValue ?? "?") shard \(route["shard"]?.stringValue ?? "?")"
                        + " seq \(route["seq"]?.intValue ?? -1)\(sent.isEmpty ? "" : " (\(sent.joined(separator: ", ")))"): \(route["state"]?.stringValue ?? "?")"
                }
            } else {
                routes = []
            }
            let routedTo = message["routedTo"]?.intValue ?? routes.count
            let delivered = what == "unreplied" ? " delivered at \(seconds(message["deliveredMs"]?.doubleValue))," : ""
            return "\(what) \(message["kind"]?.stringValue ?? "?") \(message["id"]?.stringValue ?? "?"), made at \(seconds(message["generatedMs"]?.doubleValue)),"
                + "\(delivered) routed to \(routedTo)" + (routes.isEmpty ? "" : ": " + routes.joined(separator: "; ")) + (routedTo > routes.count ? " (the last \(routes.count) of \(routedTo))" : "")
        }
        return lines + (count > messages.count ? ["... and \(count - messages.count) more \(what)"] : [])
    }

    /// What became of the messages, and the platform's view of sessions and requests.
    var messageRows: [(String, Int)] {
        [
            ("messages generated", n("messagesGenerated")), ("undelivered (platform ended the session)", n("messagesUndelivered")),
            ("delivered", n("messagesDelivered")), ("replied once", n("messagesReplied") - n("messagesRepliedMoreThanOnce")),
            ("replied more than once", n("messagesRepliedMoreThanOnce")), ("unreplied", n("messagesUnreplied")),
            ("duplicate replies refused by msg_seq", n("repliesRefusedDuplicateSeq")), ("429s", n("rateLimited")),
            ("identify violations", n("identifyViolations")), ("identifies", n("identifies")), ("resumes", n("resumes")),
        ]
    }

    /// The promises every run keeps: nothing unreplied, no more replies given twice than `allowance` (the hard kills:
    /// `killed` says which), no 429, no identify violation.
    func failures(allowance: Int, killed: String) -> [String] {
        var failures: [String] = []
        if n("messagesUnreplied") > 0 { failures.append("\(n("messagesUnreplied")) messages unreplied") }
        if n("messagesRepliedMoreThanOnce") > allowance {
            failures.append("\(n("messagesRepliedMoreThanOnce")) messages replied more than once, more than the \(allowance) \(killed)")
        }
        if n("rateLimited") > 0 { failures.append("\(n("rateLimited")) requests answered 429") }
        if n("identifyViolations") > 0 { failures.append("\(n("identifyViolations")) identify violations") }
        return failures
    }

    /// Prints the run's heading and its rows.
    static func print(_ heading: String, _ rows: [(String, Int)]) {
        say("\n" + heading)
        for (name, value) in rows { say("  \(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(value)") }
    }
}

/// Has the emulator do one of the gateway's faults (`reconnect`, `invalidSession`, `drop`, `stopAcks`, or
/// `close4009`: a close with 4009) to `shard` of a `total`-shard layout; what the run logs of it.
func gatewayFault(_ kind: String, url: String, shard: Int, total: Int) async throws -> String {
    let fault = kind == "close4009" ? #""kind": "close", "code": 4009"# : #""kind": "\#(kind)""#
    _ = try await postAdmin(url + "/emulator/faults", #"{\#(fault), "shard": \#(shard), "total": \#(total)}"#)
    return "\(kind == "close4009" ? "close 4009" : kind) on shard \(shard)/\(total)"
}

/// The emulator's stats clock (seconds since it started), as the run's log lines and the trace of unreplied
/// messages give their times: one clock, to tie a lost message to the fault that lost it.
enum EmulatorClock {
    static let origin = Mutex<(local: MonotonicInstant, emulatorMs: Double)?>(nil)

    /// Reads the emulator's clock once (at its start); log lines are stamped from then on.
    static func sync(_ url: String) async {
        let before = MonotonicInstant.now()
        guard let ms = try? await get(url + "/emulator/stats")["clockMs"]?.doubleValue else { return }
        origin.withLock { $0 = (before, ms) }
    }

    /// `[12.34 s] ` on the emulator's clock, or nothing before `sync`.
    static var stamp: String {
        origin.withLock { origin in
            origin.map { String(format: "[%.2f s] ", ($0.emulatorMs + (MonotonicInstant.now() - $0.local).seconds * 1000) / 1000) } ?? ""
        }
    }
}

/// A line of the run's log, stamped with the emulator's clock.
func chaosLog(_ line: String) {
    say("chaos: \(EmulatorClock.stamp)\(line)")
}
