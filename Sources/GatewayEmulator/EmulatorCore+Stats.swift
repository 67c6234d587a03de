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

extension EmulatorCore {
    /// The first `limit` messages delivered and not replied within the grace at `now`, and the first `limit` routed to
    /// sessions that all ended before delivering them, with their routes.
    func unrepliedTrace(now: Int64, limit: Int) -> UnrepliedTrace {
        let grace = config.unrepliedGrace.nanoseconds
        let live = Dictionary(sessions.values.map { ($0.number, $0) }, uniquingKeysWith: { first, _ in first })
        var trace = UnrepliedTrace(count: 0, messages: [])
        for (index, record) in messages.enumerated() {
            let unreplied = record.delivered && record.replies == 0 && now - record.deliveredAt > grace
            let undelivered = !record.delivered && record.holders == 0
            if undelivered && record.routeCount == 0 {
                trace.unroutedCount += 1
                continue
            }
            guard unreplied || undelivered else { continue }
            if unreplied { trace.count += 1 } else { trace.undeliveredCount += 1 }
            guard (unreplied ? trace.messages.count : trace.undelivered.count) < limit else { continue }
            let routes = record.lastRoutes.map { route -> UnrepliedTrace.Route in
                let known = sessionTraces.indices.contains(Int(route.session)) ? sessionTraces[Int(route.session)] : nil
                var out = UnrepliedTrace.Route(
                    session: Int(route.session), sessionID: String(known?.id.prefix(8) ?? "?"), shard: known.map { "\($0.shard.id)/\($0.shard.total)" } ?? "?",
                    seq: Int(route.seq), state: "unknown"
                )
                if let session = live[route.session] {
                    out.lastSeq = session.lastSeq
                    out.sentUpTo = session.sentUpTo
                    out.state = session.connection != nil ? "connected" : "disconnected \(session.disconnectedAt.map { String(Int(clockMs($0))) } ?? "?")ms"
                } else if let known, let ended = known.endedAt {
                    out.state = "ended \(Int(clockMs(ended)))ms: \(known.endReason ?? "?")"
                }
                return out
            }
            let message = UnrepliedTrace.Message(
                id: messageIDs.make(index), kind: "\(record.kind)", generatedMs: clockMs(record.generatedAt),
                deliveredMs: record.delivered ? clockMs(record.deliveredAt) : 0, routes: routes, routedTo: Int(record.routeCount)
            )
            if unreplied { trace.messages.append(message) } else { trace.undelivered.append(message) }
        }
        return trace
    }
}
