import ClusterCore
import Foundation
import NIOCore

/// Gateway sessions: Identify against the emulated limits, Resume from the ring, invalidation.
extension EmulatorCore {
    enum IdentifyResult {
        case ready(sessionID: String, seq: Int)
        case close(UInt16, String)
    }

    mutating func identify(connectionID: Int, token: String?, shard: ShardID, intents: Int, now: Int64) -> IdentifyResult {
        guard let token, tokenValid(token, now: now) else {
            return .close(4004, "authentication failed")
        }
        guard shard.total >= 1, shard.total <= 4096, shard.id >= 0, shard.id < shard.total else {
            return .close(4010, "invalid shard \(shard)")
        }
        let known = GatewayIntents.names.reduce(0) { $0 | $1.intent.rawValue }
        guard intents & ~known == 0 else { return .close(4013, "invalid intent") }
        guard intents & ~config.grantedIntents.rawValue == 0 else {
            let missing = GatewayIntents(rawValue: intents & ~config.grantedIntents.rawValue)
            return .close(4014, "intent not permitted: \(missing)")
        }
        if let refusal = refusals.last(where: { ($0.shard == nil || $0.shard == shard.id) && ($0.total == nil || $0.total == shard.total) }) {
            return .close(refusal.code ?? 4010, "identify refused by a fault")
        }
        if now >= resetAt {
            remaining = config.sessionStartTotal
            resetAt = now + config.sessionStartResetAfter.nanoseconds
        }
        let bucket = ShardMath.bucket(ofShard: shard.id, maxConcurrency: config.maxConcurrency)
        if let last = lastIdentifyAt[bucket], now - last < config.identifyWindow.nanoseconds {
            stats.identifyViolations += 1
            return .close(4008, "identify too fast for bucket \(bucket): \((now - last) / 1_000_000) ms after the previous one, window \(config.identifyWindow)")
        }
        guard remaining > 0 else {
            stats.identifyViolations += 1
            return .close(4008, "daily session start limit reached")
        }
        countOverlap(shard: shard, connectionID: connectionID, except: nil)
        lastIdentifyAt[bucket] = now
        remaining -= 1
        stats.sessionStartRemaining = remaining
        stats.identifies += 1
        let sessionID = UUID().uuidString.lowercased()
        let number = Int32(truncatingIfNeeded: sessionsIdentified)
        sessionsIdentified += 1
        if sessionTraces.count < Self.maxSessionTraces {
            sessionTraces.append(SessionTrace(id: sessionID, shard: shard, identifiedAt: now))
        }
        sessions[sessionID] = EmulatorSession(
            id: sessionID, number: number, shard: shard, intents: intents, seq: 1, ringCapacity: config.resumeBuffer, connection: connectionID
        )
        sessionOrder.append(sessionID)
        connections[connectionID]?.session = sessionID
        return .ready(sessionID: sessionID, seq: 1)
    }

    enum ResumeResult {
        case resumed(replay: [ByteBuffer], resumedSeq: Int, displaced: Int?)
        case invalid(String)
    }

    mutating func resume(connectionID: Int, token: String?, sessionID: String?, seq: Int?, now: Int64) -> ResumeResult? {
        guard let token, tokenValid(token, now: now) else { return nil }
        guard let sessionID, let session = sessions[sessionID] else {
            stats.resumesRefused += 1
            return .invalid("unknown session")
        }
        let clientSeq = seq ?? 0
        // Every frame after `seq` must still be held: the ring may have evicted some when it filled up.
        guard clientSeq <= session.lastSeq, clientSeq >= session.evictedUpTo else {
            stats.resumesRefused += 1
            invalidate(sessionID, reason: "a resume from seq \(clientSeq), not held", now: now)
            return .invalid(clientSeq > session.lastSeq ? "seq \(clientSeq) is ahead of the session" : "seq \(clientSeq) is no longer held")
        }
        countOverlap(shard: session.shard, connectionID: connectionID, except: sessionID)
        var displaced: Int?
        if let old = session.connection, old != connectionID {
            // The session is still attached to another live connection: two live sessions of one shard.
            stats.sessionOverlaps += 1
            displaced = old
            connections[old]?.session = nil
        }
        var replay: [ByteBuffer] = []
        for frame in session.ring.frames(after: clientSeq) {
            replay.append(frame.bytes)
            if frame.seq > session.sentUpTo, frame.message >= 0 {
                markDelivered(Int(frame.message), now: now, releasingHolder: true)
            }
        }
        session.lastSeq += 1
        session.sentUpTo = session.lastSeq
        session.connection = connectionID
        session.disconnectedAt = nil
        connections[connectionID]?.session = sessionID
        stats.resumes += 1
        stats.lastResumeAtMs = clockMs(now)
        stats.dispatched += replay.count
        return .resumed(replay: replay, resumedSeq: session.lastSeq, displaced: displaced)
    }

    /// Counts a session starting on `connectionID` for `shard` while another session of the shard (not `except`)
    /// is attached to another live connection.
    mutating func countOverlap(shard: ShardID, connectionID: Int, except: String?) {
        if sessions.values.contains(where: { $0.id != except && $0.shard == shard && $0.connection != nil && $0.connection != connectionID }) {
            stats.sessionOverlaps += 1
        }
    }

    /// Ends a session for good (`reason` is kept for `/emulator/unreplied`): its unsent messages become undelivered.
    mutating func invalidate(_ sessionID: String, reason: String, now: Int64) {
        guard let session = sessions.removeValue(forKey: sessionID) else { return }
        if sessionTraces.indices.contains(Int(session.number)) {
            sessionTraces[Int(session.number)].endedAt = now
            sessionTraces[Int(session.number)].endReason = reason
        }
        sessionOrder.removeAll { $0 == sessionID }
        session.ring.forEach { frame in
            if frame.seq > session.sentUpTo, frame.message >= 0 { messages[Int(frame.message)].holders -= 1 }
        }
        if let connection = session.connection { connections[connection]?.session = nil }
    }

    mutating func markDelivered(_ index: Int, now: Int64, releasingHolder: Bool) {
        if releasingHolder { messages[index].holders -= 1 }
        if !messages[index].delivered {
            messages[index].delivered = true
            messages[index].deliveredAt = now
        }
    }
}
