import ClusterCore
import Foundation

/// The traffic generator: messages made from the seeded world, routed to the sessions whose shard covers them.
extension EmulatorCore {
    /// Appends a dispatch to every session that should get it. Returns whether anyone got it.
    mutating func route(message index: Int, event: String, eventID: String, payload: String, guild: UInt64?, now: Int64, wake: inout [Int]) {
        if config.delivery == .webhook {
            queueWebhook(message: index, event: event, eventID: eventID, payload: payload, now: now)
            return
        }
        let needed: GatewayIntents = event == "AT_MESSAGE_CREATE" ? .publicGuildMessages : .groupAndC2CEvent
        for sessionID in sessionOrder {
            guard let session = sessions[sessionID] else { continue }
            guard session.intents & needed.rawValue != 0 else { continue }
            if let guild {
                guard session.shard.covers(guildID: guild) else { continue }
            } else {
                guard session.shard.id == 0 else { continue }
            }
            session.lastSeq += 1
            messages[index].routed(session: session.number, seq: session.lastSeq)
            let frame = DispatchFrame.encode(seq: session.lastSeq, event: event, eventID: eventID, payload: payload)
            if let evicted = session.ring.append(BufferedFrame(seq: session.lastSeq, bytes: frame, message: Int32(index))) {
                session.evictedUpTo = evicted.seq
                if evicted.seq > session.sentUpTo, evicted.message >= 0 { messages[Int(evicted.message)].holders -= 1 }
            }
            if let connection = session.connection, connections[connection]?.close == nil {
                session.sentUpTo = session.lastSeq
                if let w = enqueue(frame, on: connection, now: now) { wake.append(w) }
                stats.dispatched += 1
                markDelivered(index, now: now, releasingHolder: false)
            } else {
                messages[index].holders += 1
            }
        }
    }

    /// Makes one AT_MESSAGE_CREATE from a random user in a random channel (or the given user and guild).
    mutating func generateGuildMessage(now: Int64, wake: inout [Int], user chosenUser: Int? = nil, guild chosenGuild: Int? = nil) {
        let index = messages.count
        let guild = chosenGuild ?? Int(rng.next() % UInt64(world.guilds))
        let channel = Int(rng.next() % UInt64(world.channelsPerGuild))
        let user = chosenUser ?? Int(rng.next() % UInt64(world.users))
        let channelID = world.channelID(guild: guild, channel: channel)
        messages.append(MessageRecord(kind: .guild, target: Int32(channelID - EmulatorWorld.channelBase), generatedAt: now))
        stats.messagesGenerated += 1
        let id = messageIDs.make(index)
        let content = (index % 4 == 0) ? "ping" : "hello \(index)"
        var d = "{\"id\":\"\(id)\",\"channel_id\":\"\(channelID)\",\"guild_id\":\"\(world.guildID(guild))\",\"content\":\"<@!\(EmulatorCore.botUserID)> \(content)\",\"timestamp\":\"\(timestamp(now: now))\",\"author\":{\"id\":\"\(world.userID(user))\",\"username\":"
        JSONValue.writeQuoted(world.username(user), into: &d)
        d += ",\"avatar\":\"\(world.avatar(user))\",\"bot\":false},\"member\":{\"joined_at\":\"2024-01-01T00:00:00+08:00\",\"roles\":[\"1\"]},\"seq\":\(index + 1),\"seq_in_channel\":\"\(index + 1)\"}"
        let eventID = "AT_MESSAGE_CREATE:" + id
        route(message: index, event: "AT_MESSAGE_CREATE", eventID: eventID, payload: d, guild: world.guildID(guild), now: now, wake: &wake)
        if config.traffic.duplicateShare > 0, Double(rng.next() % 1_000_000) / 1_000_000 < config.traffic.duplicateShare {
            stats.duplicatePushes += 1
            route(message: index, event: "AT_MESSAGE_CREATE", eventID: eventID, payload: d, guild: world.guildID(guild), now: now, wake: &wake)
        }
    }

    /// Makes one GROUP_AT_MESSAGE_CREATE or C2C_MESSAGE_CREATE; they go to shard 0 of each layout.
    mutating func generateDirectMessage(group: Bool, now: Int64, wake: inout [Int]) {
        let index = messages.count
        let user = Int(rng.next() % UInt64(world.users))
        let groupIndex = Int(rng.next() % UInt64(max(1, world.guilds)))
        messages.append(MessageRecord(kind: group ? .group : .c2c, target: Int32(group ? groupIndex : user), generatedAt: now))
        stats.messagesGenerated += 1
        let id = messageIDs.make(index)
        let event = group ? "GROUP_AT_MESSAGE_CREATE" : "C2C_MESSAGE_CREATE"
        let content = (index % 4 == 0) ? "ping" : "hello \(index)"
        let author = group ? "{\"member_openid\":\"\(world.memberOpenID(user))\"}" : "{\"user_openid\":\"\(world.userOpenID(user))\"}"
        var d = "{\"id\":\"\(id)\",\"content\":\"\(content)\",\"timestamp\":\"\(timestamp(now: now))\",\"author\":\(author)"
        if group { d += ",\"group_openid\":\"\(world.groupOpenID(groupIndex))\"" }
        d += "}"
        route(message: index, event: event, eventID: event + ":" + id, payload: d, guild: nil, now: now, wake: &wake)
    }

    /// The wall-clock time at `now` as the platform writes it (cached for the second it is in).
    mutating func timestamp(now: Int64) -> String {
        let ms = wallClockAtStart + (now - startedAt) / 1_000_000
        if ms / 1000 != timestampCache.second { timestampCache = (ms / 1000, isoTimestamp(ms: ms)) }
        return timestampCache.text
    }

    /// Renames the share of users configured to change names.
    mutating func renameSome() {
        for user in world.renamers {
            world.rename(user)
            stats.renames += 1
        }
    }
}

/// A wall-clock time (milliseconds since 1970) as the platform writes it, "2021-05-20T15:14:58+08:00".
func isoTimestamp(ms: Int64) -> String {
    var t = time_t((ms + 8 * 3_600_000) / 1000)
    var parts = tm()
    gmtime_r(&t, &parts)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))+08:00"
}
