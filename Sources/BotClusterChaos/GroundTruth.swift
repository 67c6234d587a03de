import BenchSupport
import ClusterCore
import Foundation

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
