import ClusterProtocol
import NIOCore

// The wire form: [UInt32 length][UInt8 type][fields]. Integers are big-endian and fixed-width; strings are a
// UInt32 byte count and UTF-8; optionals a UInt8 flag. Binary, not JSON: progress reports, grants and claims are hot.

enum MessageType: UInt8 {
    case hello = 1, welcome = 2, helloAck = 3, refused = 4
    case heartbeat = 10, ping = 11, pong = 12
    case identifyRequest = 20, identifyGrant = 21, identifyDenied = 22, identifySent = 23, identifyCancel = 24
    case sessionCommitted = 30, sessionInvalidated = 31, gatewayState = 32, drained = 33
    // 40 was `stop`, never sent: a worker is stopped with SIGTERM, like any service.
    case budgetRequest = 60, budgetGrant = 61, budgetCancel = 62, budgetReturn = 63, budgetRateLimited = 64, budgetPause = 65
    case usersChanged = 70, usersInvalidate = 71, userQuery = 72, userAnswer = 73
    case metricsQuery = 74, metricsAnswer = 75
    case claims = 80, claimResults = 81, claimResolved = 82, claimsDone = 83, claimsReleased = 84, startDispatch = 85, finishDispatch = 86, dispatchFinished = 87
    case webhookAttach = 90, webhookStart = 91, webhookDispatch = 92
    case controlRequest = 50, controlProgress = 51, controlReply = 52
}

extension ByteBuffer {
    mutating func writeIPCString(_ string: String) {
        let lengthIndex = writerIndex
        writeInteger(UInt32(0))
        let written = writeString(string)
        setInteger(UInt32(written), at: lengthIndex)
    }

    mutating func writeIPCOptionalString(_ string: String?) {
        if let string {
            writeInteger(UInt8(1))
            writeIPCString(string)
        } else {
            writeInteger(UInt8(0))
        }
    }

    mutating func readIPC<T: FixedWidthInteger>(_ type: T.Type, _ field: String) throws(IPCProtocolError) -> T {
        guard let value = readInteger(as: T.self) else { throw IPCProtocolError("truncated frame: \(field) missing") }
        return value
    }

    mutating func readIPCString(_ field: String) throws(IPCProtocolError) -> String {
        let length = try readIPC(UInt32.self, field)
        guard length <= readableBytes, let string = readString(length: Int(length)) else {
            throw IPCProtocolError("truncated frame: \(field) claims \(length) bytes, \(readableBytes) left")
        }
        return string
    }

    mutating func readIPCOptionalString(_ field: String) throws(IPCProtocolError) -> String? {
        switch try readIPC(UInt8.self, field) {
        case 0: return nil
        case 1: return try readIPCString(field)
        case let flag: throw IPCProtocolError("bad optional flag \(flag) for \(field)")
        }
    }

    mutating func writeIPCStrings(_ strings: [String]) {
        writeInteger(UInt32(strings.count))
        for string in strings { writeIPCString(string) }
    }

    mutating func readIPCStrings(_ field: String) throws(IPCProtocolError) -> [String] {
        let count = try readIPC(UInt32.self, field)
        guard Int(count) <= readableBytes / 4 else { throw IPCProtocolError("truncated frame: \(field) claims \(count) strings") }
        var result: [String] = []
        result.reserveCapacity(Int(count))
        for _ in 0..<count { result.append(try readIPCString(field)) }
        return result
    }

    mutating func readIPCBool(_ field: String) throws(IPCProtocolError) -> Bool {
        switch try readIPC(UInt8.self, field) {
        case 0: return false
        case 1: return true
        case let flag: throw IPCProtocolError("bad boolean \(flag) for \(field)")
        }
    }
}

