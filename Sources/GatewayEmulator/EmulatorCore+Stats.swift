import ClusterCore

/// The ground-truth counters, as of a moment.
extension EmulatorCore {
    /// The counters at `now`: messages by what became of them (unreplied only once their grace has passed).
    mutating func snapshot(now: Int64) -> EmulatorStats {
        var s = stats
        s.clockMs = clockMs(now)
        s.activeSessions = sessions.values.filter { $0.connection != nil }.count
        s.resumableSessions = sessions.count
        var undelivered = 0, pending = 0, delivered = 0, replied = 0, more = 0, unreplied = 0
        let grace = config.unrepliedGrace.nanoseconds
        for record in messages {
            if record.delivered {
                delivered += 1
                if record.replies >= 1 { replied += 1 }
                if record.replies >= 2 { more += 1 }
                if record.replies == 0 && now - record.deliveredAt > grace { unreplied += 1 }
            } else if record.holders > 0 {
                pending += 1
            } else {
                undelivered += 1
            }
        }
        s.messagesUndelivered = undelivered
        s.messagesPending = pending
        s.messagesDelivered = delivered
        s.messagesReplied = replied
        s.messagesRepliedMoreThanOnce = more
        s.messagesUnreplied = unreplied
        s.sessionStartRemaining = remaining
        s.webhookWaiting = webhookWaiting
        return s
    }
}
