import ClusterCore
import Foundation
import Hummingbird
import NIOCore
import Synchronization

extension GatewayEmulator {
    /// The admin API under `/emulator/`: faults, traffic, bursts, renames, the ground-truth counters and the trace of
    /// the messages nobody answered.
    func addAdminRoutes(to router: Router<BasicRequestContext>) {
        router.get("/emulator/stats") { _, _ in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let data = try encoder.encode(self.stats())
            return jsonResponse(String(decoding: data, as: UTF8.self))
        }
        router.get("/emulator/latency") { request, _ in
            let query = request.uri.queryParameters
            guard let from = query.get("fromMs", as: Double.self), let until = query.get("untilMs", as: Double.self), from <= until else {
                throw PlatformError(status: .badRequest, code: 40012, message: "fromMs and untilMs (stats clock, fromMs <= untilMs) are required")
            }
            let latency = self.core.withLock { $0.replyLatency(fromMs: from, untilMs: until) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return jsonResponse(String(decoding: try encoder.encode(latency), as: UTF8.self))
        }
        router.get("/emulator/unreplied") { request, _ in
            let limit = request.uri.queryParameters.get("limit", as: Int.self) ?? 50
            guard (0...10_000).contains(limit) else {
                throw PlatformError(status: .badRequest, code: 40012, message: "limit must be 0...10000")
            }
            let trace = self.core.withLock { $0.unrepliedTrace(now: Self.now(), limit: limit) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return jsonResponse(String(decoding: try encoder.encode(trace), as: UTF8.self))
        }
        router.post("/emulator/faults") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            let fault = try Self.fault(from: body)
            self.inject(fault)
            return jsonResponse("{\"ok\":true}")
        }
        router.post("/emulator/traffic") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            func rate(_ key: String) throws -> Double? {
                guard let value = body[key], value != .null else { return nil }
                guard case .number(let n) = value, n >= 0, n.isFinite else {
                    throw PlatformError(status: .badRequest, code: 40012, message: "\(key) must be a number >= 0")
                }
                return n
            }
            let known: Set<String> = ["rate", "groupRate", "c2cRate"]
            if case .object(let members) = body, let unknown = members.first(where: { !known.contains($0.key) }) {
                throw PlatformError(status: .badRequest, code: 40012, message: "unknown key \(unknown.key); expected rate, groupRate or c2cRate")
            }
            self.setTraffic(rate: try rate("rate"), groupRate: try rate("groupRate"), c2cRate: try rate("c2cRate"))
            return jsonResponse("{\"ok\":true}")
        }
        router.post("/emulator/burst") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            guard let count = body["count"]?.intValue, (1...10_000_000).contains(count) else {
                throw PlatformError(status: .badRequest, code: 40012, message: "count must be a whole number 1...10000000")
            }
            let startedAt = self.burst(count: count)
            return jsonResponse("{\"ok\":true,\"count\":\(count),\"startedAtMs\":\(startedAt)}")
        }
        router.post("/emulator/message") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            guard let user = body["user"]?.stringValue, let guild = body["guild"]?.intValue, self.message(from: user, inGuild: guild) else {
                throw PlatformError(status: .badRequest, code: 40012, message: "user must be the id of a simulated user and guild a guild number 0...guilds-1")
            }
            return jsonResponse("{\"ok\":true,\"guildID\":\"\(self.guildID(guild))\"}")
        }
        router.post("/emulator/webhook") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            guard self.config.delivery == .webhook else {
                throw PlatformError(status: .conflict, code: 40012, message: "this emulator delivers by websocket (emulator.delivery)")
            }
            guard let url = body["url"]?.stringValue, url.hasPrefix("http://") || url.hasPrefix("https://"), url.utf8.count <= 2048 else {
                throw PlatformError(status: .badRequest, code: 40012, message: "url must be the http(s) callback URL")
            }
            self.setWebhook(url: url)
            return jsonResponse("{\"ok\":true}")
        }
        router.post("/emulator/rename") { request, _ in
            try self.authorizeAdmin(request)
            let body = try await Self.jsonBody(request)
            guard let user = body["user"]?.stringValue, let name = self.rename(userID: user) else {
                throw PlatformError(status: .badRequest, code: 40012, message: "user must be the id of a simulated user")
            }
            return jsonResponse("{\"user\":\"\(user)\",\"username\":\(quoted(name))}")
        }
    }

    /// Changes to the emulator need `Authorization: Bearer <emulator.adminToken>`: any local user can reach a
    /// loopback port, and a fault such as a 4914 close bans the bot. Without a configured token they are refused.
    /// (`GET /emulator/stats` and `/emulator/latency` stay open: they are counts, with nothing secret.)
    func authorizeAdmin(_ request: Request) throws {
        guard let token = config.adminToken else {
            core.withLock { $0.stats.adminRefused += 1 }
            throw PlatformError(status: .forbidden, code: 403, message: "the admin API is off: set emulator.adminToken to use it")
        }
        let expected = Array(("Bearer " + token.reveal()).utf8)
        let given = Array((request.headers[.authorization] ?? "").utf8)
        // Compared in constant time: how long a refusal takes says nothing about the token.
        var difference = UInt8(expected.count == given.count ? 0 : 1)
        for index in expected.indices { difference |= expected[index] ^ (index < given.count ? given[index] : 0) }
        guard difference == 0 else {
            core.withLock { $0.stats.adminRefused += 1 }
            throw PlatformError(status: .unauthorized, code: 401, message: "the admin API needs Authorization: Bearer <emulator.adminToken>")
        }
    }

    static func fault(from body: JSONValue) throws -> EmulatorFault {
        let kinds = EmulatorFault.Kind.allCases.map(\.rawValue)
        guard let kindName = body["kind"]?.stringValue, let kind = EmulatorFault.Kind(rawValue: kindName) else {
            throw PlatformError(status: .badRequest, code: 40012, message: "kind must be one of \(kinds.joined(separator: ", "))")
        }
        func optionalInt(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let value = body[key], value != .null else { return nil }
            guard let n = value.intValue, range.contains(n) else {
                throw PlatformError(status: .badRequest, code: 40012, message: "\(key) must be a whole number \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        let code = try optionalInt("code", 1000...4999)
        if kind == .close && code == nil {
            throw PlatformError(status: .badRequest, code: 40012, message: "a close fault needs a code, such as 4009")
        }
        return EmulatorFault(
            kind: kind, shard: try optionalInt("shard", 0...4095), total: try optionalInt("total", 1...4096),
            code: code.map { UInt16($0) }
        )
    }
}
