import ClusterCore
import Foundation
import GatewayEmulator
import Synchronization
import Testing

@Suite("emulator OpenAPI", .timeLimit(.minutes(1)))
struct OpenAPITests {
    @Test func tokenEndpoint() async throws {
        try await withEmulator(#"{\#(quiet), "tokenLifetime": "90s"}"#) { _, base in
            let good = try await http(.POST, base + "/app/getAppAccessToken", body: #"{"appId":"\#(AppConfig.emulatorDefaultID)","clientSecret":"\#(AppConfig.emulatorDefaultSecret)"}"#)
            #expect(good.status == 200)
            #expect(good.header("Content-Type") == "application/json")
            #expect(good.json?["expires_in"] == .string("90"))
            let bad = try await http(.POST, base + "/app/getAppAccessToken", body: #"{"appId":"1","clientSecret":"nope"}"#)
            #expect(bad.status == 401)
            #expect(bad.json?["code"]?.intValue == 100016)
            #expect(bad.json?["message"]?.stringValue != nil)
        }
    }

    @Test func restLimitAnswers429WithRetryAfter() async throws {
        try await withEmulator(#"{\#(quiet), "restRate": 2}"#) { _, base in
            let token = try await accessToken(base)
            // Twelve at once against 2 per second (a burst of 2): most must be refused, however slow the machine.
            let replies = try await withThrowingTaskGroup(of: HTTPReply.self) { group in
                for _ in 0..<12 { group.addTask { try await http(.GET, base + "/users/@me", token: token) } }
                var replies: [HTTPReply] = []
                for try await reply in group { replies.append(reply) }
                return replies
            }
            let statuses = replies.map(\.status)
            #expect(statuses.filter { $0 == 200 }.count >= 2)
            #expect(statuses.filter { $0 == 429 }.count >= 6)
            for reply in replies where reply.status == 429 {
                #expect((Int(reply.header("Retry-After") ?? "") ?? 0) >= 1)
                #expect(reply.json?["code"]?.intValue != nil)
                #expect(reply.json?["message"]?.stringValue != nil)
            }
            let s = try await stats(base)
            #expect(s["rateLimited"]?.intValue == statuses.filter { $0 == 429 }.count)
            #expect(s["restRequests"]?.intValue == 12)
        }
    }

    @Test func stoppingTheEmulatorClosesConnectionsThatSentNothingOrWentIdle() async throws {
        // One connection that never sends a request (a client's pool opens such spares) and one idle after a
        // keep-alive request: the emulator must stop without waiting for their clients to close them.
        let opened = Mutex<[Int32]>([])
        // Should the emulator wait for them after all, close them from this side after a while, so that the
        // failure is reported rather than the run hanging.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(30))
            Issue.record("the emulator did not stop while a client held connections open")
            for socket in opened.withLock({ $0 }) { shutdown(socket, Int32(SHUT_RDWR)) }
        }
        let sockets = try await withEmulator(#"{\#(quiet)}"#) { emulator, base in
            let port = UInt16(base.split(separator: ":").last!)!
            let silent = try tcpConnect(port: port)
            let idle = try tcpConnect(port: port)
            opened.withLock { $0 = [silent, idle] }
            let request = Array("GET /emulator/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".utf8)
            #expect(write(idle, request, request.count) == request.count)
            var buffer = [UInt8](repeating: 0, count: 4096)
            #expect(read(idle, &buffer, buffer.count) > 0)
            while emulator.openConnections < 2 { try await Task.sleep(for: .milliseconds(5)) }
            return [silent, idle]
        }
        watchdog.cancel()
        // The server closed both: each reads end of stream.
        for socket in sockets {
            var byte: UInt8 = 0
            #expect(read(socket, &byte, 1) <= 0)
            close(socket)
        }
    }

    @Test func repliesAreCountedPerMessage() async throws {
        try await withEmulator(#"{\#(quiet), "unrepliedGrace": "1ms"}"#) { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, _) = try await readySession(base, token: token)
            var iterator = frames
            emulator.burst(count: 3)
            var messages: [JSONValue] = []
            for _ in 0..<3 { messages.append(try #require(await iterator.nextDispatch("AT_MESSAGE_CREATE"))) }
            func reply(_ message: JSONValue) async throws -> HTTPReply {
                let channel = try #require(message["d"]?["channel_id"]?.stringValue)
                let id = try #require(message["d"]?["id"]?.stringValue)
                return try await http(.POST, base + "/channels/\(channel)/messages", token: token, body: #"{"content":"pong","msg_id":"\#(id)"}"#)
            }
            let first = try await reply(messages[0])
            #expect(first.status == 200)
            #expect(first.json?["channel_id"] == messages[0]["d"]?["channel_id"])
            _ = try await reply(messages[1])
            _ = try await reply(messages[1])
            let s = try await stats(base)
            #expect(s["messagesReplied"]?.intValue == 2)
            #expect(s["messagesRepliedMoreThanOnce"]?.intValue == 1)
            #expect(s["messagesUnreplied"]?.intValue == 1)
            // Reply latency over the stats clock: three generated, two replied (first reply counts), one not.
            let clock = try #require(s["clockMs"]?.doubleValue)
            let latency = try await http(.GET, base + "/emulator/latency?fromMs=0&untilMs=\(clock + 1)")
            #expect(latency.json?["messages"]?.intValue == 3)
            #expect(latency.json?["unreplied"]?.intValue == 1)
            let p99 = try #require(latency.json?["p99Ms"]?.doubleValue)
            #expect(p99 > 0 && p99 <= clock)
            let none = try await http(.GET, base + "/emulator/latency?fromMs=\(clock + 1)&untilMs=\(clock + 2)")
            #expect(none.json?["messages"]?.intValue == 0)
            let backwards = try await http(.GET, base + "/emulator/latency?fromMs=5&untilMs=1")
            #expect(backwards.status == 400)
            let empty = try await http(.POST, base + "/channels/\(messages[2]["d"]?["channel_id"]?.stringValue ?? "")/messages", token: token, body: #"{"msg_id":"x"}"#)
            #expect(empty.status == 400)
            #expect(empty.json?["code"]?.intValue == 50006)
            let unknown = try await http(.POST, base + "/channels/1/messages", token: token, body: #"{"content":"hi"}"#)
            #expect(unknown.status == 404)
            // The trace of the one unreplied message: the session that got it (the first identified, shard 0/1), at
            // seq 4 (READY is 1), still connected; then, once the client is gone, disconnected.
            func unreplied(limit: Int = 50) async throws -> UnrepliedTrace {
                try JSONDecoder().decode(UnrepliedTrace.self, from: Data(try await http(.GET, base + "/emulator/unreplied?limit=\(limit)").body.utf8))
            }
            let trace = try await unreplied()
            #expect(trace.count == 1)
            let lost = try #require(trace.messages.first)
            #expect(lost.id == messages[2]["d"]?["id"]?.stringValue)
            #expect(lost.routedTo == 1)
            let route = try #require(lost.routes.first)
            #expect(route.session == 0)
            #expect(route.shard == "0/1")
            #expect(route.seq == 4)
            #expect(route.seq == messages[2]["s"]?.intValue)
            #expect(route.lastSeq == 4)
            #expect(route.state == "connected")
            client.drop()
            var state: String?
            for _ in 0..<200 {
                state = try await unreplied(limit: 1).messages.first?.routes.first?.state
                if state?.hasPrefix("disconnected ") == true { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(state?.hasPrefix("disconnected ") == true, "state \(state ?? "none")")
            #expect(try await unreplied(limit: 0).messages.isEmpty)
            #expect(try await http(.GET, base + "/emulator/unreplied?limit=-1").status == 400)
        }
    }

    @Test func groupRepliesAreDeduplicatedByMsgSeq() async throws {
        try await withEmulator(#"{"traffic": {"rate": 0, "groupRate": 50, "c2cRate": 0, "renameShare": 0}}"#) { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, _) = try await readySession(base, token: token, intents: 1 << 25 | 1 << 30)
            var iterator = frames
            let message = try #require(await iterator.nextDispatch("GROUP_AT_MESSAGE_CREATE"))
            emulator.setTraffic(groupRate: 0)
            let group = try #require(message["d"]?["group_openid"]?.stringValue)
            let id = try #require(message["d"]?["id"]?.stringValue)
            let body = #"{"content":"pong","msg_type":0,"msg_id":"\#(id)","msg_seq":1,"event_id":null}"#
            #expect(try await http(.POST, base + "/v2/groups/\(group)/messages", token: token, body: body).status == 200)
            let again = try await http(.POST, base + "/v2/groups/\(group)/messages", token: token, body: body)
            #expect(again.status == 400)
            let s = try await stats(base)
            #expect(s["repliesRefusedDuplicateSeq"]?.intValue == 1)
            #expect(s["messagesRepliedMoreThanOnce"]?.intValue == 0)
            client.drop()
        }
    }

    @Test func garbageOnTheHTTPSideGetsAClearError() async throws {
        try await withEmulator("{\(quiet)}") { _, base in
            let token = try await accessToken(base)
            let malformed = try await http(.POST, base + "/channels/10000000/messages", token: token, body: "{not json")
            #expect(malformed.status == 400)
            #expect(malformed.json?["message"]?.stringValue?.contains("line 1, column 2") == true)
            let notFound = try await http(.GET, base + "/no/such/route")
            #expect(notFound.status == 404)
            #expect(notFound.header("Content-Type") == "application/json")
            let huge = try await http(.POST, base + "/channels/10000000/messages", token: token, body: "{\"content\":\"" + String(repeating: "x", count: 100_000) + "\"}")
            #expect(huge.status == 413)
            let badFault = try await http(.POST, base + "/emulator/faults", admin: testAdminToken, body: #"{"kind":"explode"}"#)
            #expect(badFault.status == 400)
            #expect(badFault.json?["message"]?.stringValue?.contains("reconnect") == true)
        }
    }

    @Test func membersAndRenames() async throws {
        try await withEmulator("{\(quiet)}") { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, _) = try await readySession(base, token: token)
            var iterator = frames
            emulator.burst(count: 1)
            let message = try #require(await iterator.nextDispatch("AT_MESSAGE_CREATE"))
            let guild = try #require(message["d"]?["guild_id"]?.stringValue)
            let user = try #require(message["d"]?["author"]?["id"]?.stringValue)
            let before = try #require(try await http(.GET, base + "/guilds/\(guild)/members/\(user)", token: token).json)
            #expect(before["user"]?["username"] == message["d"]?["author"]?["username"])
            let renamed = try #require(try await http(.POST, base + "/emulator/rename", admin: testAdminToken, body: #"{"user":"\#(user)"}"#).json)
            let after = try #require(try await http(.GET, base + "/guilds/\(guild)/members/\(user)", token: token).json)
            #expect(after["user"]?["username"] == renamed["username"])
            #expect(after["user"]?["username"] != before["user"]?["username"])
            client.drop()
        }
    }

    @Test func theAdminAPINeedsItsTokenAndStatsStayOpen() async throws {
        let fault = #"{"kind":"reconnect"}"#
        try await withEmulator(#"{"traffic": {"rate": 0}}"#) { _, base in
            let off = try await http(.POST, base + "/emulator/faults", admin: "anything", body: fault)
            #expect(off.status == 403)
            #expect(off.json?["message"]?.stringValue?.contains("emulator.adminToken") == true)
        }
        try await withEmulator("{\(quiet)}") { _, base in
            for attempt in [nil, "wrong", String(testAdminToken.dropLast())] {
                let refused = try await http(.POST, base + "/emulator/faults", admin: attempt, body: fault)
                #expect(refused.status == 401, "admin token \(attempt ?? "none")")
            }
            #expect(try await http(.POST, base + "/emulator/faults", admin: testAdminToken, body: fault).status == 200)
            #expect(try await http(.POST, base + "/emulator/traffic", admin: "wrong", body: #"{"rate": 5}"#).status == 401)
            let s = try await stats(base)
            #expect(s["adminRefused"]?.intValue == 4)
        }
    }

    @Test func tokensSessionsAndMessageIDsAreNeverSharedBetweenInstances() async throws {
        // Two instances with the same traffic seed, as a restart in the same directory would be.
        let first = try await withEmulator("{\(quiet)}") { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, ready) = try await readySession(base, token: token)
            var iterator = frames
            emulator.burst(count: 1)
            let message = try #require(await iterator.nextDispatch("AT_MESSAGE_CREATE"))
            client.drop()
            return (token, ready, message["d"]?["id"]?.stringValue, message["d"]?["channel_id"]?.stringValue)
        }
        try await withEmulator("{\(quiet)}") { emulator, base in
            let token = try await accessToken(base)
            let (client, frames, ready) = try await readySession(base, token: token)
            var iterator = frames
            emulator.burst(count: 1)
            let message = try #require(await iterator.nextDispatch("AT_MESSAGE_CREATE"))
            #expect(token != first.0)
            #expect(ready != first.1)
            #expect(message["d"]?["id"]?.stringValue != first.2)
            // A reply naming the first instance's message is refused here: it names no message of this one.
            let stale = try await http(.POST, base + "/channels/\(first.3 ?? "")/messages", token: token, body: #"{"content":"pong","msg_id":"\#(first.2 ?? "")"}"#)
            #expect(stale.status == 400)
            #expect(stale.json?["code"]?.intValue == 40034)
            client.drop()
        }
    }
}
