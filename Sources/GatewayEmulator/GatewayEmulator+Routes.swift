import ClusterCore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// An error answered the platform's way: an HTTP status and `{"code", "message"}`.
struct PlatformError: Error {
    var status: HTTPResponse.Status
    var code: Int
    var message: String
    var headers: HTTPFields = [:]
}

/// Renders every error, including unknown routes and oversized bodies, as `{"code", "message"}` with the exact
/// `Content-Type: application/json` that botpy expects.
struct PlatformErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as PlatformError {
            return jsonResponse("{\"code\":\(error.code),\"message\":\(quoted(error.message))}", status: error.status, headers: error.headers)
        } catch let error as HTTPError {
            let message = error.body ?? error.status.reasonPhrase
            return jsonResponse("{\"code\":\(error.status.code),\"message\":\(quoted(message))}", status: error.status)
        } catch {
            return jsonResponse("{\"code\":500,\"message\":\(quoted("internal error"))}", status: .internalServerError)
        }
    }
}

func quoted(_ text: String) -> String {
    var out = ""
    JSONValue.writeQuoted(text, into: &out)
    return out
}

let traceIDName = HTTPField.Name("X-Tps-trace-ID")!

/// Unique ids for trace headers and sent messages: a counter scrambled by a bijection (no syscall per request,
/// unlike the system random source).
let idCounter = Atomic<UInt64>(0x5EED)

func nextOpaqueID() -> String {
    var z = idCounter.add(1, ordering: .relaxed).newValue &* 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    return hex(z ^ (z >> 31), width: 16)
}

func jsonResponse(_ body: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
    jsonResponse(ByteBuffer(string: body), status: status, headers: headers)
}

func jsonResponse(_ body: ByteBuffer, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
    var fields = headers
    fields[.contentType] = "application/json"
    fields[traceIDName] = nextOpaqueID()
    return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: body))
}

extension GatewayEmulator {
    func addRoutes(to router: Router<BasicRequestContext>) {
        router.post("/app/getAppAccessToken") { request, _ in
            let body = try await Self.jsonBody(request)
            let result = self.core.withLock {
                $0.issueToken(appID: body["appId"]?.stringValue, secret: body["clientSecret"]?.stringValue, now: Self.now())
            }
            switch result {
            case .issued(let token, let expiresIn):
                return jsonResponse("{\"access_token\":\"\(token)\",\"expires_in\":\"\(expiresIn)\"}")
            case .refused(let code, let message):
                return jsonResponse("{\"code\":\(code),\"message\":\(quoted(message))}", status: .unauthorized)
            }
        }
        router.get("/gateway") { request, _ in
            try self.authorized(request)
            let url = self.core.withLock { $0.listeningURL }
            return jsonResponse("{\"url\":\"\(url)\"}")
        }
        router.get("/gateway/bot") { request, _ in
            try self.authorized(request)
            let body = self.core.withLock { core -> String in
                let now = Self.now()
                if now >= core.resetAt {
                    core.remaining = core.config.sessionStartTotal
                    core.resetAt = now + core.config.sessionStartResetAfter.nanoseconds
                }
                let shards = ShardMath.recommendedShards(guilds: core.world.guilds, guildsPerShard: core.config.guildsPerShard)
                let resetAfter = max(0, (core.resetAt - now) / 1_000_000)
                return "{\"url\":\"\(core.listeningURL)\",\"shards\":\(shards),\"session_start_limit\":{\"total\":\(core.config.sessionStartTotal),\"remaining\":\(core.remaining),\"reset_after\":\(resetAfter),\"max_concurrency\":\(core.config.maxConcurrency)}}"
            }
            return jsonResponse(body)
        }
        router.get("/users/@me") { request, _ in
            try self.authorized(request)
            return jsonResponse("{\"id\":\"\(EmulatorCore.botUserID)\",\"username\":\"\(EmulatorCore.botUsername)\",\"avatar\":\"https://thirdqq.qlogo.cn/emulator/bot/0\",\"bot\":true}")
        }
        router.get("/guilds/:guild/members/:user") { request, context in
            try self.authorized(request)
            let guild = context.parameters.get("guild").flatMap(UInt64.init)
            let user = context.parameters.get("user").flatMap(UInt64.init)
            let body = self.core.withLock { core -> String? in
                guard let guild, core.world.guildIndex(guild) != nil, let user, let index = core.world.userIndex(user) else { return nil }
                return "{\"user\":{\"id\":\"\(user)\",\"username\":\(quoted(core.world.username(index))),\"avatar\":\"\(core.world.avatar(index))\",\"bot\":false},\"nick\":\(quoted(core.world.username(index))),\"roles\":[\"1\"],\"joined_at\":\"2024-01-01T00:00:00+08:00\"}"
            }
            guard let body else { throw PlatformError(status: .notFound, code: 50001, message: "member not found") }
            return jsonResponse(body)
        }
        router.post("/channels/:channel/messages") { request, context in
            let body = try await Self.jsonBody(request)
            let content = try Self.content(of: body)
            let msgID = body["msg_id"]?.stringValue ?? body["event_id"]?.stringValue.flatMap(Self.messageID(fromEventID:))
            let channel = context.parameters.get("channel").flatMap(Int.init)
            let header = request.headers[.authorization]
            // One critical section: authorize, spend the limit, find the channel, record the reply.
            let outcome = self.core.withLock { core -> Result<(guildID: UInt64, timestamp: String, reply: EmulatorCore.ReplyResult?), PlatformError> in
                let now = Self.now()
                if let refusal = core.admit(header, now: now) { return .failure(refusal) }
                guard let channel, let guild = core.world.guildOfChannel(channel) else {
                    return .failure(PlatformError(status: .notFound, code: 11263, message: "channel not found"))
                }
                let reply = msgID.map { core.recordReply(msgID: $0, kind: .guild, target: channel - EmulatorWorld.channelBase, msgSeq: nil, now: now) }
                return .success((core.world.guildID(guild), core.timestamp(now: now), reply))
            }
            let found = try outcome.get()
            if let result = found.reply, let msgID { try Self.check(result, msgID: msgID) }
            var out = ByteBuffer()
            out.reserveCapacity(256 + content.utf8.count)
            out.writeStaticString("{\"id\":\"")
            out.writeString(nextOpaqueID())
            out.writeStaticString("\",\"channel_id\":\"")
            out.writeString(String(channel ?? 0))
            out.writeStaticString("\",\"guild_id\":\"")
            out.writeString(String(found.guildID))
            out.writeStaticString("\",\"content\":")
            out.writeString(quoted(content))
            out.writeStaticString(",\"timestamp\":\"")
            out.writeString(found.timestamp)
            out.writeStaticString("\",\"author\":")
            out.writeString(EmulatorCore.botAuthorJSON)
            out.writeStaticString("}")
            return jsonResponse(out)
        }
        router.post("/v2/groups/:group/messages") { request, context in
            try self.authorized(request)
            let body = try await Self.jsonBody(request)
            guard let openID = context.parameters.get("group"), let index = self.core.withLock({ $0.world.groupIndex(openID) }) else {
                throw PlatformError(status: .notFound, code: 11293, message: "group not found")
            }
            return try self.directReply(body, kind: .group, target: index)
        }
        router.post("/v2/users/:user/messages") { request, context in
            try self.authorized(request)
            let body = try await Self.jsonBody(request)
            guard let openID = context.parameters.get("user"), let index = self.core.withLock({ $0.world.userIndex(openID: openID) }) else {
                throw PlatformError(status: .notFound, code: 11293, message: "user not found")
            }
            return try self.directReply(body, kind: .c2c, target: index)
        }
        addAdminRoutes(to: router)
    }

