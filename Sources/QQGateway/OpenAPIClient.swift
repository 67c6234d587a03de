import ClusterCore
import Logging
import NIOCore
import NIOHTTP1

/// An OpenAPI error: the HTTP status, the platform's code and message, and the trace id to quote to support.
public struct OpenAPIError: Error, Sendable, CustomStringConvertible {
    public var route: String
    public var status: Int
    public var code: Int?
    public var message: String
    public var traceID: String?

    public var description: String {
        var text = "\(route): HTTP \(status)"
        if let code { text += " code \(code)" }
        text += ": \(message)"
        if let traceID { text += " (trace \(traceID))" }
        return text
    }
}

/// A message to send, as the OpenAPI takes it. `msgID` or `eventID` makes it a passive reply.
public struct OutgoingMessage: Sendable {
    public var content: String
    public var msgID: String?
    public var eventID: String?
    /// Group and C2C replies: the reply's number for this `msgID` (the platform refuses a repeated one).
    public var msgSeq: Int?
    /// Group and C2C: 0 text, 2 markdown, 3 ark, 4 embed, 7 media.
    public var msgType: Int

    public init(content: String, msgID: String? = nil, eventID: String? = nil, msgSeq: Int? = nil, msgType: Int = 0) {
        self.content = content
        self.msgID = msgID
        self.eventID = eventID
        self.msgSeq = msgSeq
        self.msgType = msgType
    }
}

/// What `GET /gateway/bot` says.
public struct GatewayBotInfo: Sendable, Equatable {
    public var url: String
    /// The recommended shard count.
    public var shards: Int
    /// Sessions per day, sessions left today, time until the daily reset, identifies per window.
    public var total: Int
    public var remaining: Int
    public var resetAfter: Duration
    public var maxConcurrency: Int
}

/// A message the platform accepted.
public struct SentMessage: Sendable, Equatable {
    public var id: String
    public var timestamp: String?
}

/// The OpenAPI calls a bot makes, over one pooled HTTP client. Every request first spends the rate budget; a 429
/// is reported to the budget (which pauses that route everywhere) and retried once the pause is over; an expired
/// token is renewed once.
public struct OpenAPIClient: Sendable {
    let baseURL: String
    let appID: String
    let tokens: TokenProvider
    let budget: any RequestBudget
    let http: HTTPClientPools
    let logger: Logger
    /// Attempts per request when the answer is 429.
    let attempts = 3

