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

    /// A message with `content`; text (`msgType` 0) unless told otherwise.
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
    let http: PlatformHTTP
    let logger: Logger
    /// Attempts per request when the answer is 429.
    let attempts = 3
    /// How long one request may take, answer body included.
    let timeout: Duration
    /// Every answer's route and status (shared by the copies of this client).
    public let tally = RESTTally()

    /// A client of the OpenAPI at `baseURL` (a trailing slash is dropped); one request may take `timeout`, body included.
    public init(baseURL: String, appID: String, tokens: TokenProvider, budget: any RequestBudget, http: PlatformHTTP, logger: Logger, timeout: Duration = .seconds(30)) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.appID = appID
        self.tokens = tokens
        self.budget = budget
        self.http = http
        self.logger = logger
        self.timeout = timeout
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
        func unreadable(_ why: String) -> OpenAPIError {
            OpenAPIError(route: route, status: 200, code: nil, message: "unreadable reply (\(why)): \(reply.serialized().prefix(300))", traceID: nil)
        }
        guard let url = reply["url"]?.stringValue, let shards = reply["shards"]?.intValue, let limit = reply["session_start_limit"],
            let total = limit["total"]?.intValue, let remaining = limit["remaining"]?.intValue,
            let resetAfter = limit["reset_after"]?.intValue, let maxConcurrency = limit["max_concurrency"]?.intValue
        else {
            throw unreadable("a field is missing or not a whole number")
        }
        guard let target = URLTarget(url), target.scheme == "ws" || target.scheme == "wss" else { throw unreadable("url is not a ws:// or wss:// URL") }
        guard shards >= 1 else { throw unreadable("shards is \(shards)") }
        // Numbers from the network are clamped to what the platform can mean, so that no later arithmetic traps.
        return GatewayBotInfo(
            url: url, shards: min(shards, 1 << 20), total: min(max(0, total), Int(Int32.max)), remaining: min(max(0, remaining), Int(Int32.max)),
            resetAfter: .clamped(milliseconds: Int64(resetAfter), to: .zero ... .seconds(86_400 * 30)),
            maxConcurrency: min(max(1, maxConcurrency), Self.maxConcurrencyLimit)
        )
    }

    /// The highest `max_concurrency` taken from the platform (its documented values are 1 to 16; larger ones are
    /// clamped so that no bucket table grows with what a server says).
    public static let maxConcurrencyLimit = 1024

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
            let answer: HTTPAnswer
            do {
                answer = try await http.execute(method, url: baseURL + path, headers: headers, body: payload, timeout: timeout)
            } catch {
                tally.count(route: route, status: 0)
                throw error
            }
            tally.count(route: route, status: answer.status)
            let reply = try? JSONValue.parse(bytes: Array(answer.body.readableBytesView))
            let status = answer.status
            let traceID = answer.headers["X-Tps-trace-ID"].first.map { String($0.prefix(128)) }
            if (200..<300).contains(status) {
                guard let reply else {
                    throw OpenAPIError(route: route, status: status, code: nil, message: "reply is not JSON", traceID: traceID)
                }
                return reply
            }
            var error = OpenAPIError(
                route: route, status: status, code: reply?["code"]?.intValue,
                message: reply?["message"]?.stringValue.map { String($0.prefix(500)) } ?? "HTTP \(status)", traceID: traceID
            )
            if (300..<400).contains(status) {
                let location = answer.headers["Location"].first.map { String($0.prefix(200)) } ?? "nowhere"
                error.message = "the platform redirects to \(location); redirects are not followed (the access token would go along): set gateway.url to the new address"
                throw error
            }
            if status == 429 {
                let retryAfter = Self.retryAfter(answer.headers["Retry-After"].first, now: wallClockMilliseconds())
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

    /// The longest pause a 429 can impose: a route paused longer is tried again then (and paused again if the
    /// platform still says so), whatever `Retry-After` said.
    public static let maxRetryAfter = Duration.seconds(60)

    /// The pause a 429's `Retry-After` asks for: seconds (whole or not) or an HTTP date (RFC 9110 §10.2.3), clamped
    /// to 50 ms ... ``maxRetryAfter``; 1 s when the header is missing or unreadable.
    public static func retryAfter(_ header: String?, now wallMilliseconds: Int64) -> Duration {
        let range = Duration.milliseconds(50)...maxRetryAfter
        guard let header = header?.trimmingCharacters(in: " \t"), !header.isEmpty else { return .seconds(1) }
        if let seconds = Double(header) {
            return seconds.isNaN ? .seconds(1) : .clamped(seconds: seconds, to: range)
        }
        if let date = httpDateMilliseconds(header) {
            return .clamped(milliseconds: date.saturatingSubtract(wallMilliseconds), to: range)
        }
        return .seconds(1)
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as milliseconds since 1970, or nil.
func httpDateMilliseconds(_ text: String) -> Int64? {
    let parts = text.split(separator: " ")
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    guard parts.count == 6, parts[5] == "GMT", let day = Int(parts[1]), (1...31).contains(day),
        let month = months.firstIndex(of: String(parts[2])), let year = Int(parts[3]), (1970...9999).contains(year)
    else { return nil }
    let clock = parts[4].split(separator: ":").compactMap { Int($0) }
    guard clock.count == 3, (0...23).contains(clock[0]), (0...59).contains(clock[1]), (0...60).contains(clock[2]) else { return nil }
    // Days since 1970 by the civil-from-days inverse (Howard Hinnant's algorithm).
    let m = month + 1
    let y = m <= 2 ? year - 1 : year
    let era = y / 400
    let yoe = y - era * 400
    let mp = (m + 9) % 12
    let doy = (153 * mp + 2) / 5 + day - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146_097 + doe - 719_468
    return Int64(((days * 24 + clock[0]) * 60 + clock[1]) * 60 + clock[2]) * 1000
}
