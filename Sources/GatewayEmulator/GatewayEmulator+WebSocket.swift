import ClusterCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

extension GatewayEmulator {
    /// Serves one gateway websocket: a writer task drains the connection's outbox while this task reads frames.
    func serveGateway(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, channel: any Channel) async {
        // Before the Hello goes out: frames must come masked (RFC 6455 §5.1).
        let counted: @Sendable () -> Void = { self.core.withLock { $0.stats.protocolErrors += 1 } }
        // (Hummingbird gives no hook inside the upgrade itself: a frame a client sends before it has the Hello may
        // be read before the guard is in place.)
        _ = try? await channel.eventLoop.submit {
            let sync = channel.pipeline.syncOperations
            let decoder = try sync.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self)
            try sync.addHandler(UnmaskedFrameGuard(onViolation: counted), position: .after(decoder.handler))
        }.get()
        let connectionID = withCore { core, wake, now in
            let id = core.openConnection(now: now)
            if let w = core.enqueue(DispatchFrame.hello(heartbeatInterval: config.heartbeatInterval), on: id, now: now) { wake.append(w) }
            return id
        }
        let log = logger.with("emulator.connection", connectionID)
        log.debug("gateway connection opened")
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.pump(connectionID, outbound: outbound, channel: channel, logger: log) }
            do {
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    let keepGoing = handle(message, on: connectionID, logger: log)
                    if !keepGoing { break }
                }
            } catch {
                log.debug("gateway socket read ended", metadata: ["error": "\(error)"])
            }
            // The socket is gone (or we are closing it): wake the writer so it finishes.
            let waiter = core.withLock { core -> (CheckedContinuation<OutboxBatch, Never>, OutboxBatch)? in
                let claimed = core.claimWaiter(connectionID)
                core.connectionClosed(connectionID, now: Self.now())
                return claimed
            }
            waiter?.0.resume(returning: OutboxBatch(frames: [], close: .drop))
            await group.waitForAll()
        }
    }

    /// Writes the connection's frames in order until a close is requested or the socket is gone.
    func pump(_ connectionID: Int, outbound: WebSocketOutboundWriter, channel: any Channel, logger: Logger) async {
        while true {
            let batch = await withCheckedContinuation { (continuation: CheckedContinuation<OutboxBatch, Never>) in
                let ready = core.withLock { $0.takeBatch(connectionID, waiter: continuation) }
                if let ready { continuation.resume(returning: ready) }
            }
            do {
                for frame in batch.frames {
                    try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame)))
                }
            } catch {
                channel.close(promise: nil)
                return
            }
            if let close = batch.close {
                switch close {
                case .code(let code, let reason):
                    logger.debug("closing gateway socket", metadata: ["close.code": "\(code)", "reason": "\(reason)"])
                    try? await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: reason)
                    channel.close(promise: nil)
                case .drop:
                    channel.close(promise: nil)
                }
                return
            }
        }
    }

    /// Handles one client frame; returns false when the connection must end.
    func handle(_ message: WebSocketMessage, on connectionID: Int, logger: Logger) -> Bool {
        guard case .text(let text) = message else {
            return protocolError(connectionID, 4002, "binary frames are not part of the protocol", logger: logger)
        }
        guard let frame = try? JSONValue.parse(text), case .object = frame else {
            return protocolError(connectionID, 4002, "invalid payload: not a JSON object", logger: logger)
        }
        guard let op = frame["op"]?.intValue else {
            return protocolError(connectionID, 4002, "invalid payload: missing op", logger: logger)
        }
        switch op {
        case 1:
            withCore { core, wake, now in
                if core.heartbeat(connectionID, now: now), let w = core.enqueue(DispatchFrame.control(op: 11), on: connectionID, now: now) {
                    wake.append(w)
                }
            }
            return true
        case 2:
            return identify(frame["d"], on: connectionID, logger: logger)
        case 6:
            return resume(frame["d"], on: connectionID, logger: logger)
        default:
            return protocolError(connectionID, 4001, "invalid opcode \(op)", logger: logger)
        }
    }

    func identify(_ d: JSONValue?, on connectionID: Int, logger: Logger) -> Bool {
        guard let d, case .object = d else { return protocolError(connectionID, 4002, "invalid payload: identify without d", logger: logger) }
        var shard = ShardID(0, of: 1)
        if let value = d["shard"], value != .null {
            guard case .array(let parts) = value, parts.count == 2, let id = parts[0].intValue, let total = parts[1].intValue else {
                return protocolError(connectionID, 4002, "invalid payload: shard must be [id, total]", logger: logger)
            }
            shard = ShardID(id, of: total)
        }
        let intents = d["intents"]?.intValue ?? 0
        let token = d["token"]?.stringValue
        let outcome = withCore { core, wake, now -> (UInt16, String)? in
            if core.connections[connectionID]?.session != nil { return (4002, "already identified") }
            switch core.identify(connectionID: connectionID, token: token, shard: shard, intents: intents, now: now) {
            case .ready(let sessionID, let seq):
                if let w = core.enqueue(DispatchFrame.ready(seq: seq, sessionID: sessionID, shard: shard), on: connectionID, now: now) { wake.append(w) }
                return nil
            case .close(let code, let reason):
                if let w = core.requestClose(connectionID, .code(code, reason), now: now) { wake.append(w) }
                return (code, reason)
            }
        }
        if let (code, reason) = outcome {
            logger.info("identify refused", metadata: ["shard": "\(shard)", "close.code": "\(code)", "reason": "\(reason)"])
            return true
        }
        logger.debug("identified", metadata: ["shard": "\(shard)"])
        return true
    }

    func resume(_ d: JSONValue?, on connectionID: Int, logger: Logger) -> Bool {
        guard let d, case .object = d else { return protocolError(connectionID, 4002, "invalid payload: resume without d", logger: logger) }
        let token = d["token"]?.stringValue
        let sessionID = d["session_id"]?.stringValue
        let seq = d["seq"]?.intValue
        withCore { core, wake, now in
            if core.connections[connectionID]?.session != nil {
                if let w = core.requestClose(connectionID, .code(4002, "already identified"), now: now) { wake.append(w) }
                return
            }
            switch core.resume(connectionID: connectionID, token: token, sessionID: sessionID, seq: seq, now: now) {
            case nil:
                if let w = core.requestClose(connectionID, .code(4004, "authentication failed"), now: now) { wake.append(w) }
            case .invalid(let reason):
                logger.info("resume refused", metadata: ["reason": "\(reason)"])
                if let w = core.enqueue(DispatchFrame.control(op: 9, d: "false"), on: connectionID, now: now) { wake.append(w) }
                if let w = core.requestClose(connectionID, .code(4009, "invalid session"), now: now) { wake.append(w) }
            case .resumed(let replay, let resumedSeq, let displaced):
                for frame in replay {
                    if let w = core.enqueue(frame, on: connectionID, now: now) { wake.append(w) }
                }
                if let w = core.enqueue(DispatchFrame.resumed(seq: resumedSeq), on: connectionID, now: now) { wake.append(w) }
                if let displaced, let w = core.requestClose(displaced, .code(4009, "session resumed elsewhere"), now: now) {
                    wake.append(w)
                }
            }
        }
        return true
    }

    func protocolError(_ connectionID: Int, _ code: UInt16, _ reason: String, logger: Logger) -> Bool {
        logger.warning("gateway protocol error", metadata: ["close.code": "\(code)", "reason": "\(reason)"])
        withCore { core, wake, now in
            core.stats.protocolErrors += 1
            if let w = core.requestClose(connectionID, .code(code, reason), now: now) { wake.append(w) }
        }
        return true
    }
}

/// Closes a connection whose client sends an unmasked frame with 1002 (protocol error), as RFC 6455 §5.1 requires of
/// a server; the frame goes no further.
final class UnmaskedFrameGuard: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let onViolation: @Sendable () -> Void

    init(onViolation: @escaping @Sendable () -> Void) { self.onViolation = onViolation }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.maskKey != nil else {
            onViolation()
            var code = context.channel.allocator.buffer(capacity: 2)
            code.write(webSocketErrorCode: .protocolError)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: code))).whenComplete { _ in
                channel.close(promise: nil)
            }
            return
        }
        context.fireChannelRead(data)
    }
}

extension Logger {
    /// A copy with one more metadata entry.
    func with(_ key: String, _ value: some CustomStringConvertible) -> Logger {
        var copy = self
        copy[metadataKey: key] = "\(value)"
        return copy
    }
}
