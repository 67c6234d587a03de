import ClusterCore
import Foundation
import GatewayEmulator
import Testing

/// Traffic off, so each test makes exactly the messages it counts.
let quiet = #""traffic": {"rate": 0, "groupRate": 0, "c2cRate": 0, "renameShare": 0}, "adminToken": "test-admin-token""#

@Suite("emulator gateway protocol", .timeLimit(.minutes(1)))
struct GatewayProtocolTests {
    @Test func identifyGetsReadyEchoingTheShard() async throws {
        try await withEmulator("{\(quiet), \"guildsPerShard\": 8}") { _, base in
            let token = try await accessToken(base)
            let url = gatewayURL(base)
            let client = RawGatewayClient(url: url)
            var frames = client.frames.makeAsyncIterator()
            let hello = try #require(await frames.next())
            #expect(hello["op"]?.intValue == 10)
            #expect(hello["d"]?["heartbeat_interval"]?.intValue == 45_000)
            client.identify(token: token, shard: ShardID(1, of: 2))
            let ready = try #require(await frames.nextDispatch("READY"))
            #expect(ready["s"]?.intValue == 1)
            #expect(ready["d"]?["shard"] == .array([.number(1), .number(2)]))
            #expect(ready["d"]?["user"]?["bot"] == .bool(true))
            client.heartbeat(1)
            let ack = await frames.next(where: { $0["op"]?.intValue == 11 })
            #expect(ack != nil)
            let s = try await stats(base)
            #expect(s["identifies"]?.intValue == 1)
            #expect(s["activeSessions"]?.intValue == 1)
            client.drop()
        }
    }

    @Test func gatewayDiscoveryReportsLimitsAndRecommendation() async throws {
        let overrides = #"{\#(quiet), "guildsPerShard": 5, "sessionStartLimit": {"total": 30, "remaining": 20, "maxConcurrency": 4}, "identifyWindow": "0s"}"#
        try await withEmulator(overrides) { _, base in
            let token = try await accessToken(base)
            let bot = try #require(try await http(.GET, base + "/gateway/bot", token: token).json)
            #expect(bot["shards"]?.intValue == 4)  // 16 guilds at 5 per shard
            #expect(bot["url"]?.stringValue == gatewayURL(base))
            #expect(bot["session_start_limit"]?["total"]?.intValue == 30)
            #expect(bot["session_start_limit"]?["remaining"]?.intValue == 20)
            #expect(bot["session_start_limit"]?["max_concurrency"]?.intValue == 4)
            let (client, _, _) = try await readySession(base, token: token)
            let after = try #require(try await http(.GET, base + "/gateway/bot", token: token).json)
            #expect(after["session_start_limit"]?["remaining"]?.intValue == 19)
            let plain = try #require(try await http(.GET, base + "/gateway", token: token).json)
            #expect(plain["url"]?.stringValue == gatewayURL(base))
            let unauthorized = try await http(.GET, base + "/gateway/bot")
            #expect(unauthorized.status == 401)
            #expect(unauthorized.json?["code"]?.intValue == 11244)
            client.drop()
        }
    }