    public init(baseURL: String, appID: String, tokens: TokenProvider, budget: any RequestBudget, http: HTTPClientPools, logger: Logger) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.appID = appID
        self.tokens = tokens
        self.budget = budget
        self.http = http
        self.logger = logger
    }

    /// Sends to a guild channel (`POST /channels/{channel_id}/messages`).
    public func sendChannelMessage(channelID: String, _ message: OutgoingMessage) async throws -> SentMessage {
        var body: [(key: String, value: JSONValue)] = [("content", .string(message.content))]
        if let msgID = message.msgID { body.append(("msg_id", .string(msgID))) }
        if let eventID = message.eventID { body.append(("event_id", .string(eventID))) }
        let reply = try await request(.POST, "/channels/\(channelID)/messages", route: "POST /channels/{channel_id}/messages", body: .object(body))
        return try sent(reply, route: "POST /channels/{channel_id}/messages")
    }

    /// Sends to a group (`POST /v2/groups/{group_openid}/messages`).
    public func sendGroupMessage(groupOpenID: String, _ message: OutgoingMessage) async throws -> SentMessage {
        let route = "POST /v2/groups/{group_openid}/messages"
        return try sent(try await request(.POST, "/v2/groups/\(groupOpenID)/messages", route: route, body: v2Body(message)), route: route)
    }

    /// Sends to a user (`POST /v2/users/{openid}/messages`).
    public func sendC2CMessage(userOpenID: String, _ message: OutgoingMessage) async throws -> SentMessage {
        let route = "POST /v2/users/{openid}/messages"
        return try sent(try await request(.POST, "/v2/users/\(userOpenID)/messages", route: route, body: v2Body(message)), route: route)
    }

    /// The gateway URL, recommended shard count and session-start limits (`GET /gateway/bot`).
    public func gatewayBot() async throws -> GatewayBotInfo {
        let route = "GET /gateway/bot"
        let reply = try await request(.GET, "/gateway/bot", route: route, body: nil)
        guard let url = reply["url"]?.stringValue, let shards = reply["shards"]?.intValue, let limit = reply["session_start_limit"],
            let total = limit["total"]?.intValue, let remaining = limit["remaining"]?.intValue,
            let resetAfter = limit["reset_after"]?.intValue, let maxConcurrency = limit["max_concurrency"]?.intValue
        else {
            throw OpenAPIError(route: route, status: 200, code: nil, message: "unreadable reply: \(reply.serialized())", traceID: nil)
        }
        return GatewayBotInfo(
            url: url, shards: shards, total: total, remaining: remaining, resetAfter: .milliseconds(resetAfter),
            maxConcurrency: max(1, maxConcurrency)
        )
    }

    /// The bot's own user (`GET /users/@me`).
    public func me() async throws -> User {
        let route = "GET /users/@me"
        let reply = try await request(.GET, "/users/@me", route: route, body: nil)
        do {
            return try User(PayloadReader(event: route, value: reply, path: "body"))
        } catch {
            throw OpenAPIError(route: route, status: 200, code: nil, message: "unreadable reply: \(error)", traceID: nil)
        }
    }

    /// A guild member (`GET /guilds/{guild_id}/members/{user_id}`).
    public func guildMember(guildID: String, userID: String) async throws -> Member {
        let route = "GET /guilds/{guild_id}/members/{user_id}"
        let reply = try await request(.GET, "/guilds/\(guildID)/members/\(userID)", route: route, body: nil)
        do {
            return try Member(PayloadReader(event: route, value: reply, path: "body"))
        } catch {
            throw OpenAPIError(route: route, status: 200, code: nil, message: "unreadable reply: \(error)", traceID: nil)
        }
    }

    func v2Body(_ message: OutgoingMessage) -> JSONValue {
        var body: [(key: String, value: JSONValue)] = [("content", .string(message.content)), ("msg_type", .number(Double(message.msgType)))]
        if let msgID = message.msgID { body.append(("msg_id", .string(msgID))) }
        if let eventID = message.eventID { body.append(("event_id", .string(eventID))) }
        if let seq = message.msgSeq { body.append(("msg_seq", .number(Double(seq)))) }
        return .object(body)
    }

    func sent(_ reply: JSONValue, route: String) throws -> SentMessage {
        guard let id = reply["id"]?.stringValue else {
            throw OpenAPIError(route: route, status: 200, code: nil, message: "reply without an id", traceID: nil)
        }
        return SentMessage(id: id, timestamp: reply["timestamp"]?.stringValue)
    }

    /// One API call: budget, token, request; 429 and expired tokens handled as above.
    func request(_ method: HTTPMethod, _ path: String, route: String, body: JSONValue?) async throws -> JSONValue {
        var renewedToken = false
        var attempt = 0
        while true {
            attempt += 1
            try await budget.acquire(route: route)
            let token = try await tokens.token()
            var headers: HTTPHeaders = ["Authorization": "QQBot " + token, "X-Union-Appid": appID]
            var payload: ByteBuffer?
            if let body {
                headers.add(name: "Content-Type", value: "application/json")
                payload = ByteBuffer(string: body.serialized())
            }
            let answer = try await http.execute(method, url: baseURL + path, headers: headers, body: payload)
            let reply = try? JSONValue.parse(bytes: Array(answer.body.readableBytesView))
            let status = answer.status
            let traceID = answer.headers["X-Tps-trace-ID"].first
            if (200..<300).contains(status) {
                guard let reply else {
                    throw OpenAPIError(route: route, status: status, code: nil, message: "reply is not JSON", traceID: traceID)
                }
                return reply
            }
            let error = OpenAPIError(
                route: route, status: status, code: reply?["code"]?.intValue,
                message: reply?["message"]?.stringValue ?? "HTTP \(status)", traceID: traceID
            )
            if status == 429 {
                let seconds = answer.headers["Retry-After"].first.flatMap(Double.init) ?? 1
                let retryAfter = Duration.milliseconds(Int64(max(0.05, seconds) * 1000))
                budget.rateLimited(route: route, retryAfter: retryAfter)
                logger.warning("rate limited", metadata: ["route": "\(route)", "retryAfter": "\(DurationFormat.format(retryAfter))", "attempt": "\(attempt)"])
                if attempt < attempts { continue }
                throw error
            }
            if status == 401 && error.code == 11244 && !renewedToken {
                renewedToken = true
                await tokens.invalidate()
                continue
            }
            throw error
        }
    }
}