extension IPCMessage {
    /// Appends the message (type and fields, no length prefix).
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let h):
            buffer.writeInteger(MessageType.hello.rawValue)
            buffer.writeInteger(h.version)
            buffer.writeInteger(h.role.rawValue)
            buffer.writeInteger(h.ordinal)
            buffer.writeInteger(h.generation)
            buffer.writeInteger(h.pid)
        case .welcome(let a):
            buffer.writeInteger(MessageType.welcome.rawValue)
            buffer.writeInteger(a.shard)
            buffer.writeInteger(a.total)
            buffer.writeInteger(a.generation)
            buffer.writeIPCOptionalString(a.resumeSessionID)
            buffer.writeInteger(a.resumeSeq)
            buffer.writeIPCString(a.apiBase)
            buffer.writeIPCString(a.tokenURL)
            buffer.writeIPCString(a.gatewayURL)
            buffer.writeInteger(UInt8(a.holdDispatch ? 1 : 0))
        case .helloAck(let pid):
            buffer.writeInteger(MessageType.helloAck.rawValue)
            buffer.writeInteger(pid)
        case .refused(let reason):
            buffer.writeInteger(MessageType.refused.rawValue)
            buffer.writeIPCString(reason)
        case .heartbeat(let p):
            buffer.writeInteger(MessageType.heartbeat.rawValue)
            buffer.writeInteger(p.state.rawValue)
            buffer.writeInteger(p.heartbeatLatencyMicros)
            buffer.writeInteger(p.lastEventAgeMillis)
            buffer.writeInteger(p.reconnects)
            buffer.writeInteger(p.received)
            buffer.writeInteger(p.handled)
            buffer.writeInteger(p.dispatchP50Micros)
            buffer.writeInteger(p.dispatchP99Micros)
            if let session = p.session {
                buffer.writeInteger(UInt8(1))
                buffer.writeIPCString(session.id)
                buffer.writeInteger(session.seq)
            } else {
                buffer.writeInteger(UInt8(0))
            }
        case .ping(let id):
            buffer.writeInteger(MessageType.ping.rawValue)
            buffer.writeInteger(id)
        case .pong(let id):
            buffer.writeInteger(MessageType.pong.rawValue)
            buffer.writeInteger(id)
        case .identifyRequest(let id, let shard):
            buffer.writeInteger(MessageType.identifyRequest.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(shard)
        case .identifyGrant(let id):
            buffer.writeInteger(MessageType.identifyGrant.rawValue)
            buffer.writeInteger(id)
        case .identifyDenied(let id, let reason):
            buffer.writeInteger(MessageType.identifyDenied.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCString(reason)
        case .identifySent(let shard):
            buffer.writeInteger(MessageType.identifySent.rawValue)
            buffer.writeInteger(shard)
        case .identifyCancel(let id):
            buffer.writeInteger(MessageType.identifyCancel.rawValue)
            buffer.writeInteger(id)
        case .sessionCommitted(let sessionID, let seq):
            buffer.writeInteger(MessageType.sessionCommitted.rawValue)
            buffer.writeIPCString(sessionID)
            buffer.writeInteger(seq)
        case .sessionInvalidated:
            buffer.writeInteger(MessageType.sessionInvalidated.rawValue)
        case .gatewayState(let state):
            buffer.writeInteger(MessageType.gatewayState.rawValue)
            switch state {
            case .ready(let id):
                buffer.writeInteger(UInt8(0))
                buffer.writeIPCString(id)
            case .resumed(let id):
                buffer.writeInteger(UInt8(1))
                buffer.writeIPCString(id)
            case .disconnected(let code):
                buffer.writeInteger(UInt8(2))
                buffer.writeInteger(code)
            case .failed(let failure, let code):
                buffer.writeInteger(UInt8(3))
                buffer.writeInteger(failure.rawValue)
                buffer.writeInteger(code)
            }
        case .drained(let sessionID, let seq):
            buffer.writeInteger(MessageType.drained.rawValue)
            buffer.writeIPCOptionalString(sessionID)
            buffer.writeInteger(seq)
        case .budgetRequest(let id, let route, let count):
            buffer.writeInteger(MessageType.budgetRequest.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCString(route)
            buffer.writeInteger(count)
        case .budgetGrant(let id, let count, let ttl):
            buffer.writeInteger(MessageType.budgetGrant.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(count)
            buffer.writeInteger(ttl)
        case .budgetCancel(let id):
            buffer.writeInteger(MessageType.budgetCancel.rawValue)
            buffer.writeInteger(id)
        case .budgetReturn(let route, let count):
            buffer.writeInteger(MessageType.budgetReturn.rawValue)
            buffer.writeIPCString(route)
            buffer.writeInteger(count)
        case .budgetRateLimited(let route, let ms):
            buffer.writeInteger(MessageType.budgetRateLimited.rawValue)
            buffer.writeIPCString(route)
            buffer.writeInteger(ms)
        case .budgetPause(let route, let ms):
            buffer.writeInteger(MessageType.budgetPause.rawValue)
            buffer.writeIPCString(route)
            buffer.writeInteger(ms)
        case .claims(let id, let keys):
            buffer.writeInteger(MessageType.claims.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCStrings(keys)
        case .claimResults(let id, let decisions):
            buffer.writeInteger(MessageType.claimResults.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt32(decisions.count))
            buffer.writeBytes(decisions.map(\.rawValue))
        case .claimResolved(let key, let decision):
            buffer.writeInteger(MessageType.claimResolved.rawValue)
            buffer.writeIPCString(key)
            buffer.writeInteger(decision.rawValue)
        case .claimsDone(let keys):
            buffer.writeInteger(MessageType.claimsDone.rawValue)
            buffer.writeIPCStrings(keys)
        case .claimsReleased(let keys):
            buffer.writeInteger(MessageType.claimsReleased.rawValue)
            buffer.writeIPCStrings(keys)
        case .startDispatch:
            buffer.writeInteger(MessageType.startDispatch.rawValue)
        case .finishDispatch(let fence):
            buffer.writeInteger(MessageType.finishDispatch.rawValue)
            buffer.writeInteger(fence)
        case .dispatchFinished(let fence):
            buffer.writeInteger(MessageType.dispatchFinished.rawValue)
            buffer.writeInteger(fence)
        case .webhookAttach:
            buffer.writeInteger(MessageType.webhookAttach.rawValue)
        case .webhookStart(let streamID, let seq, let fresh):
            buffer.writeInteger(MessageType.webhookStart.rawValue)
            buffer.writeIPCString(streamID)
            buffer.writeInteger(seq)
            buffer.writeInteger(UInt8(fresh ? 1 : 0))
        case .webhookDispatch(let seq, let eventID, let name, let payload):
            buffer.writeInteger(MessageType.webhookDispatch.rawValue)
            buffer.writeInteger(seq)
            buffer.writeIPCString(eventID)
            buffer.writeIPCString(name)
            buffer.writeIPCString(payload)
        case .usersChanged(let ids):
            buffer.writeInteger(MessageType.usersChanged.rawValue)
            buffer.writeIPCStrings(ids)
        case .usersInvalidate(let ids):
            buffer.writeInteger(MessageType.usersInvalidate.rawValue)
            buffer.writeIPCStrings(ids)
        case .userQuery(let id, let userID):
            buffer.writeInteger(MessageType.userQuery.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCString(userID)
        case .userAnswer(let id, let username):
            buffer.writeInteger(MessageType.userAnswer.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCOptionalString(username)
        case .metricsQuery(let id):
            buffer.writeInteger(MessageType.metricsQuery.rawValue)
            buffer.writeInteger(id)
        case .metricsAnswer(let id, let metrics):
            buffer.writeInteger(MessageType.metricsAnswer.rawValue)
            buffer.writeInteger(id)
            buffer.writeWorkerMetrics(metrics)
        case .controlRequest(let id, let command):
            buffer.writeInteger(MessageType.controlRequest.rawValue)
            buffer.writeInteger(id)
            buffer.writeControlCommand(command)
        case .controlProgress(let id, let line):
            buffer.writeInteger(MessageType.controlProgress.rawValue)
            buffer.writeInteger(id)
            buffer.writeIPCString(line)
        case .controlReply(let id, let ok, let body):
            buffer.writeInteger(MessageType.controlReply.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt8(ok ? 1 : 0))
            buffer.writeIPCString(body)
        }
    }

    /// Reads one message from a whole frame (without its length prefix); the frame must hold exactly one.
    public static func decode(_ frame: inout ByteBuffer) throws(IPCProtocolError) -> IPCMessage {
        let raw = try frame.readIPC(UInt8.self, "message type")
        guard let type = MessageType(rawValue: raw) else { throw IPCProtocolError("unknown message type \(raw)") }
        let message: IPCMessage
        switch type {
        case .hello:
            let version = try frame.readIPC(UInt16.self, "version")
            let roleRaw = try frame.readIPC(UInt8.self, "role")
            guard let role = IPCRole(rawValue: roleRaw) else { throw IPCProtocolError("unknown role \(roleRaw)") }
            message = .hello(Hello(
                version: version, role: role, ordinal: try frame.readIPC(Int32.self, "ordinal"),
                generation: try frame.readIPC(UInt64.self, "generation"), pid: try frame.readIPC(Int32.self, "pid")
            ))
        case .welcome:
            message = .welcome(Assignment(
                shard: try frame.readIPC(Int32.self, "shard"), total: try frame.readIPC(Int32.self, "total"),
                generation: try frame.readIPC(UInt64.self, "generation"),
                resumeSessionID: try frame.readIPCOptionalString("resumeSessionID"), resumeSeq: try frame.readIPC(Int64.self, "resumeSeq"),
                apiBase: try frame.readIPCString("apiBase"), tokenURL: try frame.readIPCString("tokenURL"),
                gatewayURL: try frame.readIPCString("gatewayURL"), holdDispatch: try frame.readIPCBool("holdDispatch")
            ))
        case .helloAck:
            message = .helloAck(supervisorPID: try frame.readIPC(Int32.self, "supervisorPID"))
        case .refused:
            message = .refused(reason: try frame.readIPCString("reason"))
        case .heartbeat:
            let stateRaw = try frame.readIPC(UInt8.self, "state")
            guard let state = WorkerProgress.State(rawValue: stateRaw) else { throw IPCProtocolError("unknown worker state \(stateRaw)") }
            message = .heartbeat(WorkerProgress(
                state: state, heartbeatLatencyMicros: try frame.readIPC(Int64.self, "heartbeatLatency"),
                lastEventAgeMillis: try frame.readIPC(Int64.self, "lastEventAge"), reconnects: try frame.readIPC(Int32.self, "reconnects"),
                received: try frame.readIPC(Int64.self, "received"), handled: try frame.readIPC(Int64.self, "handled"),
                dispatchP50Micros: try frame.readIPC(Int64.self, "p50"), dispatchP99Micros: try frame.readIPC(Int64.self, "p99"),
                session: try frame.readIPCBool("hasSession")
                    ? .init(id: try frame.readIPCString("sessionID"), seq: try frame.readIPC(Int64.self, "seq")) : nil
            ))
        case .ping:
            message = .ping(id: try frame.readIPC(UInt64.self, "id"))
        case .pong:
            message = .pong(id: try frame.readIPC(UInt64.self, "id"))
        case .identifyRequest:
            message = .identifyRequest(id: try frame.readIPC(UInt64.self, "id"), shard: try frame.readIPC(Int32.self, "shard"))
        case .identifyGrant:
            message = .identifyGrant(id: try frame.readIPC(UInt64.self, "id"))
        case .identifyDenied:
            message = .identifyDenied(id: try frame.readIPC(UInt64.self, "id"), reason: try frame.readIPCString("reason"))
        case .identifySent:
            message = .identifySent(shard: try frame.readIPC(Int32.self, "shard"))
        case .identifyCancel:
            message = .identifyCancel(id: try frame.readIPC(UInt64.self, "id"))
        case .sessionCommitted:
            message = .sessionCommitted(sessionID: try frame.readIPCString("sessionID"), seq: try frame.readIPC(Int64.self, "seq"))
        case .sessionInvalidated:
            message = .sessionInvalidated
        case .gatewayState:
            switch try frame.readIPC(UInt8.self, "gateway state") {
            case 0: message = .gatewayState(.ready(sessionID: try frame.readIPCString("sessionID")))
            case 1: message = .gatewayState(.resumed(sessionID: try frame.readIPCString("sessionID")))
            case 2: message = .gatewayState(.disconnected(code: try frame.readIPC(Int32.self, "code")))
            case 3:
                let raw = try frame.readIPC(UInt8.self, "failure")
                guard let failure = GatewayFailure(rawValue: raw) else { throw IPCProtocolError("unknown gateway failure \(raw)") }
                message = .gatewayState(.failed(failure, code: try frame.readIPC(Int32.self, "code")))
            case let other: throw IPCProtocolError("unknown gateway state \(other)")
            }
        case .drained:
            message = .drained(sessionID: try frame.readIPCOptionalString("sessionID"), seq: try frame.readIPC(Int64.self, "seq"))
        case .budgetRequest:
            message = .budgetRequest(id: try frame.readIPC(UInt64.self, "id"), route: try frame.readIPCString("route"), count: try frame.readIPC(Int32.self, "count"))
        case .budgetGrant:
            message = .budgetGrant(id: try frame.readIPC(UInt64.self, "id"), count: try frame.readIPC(Int32.self, "count"), ttlMillis: try frame.readIPC(Int32.self, "ttl"))
        case .budgetCancel:
            message = .budgetCancel(id: try frame.readIPC(UInt64.self, "id"))
        case .budgetReturn:
            message = .budgetReturn(route: try frame.readIPCString("route"), count: try frame.readIPC(Int32.self, "count"))
        case .budgetRateLimited:
            message = .budgetRateLimited(route: try frame.readIPCString("route"), retryAfterMillis: try frame.readIPC(Int32.self, "retryAfter"))
        case .budgetPause:
            message = .budgetPause(route: try frame.readIPCString("route"), forMillis: try frame.readIPC(Int32.self, "for"))
        case .claims:
            message = .claims(id: try frame.readIPC(UInt64.self, "id"), keys: try frame.readIPCStrings("keys"))
        case .claimResults:
            let id = try frame.readIPC(UInt64.self, "id")
            let count = try frame.readIPC(UInt32.self, "count")
            guard Int(count) <= frame.readableBytes, let bytes = frame.readBytes(length: Int(count)) else {
                throw IPCProtocolError("truncated frame: \(count) decisions")
            }
            message = .claimResults(id: id, decisions: try bytes.map { raw throws(IPCProtocolError) in try ClaimDecision.decode(raw) })
        case .claimResolved:
            message = .claimResolved(key: try frame.readIPCString("key"), decision: try ClaimDecision.decode(try frame.readIPC(UInt8.self, "decision")))
        case .claimsDone:
            message = .claimsDone(keys: try frame.readIPCStrings("keys"))
        case .claimsReleased:
            message = .claimsReleased(keys: try frame.readIPCStrings("keys"))
        case .startDispatch:
            message = .startDispatch
        case .finishDispatch:
            message = .finishDispatch(fence: try frame.readIPC(UInt64.self, "fence"))
        case .dispatchFinished:
            message = .dispatchFinished(fence: try frame.readIPC(UInt64.self, "fence"))
        case .webhookAttach:
            message = .webhookAttach
        case .webhookStart:
            message = .webhookStart(streamID: try frame.readIPCString("streamID"), seq: try frame.readIPC(Int64.self, "seq"), fresh: try frame.readIPCBool("fresh"))
        case .webhookDispatch:
            message = .webhookDispatch(
                seq: try frame.readIPC(Int64.self, "seq"), eventID: try frame.readIPCString("eventID"),
                name: try frame.readIPCString("name"), payload: try frame.readIPCString("payload")
            )
        case .usersChanged:
            message = .usersChanged(ids: try frame.readIPCStrings("ids"))
        case .usersInvalidate:
            message = .usersInvalidate(ids: try frame.readIPCStrings("ids"))
        case .userQuery:
            message = .userQuery(id: try frame.readIPC(UInt64.self, "id"), userID: try frame.readIPCString("userID"))
        case .userAnswer:
            message = .userAnswer(id: try frame.readIPC(UInt64.self, "id"), username: try frame.readIPCOptionalString("username"))
        case .metricsQuery:
            message = .metricsQuery(id: try frame.readIPC(UInt64.self, "id"))
        case .metricsAnswer:
            message = .metricsAnswer(id: try frame.readIPC(UInt64.self, "id"), try frame.readWorkerMetrics())
        case .controlRequest:
            message = .controlRequest(id: try frame.readIPC(UInt64.self, "id"), command: try frame.readControlCommand())
        case .controlProgress:
            message = .controlProgress(id: try frame.readIPC(UInt64.self, "id"), line: try frame.readIPCString("line"))
        case .controlReply:
            message = .controlReply(id: try frame.readIPC(UInt64.self, "id"), ok: try frame.readIPCBool("ok"), body: try frame.readIPCString("body"))
        }
        if frame.readableBytes > 0 { throw IPCProtocolError("\(frame.readableBytes) unexpected bytes after a \(message.name) message") }
        return message
    }
}

extension ByteBuffer {
    mutating func writeWorkerMetrics(_ m: WorkerMetrics) {
        writeInteger(UInt32(m.eventsByType.count))
        for (type, count) in m.eventsByType.sorted(by: { $0.key < $1.key }) {
            writeIPCString(type)
            writeInteger(count)
        }
        writeInteger(m.duplicates)
        writeInteger(m.handlerErrors)
        for histogram in [m.handlerDuration, m.heartbeatLatency, m.ipcRoundTrip] { writeHistogram(histogram) }
        writeInteger(UInt32(m.restRequests.count))
        for (key, count) in m.restRequests.sorted(by: { ($0.key.route, $0.key.status) < ($1.key.route, $1.key.status) }) {
            writeIPCString(key.route)
            writeInteger(Int32(clamping: key.status))
            writeInteger(count)
        }
        writeInteger(m.cacheHits)
        writeInteger(m.cacheMisses)
    }

    mutating func writeHistogram(_ h: MetricHistogram) {
        writeInteger(UInt8(h.counts.count))
        for count in h.counts { writeInteger(count) }
        writeInteger(h.sum.bitPattern)
    }

    /// A worker's counts. Labels past what a worker keeps apart, or not plain, fold into `other`; counts are
    /// clamped to `WorkerMetrics.maxCount` (a forged answer can neither grow the supervisor's tables nor trap a sum).
    mutating func readWorkerMetrics() throws(IPCProtocolError) -> WorkerMetrics {
        func count(_ field: String) throws(IPCProtocolError) -> Int64 {
            min(max(0, try readIPC(Int64.self, field)), WorkerMetrics.maxCount)
        }
        var m = WorkerMetrics()
        let types = try readIPC(UInt32.self, "eventTypes")
        guard Int(types) <= readableBytes / 12 else { throw IPCProtocolError("truncated frame: eventTypes claims \(types) entries") }
        for _ in 0..<types {
            let type = WorkerMetrics.eventLabel(try readIPCString("eventType"))
            WorkerMetrics.tally(&m.eventsByType, type, try count("events"), overflow: WorkerMetrics.otherLabel)
        }
        m.duplicates = try count("duplicates")
        m.handlerErrors = try count("handlerErrors")
        m.handlerDuration = try readHistogram(MetricHistogram.Bounds.handler, "handlerDuration")
        m.heartbeatLatency = try readHistogram(MetricHistogram.Bounds.heartbeat, "heartbeatLatency")
        m.ipcRoundTrip = try readHistogram(MetricHistogram.Bounds.ipc, "ipcRoundTrip")
        let routes = try readIPC(UInt32.self, "restRequests")
        guard Int(routes) <= readableBytes / 16 else { throw IPCProtocolError("truncated frame: restRequests claims \(routes) entries") }
        for _ in 0..<routes {
            let route = WorkerMetrics.routeLabel(try readIPCString("route"))
            let status = Int(try readIPC(Int32.self, "status"))
            let key = RESTOutcome(route: route, status: (0...999).contains(status) ? status : 0)
            WorkerMetrics.tally(&m.restRequests, key, try count("requests"), overflow: WorkerMetrics.otherREST)
        }
        m.cacheHits = try count("cacheHits")
        m.cacheMisses = try count("cacheMisses")
        return m
    }

    mutating func readHistogram(_ bounds: [Double], _ field: String) throws(IPCProtocolError) -> MetricHistogram {
        let n = try readIPC(UInt8.self, field)
        guard Int(n) == bounds.count + 1 else { throw IPCProtocolError("\(field): \(n) buckets, expected \(bounds.count + 1)") }
        var counts: [Int64] = []
        for _ in 0..<n { counts.append(try readIPC(Int64.self, field)) }
        let sum = Double(bitPattern: try readIPC(UInt64.self, field))
        guard let histogram = MetricHistogram(bounds: bounds, counts: counts, sum: sum) else {
            throw IPCProtocolError("\(field): a negative count or a sum that is not a number")
        }
        return histogram
    }
}

extension ClaimDecision {
    static func decode(_ raw: UInt8) throws(IPCProtocolError) -> ClaimDecision {
        guard let decision = ClaimDecision(rawValue: raw) else { throw IPCProtocolError("unknown claim decision \(raw)") }
        return decision
    }
}

/// A control command on the wire: a kind byte, then its arguments.
enum ControlKind: UInt8 {
    // 3 was a restart by shard: the same as by ordinal, since worker K runs shard K.
    case status = 1, restartOrdinal = 2, rolling = 4, scaleCount = 5, scaleRecommended = 6, stop = 7, user = 8
}

extension ByteBuffer {
    mutating func writeControlCommand(_ command: ControlCommand) {
        switch command {
        case .status: writeInteger(ControlKind.status.rawValue)
        case .restart(let ordinal):
            writeInteger(ControlKind.restartOrdinal.rawValue)
            writeInteger(Int32(clamping: ordinal))
        case .rollingRestart(let maxUnavailable):
            writeInteger(ControlKind.rolling.rawValue)
            writeInteger(Int32(clamping: maxUnavailable))
        case .scale(.count(let n), let planOnly):
            writeInteger(ControlKind.scaleCount.rawValue)
            writeInteger(Int32(clamping: n))
            writeInteger(UInt8(planOnly ? 1 : 0))
        case .scale(.recommended, let planOnly):
            writeInteger(ControlKind.scaleRecommended.rawValue)
            writeInteger(UInt8(planOnly ? 1 : 0))
        case .stop: writeInteger(ControlKind.stop.rawValue)
        case .user(let id):
            writeInteger(ControlKind.user.rawValue)
            writeIPCString(id)
        }
    }

    mutating func readControlCommand() throws(IPCProtocolError) -> ControlCommand {
        let raw = try readIPC(UInt8.self, "command")
        guard let kind = ControlKind(rawValue: raw) else { throw IPCProtocolError("unknown control command \(raw)") }
        switch kind {
        case .status: return .status
        case .restartOrdinal: return .restart(ordinal: Int(try readIPC(Int32.self, "ordinal")))
        case .rolling: return .rollingRestart(maxUnavailable: Int(try readIPC(Int32.self, "maxUnavailable")))
        case .scaleCount: return .scale(.count(Int(try readIPC(Int32.self, "shards"))), planOnly: try readIPCBool("planOnly"))
        case .scaleRecommended: return .scale(.recommended, planOnly: try readIPCBool("planOnly"))
        case .stop: return .stop
        case .user: return .user(id: try readIPCString("user"))
        }
    }
}