    @Test func dispatchesCarryIncreasingSeqAndReachTheCoveringShardOnly() async throws {
        try await withEmulator("{\(quiet), \"identifyWindow\": \"0s\"}") { emulator, base in
            let token = try await accessToken(base)
            var sessions: [(RawGatewayClient, AsyncStream<JSONValue>.Iterator)] = []
            for shard in 0..<2 {
                let (client, frames, _) = try await readySession(base, token: token, shard: ShardID(shard, of: 2))
                sessions.append((client, frames))
            }
            emulator.burst(count: 40)
            var ids = Set<String>()
            for shard in 0..<2 {
                let (client, frames) = sessions[shard]
                var iterator = frames
                // The outbox is in order: every dispatch of the burst comes before the ACK of this heartbeat.
                client.heartbeat(nil)
                var expectedSeq = 2
                while let frame = await iterator.next(), frame["op"]?.intValue != 11 {
                    #expect(frame["t"]?.stringValue == "AT_MESSAGE_CREATE")
                    #expect(frame["s"]?.intValue == expectedSeq)
                    expectedSeq += 1
                    let guild = try #require(frame["d"]?["guild_id"]?.stringValue.flatMap(UInt64.init))
                    #expect(ShardID(shard, of: 2).covers(guildID: guild))
                    #expect(frame["id"]?.stringValue?.hasPrefix("AT_MESSAGE_CREATE:") == true)
                    ids.insert(try #require(frame["d"]?["id"]?.stringValue))
                }
                #expect(expectedSeq > 2, "shard \(shard) got none of 40 messages")
                client.drop()
            }
            #expect(ids.count == 40)
            let s = try await stats(base)
            #expect(s["messagesGenerated"]?.intValue == 40)
            #expect(s["messagesDelivered"]?.intValue == 40)
            #expect(s["dispatched"]?.intValue == 40)
            #expect(s["messagesUndelivered"]?.intValue == 0)
        }
    }

    @Test func heartbeatTimeoutClosesTheSocketButKeepsTheSession() async throws {
        try await withEmulator(#"{\#(quiet), "heartbeatInterval": "300ms", "heartbeatTimeout": "3s"}"#) { _, base in
            let token = try await accessToken(base)
            let (client, _, session) = try await readySession(base, token: token)
            let code = try await client.closed.wait()
            #expect(code == 4009)
            let again = RawGatewayClient(url: gatewayURL(base))
            var frames = again.frames.makeAsyncIterator()
            _ = await frames.next()
            again.resume(token: token, session: session, seq: 1)
            let resumed = await frames.nextDispatch("RESUMED")
            #expect(resumed != nil)
            again.drop()
        }
    }

    @Test func resumeReplaysEverythingAfterSeqWithNoGap() async throws {
        try await withEmulator("{\(quiet)}") { emulator, base in
            let token = try await accessToken(base)
            var (client, frames, session) = try await readySession(base, token: token)
            emulator.burst(count: 10)
            var lastSeq = 1
            for _ in 0..<3 {
                let frame = try #require(await frames.nextDispatch("AT_MESSAGE_CREATE"))
                lastSeq = try #require(frame["s"]?.intValue)
            }
            client.drop()
            _ = try await client.closed.wait()
            // Wait until the emulator has noticed the socket is gone; then new messages are held, not sent.
            while try await stats(base)["activeSessions"]?.intValue != 0 { await Task.yield() }
            emulator.burst(count: 5)
            let held = try await stats(base)
            #expect(held["messagesPending"]?.intValue == 5)
            #expect(held["messagesUndelivered"]?.intValue == 0)

            client = RawGatewayClient(url: gatewayURL(base))
            frames = client.frames.makeAsyncIterator()
            _ = await frames.next()
            client.resume(token: token, session: session, seq: lastSeq)
            var seqs: [Int] = []
            while let frame = await frames.next(where: { $0["op"]?.intValue == 0 }) {
                let seq = try #require(frame["s"]?.intValue)
                if frame["t"]?.stringValue == "RESUMED" {
                    #expect(seq == lastSeq + 13)
                    break
                }
                seqs.append(seq)
            }
            #expect(seqs == Array((lastSeq + 1)...(lastSeq + 12)))
            let after = try await stats(base)
            #expect(after["resumes"]?.intValue == 1)
            #expect(after["messagesPending"]?.intValue == 0)
            #expect(after["messagesDelivered"]?.intValue == 15)
            client.drop()
        }
    }

    @Test func resumeOfAnUnknownSessionOrLostSeqGetsInvalidSession() async throws {
        try await withEmulator(#"{\#(quiet), "resumeBuffer": 4}"#) { emulator, base in
            let token = try await accessToken(base)
            let unknown = RawGatewayClient(url: gatewayURL(base))
            var frames = unknown.frames.makeAsyncIterator()
            _ = await frames.next()
            unknown.resume(token: token, session: "no-such-session", seq: 3)
            let invalid = await frames.next(where: { $0["op"]?.intValue == 9 })
            #expect(invalid != nil)
            #expect(try await unknown.closed.wait() != nil)

            let (client, _, session) = try await readySession(base, token: token)
            client.drop()
            _ = try await client.closed.wait()
            while try await stats(base)["activeSessions"]?.intValue != 0 { await Task.yield() }
            emulator.burst(count: 10)  // more than the buffer holds
            let late = RawGatewayClient(url: gatewayURL(base))
            var lateFrames = late.frames.makeAsyncIterator()
            _ = await lateFrames.next()
            late.resume(token: token, session: session, seq: 1)
            #expect(await lateFrames.next(where: { $0["op"]?.intValue == 9 }) != nil)
            let s = try await stats(base)
            #expect(s["resumesRefused"]?.intValue == 2)
            // Six of the ten were evicted unsent and the session is gone: all ten are undelivered.
            #expect(s["messagesUndelivered"]?.intValue == 10)
            // The trace says where they went and why nobody got them: the session's resume from seq 1 was refused.
            let trace = try JSONDecoder().decode(UnrepliedTrace.self, from: Data(try await http(.GET, base + "/emulator/unreplied?limit=3").body.utf8))
            #expect(trace.count == 0 && trace.undeliveredCount == 10 && trace.undelivered.count == 3 && trace.unroutedCount == 0)
            #expect(trace.undelivered.first?.routes.map(\.seq) == [2])
            #expect(trace.undelivered.first?.routes.first?.state.hasSuffix("a resume from seq 1, not held") == true)
            #expect(trace.undelivered.first?.routes.first?.state.hasPrefix("ended ") == true)
            late.drop()
        }
    }

    @Test func identifyFasterThanTheWindowIsClosedWith4008AndCounted() async throws {
        // A window far longer than any starved machine takes between the identifies: the third is always too fast.
        try await withEmulator(#"{\#(quiet), "identifyWindow": "10m", "sessionStartLimit": {"maxConcurrency": 2}}"#) { _, base in
            let token = try await accessToken(base)
            let (first, _, _) = try await readySession(base, token: token, shard: ShardID(0, of: 4))
            // Shard 1 is in the other bucket (1 % 2): allowed at once.
            let (second, _, _) = try await readySession(base, token: token, shard: ShardID(1, of: 4))
            // Shard 2 shares bucket 0 with shard 0: too fast.
            let third = RawGatewayClient(url: gatewayURL(base))
            var frames = third.frames.makeAsyncIterator()
            _ = await frames.next()
            third.identify(token: token, shard: ShardID(2, of: 4))
            let closeCode = try await third.closed.wait()
            #expect(closeCode == 4008)
            let s = try await stats(base)
            #expect(s["identifies"]?.intValue == 2)
            #expect(s["identifyViolations"]?.intValue == 1)
            first.drop()
            second.drop()
        }
    }

    @Test func identifiesAtOneInstantWithTheWindowOffAreAllAdmitted() async throws {
        // botpy identifies every shard at once. Identifies handled on different event loops at one instant must not
        // look "before the previous one" to the window check (a clock read before the lock could go backwards).
        let shards = 32
        try await withEmulator(#"{\#(quiet), "identifyWindow": "0s", "sessionStartLimit": {"maxConcurrency": 1}}"#) { _, base in
            let token = try await accessToken(base)
            var clients: [(RawGatewayClient, AsyncStream<JSONValue>.Iterator)] = []
            for _ in 0..<shards {
                let client = RawGatewayClient(url: gatewayURL(base))
                var frames = client.frames.makeAsyncIterator()
                _ = try #require(await frames.next())  // Hello: the socket is up
                clients.append((client, frames))
            }
            for (shard, (client, _)) in clients.enumerated() { client.identify(token: token, shard: ShardID(shard, of: shards)) }
            for index in clients.indices {
                let ready = await clients[index].1.nextDispatch("READY")
                #expect(ready != nil, "shard \(index) got no READY")
            }
            let s = try await stats(base)
            #expect(s["identifies"]?.intValue == shards)
            #expect(s["identifyViolations"]?.intValue == 0)
            for (client, _) in clients { client.drop() }
        }
    }

    @Test(arguments: [
        (#"[3, 2]"#, 1 << 30, UInt16(4010)),
        (#"[0, 1]"#, 1 << 12 | 1 << 30, UInt16(4014)),
        (#"[0, 1]"#, 1 << 3, UInt16(4013)),
    ])
    func badIdentifyGetsTheProtocolCloseCode(shard: String, intents: Int, code: UInt16) async throws {
        try await withEmulator(#"{\#(quiet), "grantedIntents": ["GUILDS", "PUBLIC_GUILD_MESSAGES"]}"#) { _, base in
            let token = try await accessToken(base)
            let client = RawGatewayClient(url: gatewayURL(base))
            var frames = client.frames.makeAsyncIterator()
            _ = await frames.next()
            client.send(#"{"op":2,"d":{"token":"QQBot \#(token)","intents":\#(intents),"shard":\#(shard)}}"#)
            let closeCode = try await client.closed.wait()
            #expect(closeCode == code)
        }
    }

    @Test func badTokenGets4004() async throws {
        try await withEmulator("{\(quiet)}") { _, base in
            let client = RawGatewayClient(url: gatewayURL(base))
            var frames = client.frames.makeAsyncIterator()
            _ = await frames.next()
            client.identify(token: "not-a-token")
            let closeCode = try await client.closed.wait()
            #expect(closeCode == 4004)
        }
    }

    @Test func malformedFramesCloseOnlyTheirConnection() async throws {
        try await withEmulator("{\(quiet)}") { emulator, base in
            let token = try await accessToken(base)
            let (good, goodFrames, _) = try await readySession(base, token: token)
            for (text, code) in [("garbage", UInt16(4002)), (#"{"op":99}"#, UInt16(4001)), (#"{"d":1}"#, UInt16(4002)), (#"{"op":2,"d":{"shard":"x"}}"#, UInt16(4002))] {
                let bad = RawGatewayClient(url: gatewayURL(base))
                var frames = bad.frames.makeAsyncIterator()
                _ = await frames.next()
                bad.send(text)
                let closeCode = try await bad.closed.wait()
            #expect(closeCode == code, "\(text)")
            }
            emulator.burst(count: 1)
            var frames = goodFrames
            #expect(await frames.nextDispatch("AT_MESSAGE_CREATE") != nil)
            #expect(try await stats(base)["protocolErrors"]?.intValue == 4)
            good.drop()
        }
    }

    @Test func faultsReconnectAndInvalidSession() async throws {
        try await withEmulator("{\(quiet), \"identifyWindow\": \"0s\"}") { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, _) = try await readySession(base, token: token)
            var iterator = frames
            emulator.inject(EmulatorFault(kind: .reconnect))
            #expect(await iterator.next(where: { $0["op"]?.intValue == 7 }) != nil)
            _ = try await client.closed.wait()
            #expect(try await stats(base)["resumableSessions"]?.intValue == 1)

            let (other, otherFrames, _) = try await readySession(base, token: token)
            var otherIterator = otherFrames
            emulator.inject(EmulatorFault(kind: .invalidSession))
            #expect(await otherIterator.next(where: { $0["op"]?.intValue == 9 }) != nil)
            _ = try await other.closed.wait()
            // The first session (disconnected) is still resumable; the invalidated one is gone.
            #expect(try await stats(base)["resumableSessions"]?.intValue == 1)
        }
    }
}