    func directReply(_ body: JSONValue, kind: MessageRecord.Kind, target: Int) throws -> Response {
        _ = try Self.content(of: body)
        let msgID = body["msg_id"]?.stringValue ?? body["event_id"]?.stringValue.flatMap(Self.messageID(fromEventID:))
        let msgSeq = body["msg_seq"]?.intValue
        // One critical section and one clock reading: record the reply and stamp the answer.
        let (result, timestamp) = core.withLock { core in
            let now = Self.now()
            return (msgID.map { core.recordReply(msgID: $0, kind: kind, target: target, msgSeq: msgSeq, now: now) }, core.timestamp(now: now))
        }
        if let result, let msgID { try Self.check(result, msgID: msgID) }
        return jsonResponse("{\"id\":\"\(nextOpaqueID())\",\"timestamp\":\"\(timestamp)\"}")
    }

    static func check(_ result: EmulatorCore.ReplyResult, msgID: String) throws {
        switch result {
        case .accepted: return
        case .unknownMessage: throw PlatformError(status: .badRequest, code: 40034, message: "msg_id \(msgID) does not name a message")
        case .wrongTarget: throw PlatformError(status: .badRequest, code: 40034, message: "msg_id \(msgID) was not sent there")
        case .duplicateSeq: throw PlatformError(status: .badRequest, code: 40054005, message: "msg_seq already used for msg_id \(msgID)")
        case .tooManyReplies: throw PlatformError(status: .badRequest, code: 22009, message: "reply limit reached for msg_id \(msgID)")
        }
    }

    static func messageID(fromEventID eventID: String) -> String? {
        eventID.split(separator: ":").last.map(String.init)
    }

    static func content(of body: JSONValue) throws -> String {
        let content = body["content"]?.stringValue ?? ""
        let rich = ["embed", "ark", "markdown", "image", "media", "keyboard"].contains { key in
            if let value = body[key], value != .null { return true }
            return false
        }
        if content.isEmpty && !rich { throw PlatformError(status: .badRequest, code: 50006, message: "message is empty") }
        return content
    }

    /// Checks the token and takes one request from the REST limit.
    func authorized(_ request: Request) throws {
        let header = request.headers[.authorization]
        if let refusal = core.withLock({ $0.admit(header, now: Self.now()) }) { throw refusal }
    }

    static func jsonBody(_ request: Request) async throws -> JSONValue {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: 1 << 16)
        } catch {
            throw PlatformError(status: .contentTooLarge, code: 40013, message: "request body larger than 64 KiB")
        }
        do {
            let value = try JSONValue.parse(bytes: Array(buffer.readableBytesView))
            guard case .object = value else { throw PlatformError(status: .badRequest, code: 40012, message: "body must be a JSON object") }
            return value
        } catch let error as JSONParseError {
            throw PlatformError(status: .badRequest, code: 40012, message: "malformed JSON body at \(error)")
        }
    }
}
