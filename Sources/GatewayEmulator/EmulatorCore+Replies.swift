import ClusterCore

/// Replies to generated messages: the ground truth of exactly-once, and how long each message waited.
extension EmulatorCore {
    enum ReplyResult {
        case accepted
        case unknownMessage
        case wrongTarget
        case duplicateSeq
        case tooManyReplies
    }

    /// Records a passive reply to message `msgID` sent to `target` of `kind`, received at `now`.
    mutating func recordReply(msgID: String, kind: MessageRecord.Kind, target: Int, msgSeq: Int?, now: Int64) -> ReplyResult {
        guard let index = messageIDs.index(of: msgID), index < messages.count else { return .unknownMessage }
        var record = messages[index]
        guard record.kind == kind, Int(record.target) == target else { return .wrongTarget }
        if kind != .guild {
            let seq = msgSeq ?? 1
            if (1...63).contains(seq) {
                let bit = UInt64(1) << UInt64(seq)
                if record.usedSeqs & bit != 0 {
                    stats.repliesRefusedDuplicateSeq += 1
                    return .duplicateSeq
                }
                record.usedSeqs |= bit
            }
        }
        guard record.replies < 5 else { return .tooManyReplies }
        if record.replies == 0 { record.firstReplyAt = now }
        record.replies += 1
        messages[index] = record
        stats.lastReplyAtMs = clockMs(now)
        return .accepted
    }

    /// Reply latency (generated -> first reply) of the messages generated in [fromMs, untilMs) of the stats clock.
    func replyLatency(fromMs: Double, untilMs: Double) -> ReplyLatency {
        let from = startedAt + Int64(fromMs * 1e6), until = startedAt + Int64(untilMs * 1e6)
        // Records are appended as they are generated: the window is one contiguous run.
        var low = 0, high = messages.count
        while low < high {
            let mid = (low + high) / 2
            if messages[mid].generatedAt < from { low = mid + 1 } else { high = mid }
        }
        var latencies: [Int64] = []
        var unreplied = 0
        var index = low
        while index < messages.count, messages[index].generatedAt < until {
            let record = messages[index]
            if record.replies > 0 { latencies.append(record.firstReplyAt - record.generatedAt) } else { unreplied += 1 }
            index += 1
        }
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return Double(latencies[min(latencies.count - 1, Int((Double(latencies.count) * p).rounded(.up)) - 1)]) / 1e6
        }
        return ReplyLatency(messages: index - low, unreplied: unreplied, p50Ms: percentile(0.5), p99Ms: percentile(0.99), maxMs: percentile(1))
    }
}
