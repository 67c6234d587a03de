import AsyncHTTPClient
import ClusterCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The platform's side of webhook delivery: validate the callback URL with op 13, then POST every dispatch signed
/// with the app's key, as the platform does, and deliver again what is not acknowledged.
extension GatewayEmulator {
    /// Points webhook delivery at `url` (the bot's ingress); it is validated with op 13 before any dispatch goes.
    public func setWebhook(url: String) {
        core.withLock { core in
            core.webhookURL = url
            core.webhookValidated = false
        }
        webhookWork.poke()
        logger.info("webhook callback URL set", metadata: ["url": "\(url)"])
    }

    func runWebhookDelivery() async throws {
        guard config.delivery == .webhook else { return }
        guard let key = WebhookKey(secret: app.secret) else {
            logger.error("webhook delivery needs the app secret to sign with; nothing will be delivered")
            return
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let roots = config.webhook.trustRoots {
            tls.additionalTrustRoots = [.file(roots)]
        }
        var settings = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow, timeout: .init(connect: .seconds(2)))
        settings.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = config.webhook.concurrency
        let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: settings)
        let permits = AsyncSemaphore(permits: config.webhook.concurrency)
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let (url, validated) = core.withLock { ($0.webhookURL, $0.webhookValidated) }
                guard let url else {
                    // Until `setWebhook` pokes.
                    await webhookWork.wait(until: nil)
                    continue
                }
                if !validated {
                    let ok = await validate(url: url, key: key, client: client)
                    core.withLock { core in
                        if ok { core.stats.webhookValidations += 1 } else { core.stats.webhookValidationsRefused += 1 }
                        if core.webhookURL == url { core.webhookValidated = ok }
                    }
                    if !ok { await webhookWork.wait(until: .now() + .seconds(1)) }
                    continue
                }
                guard (try? await permits.acquire()) != nil else { break }
                let (due, nextDue) = core.withLock { $0.takeDueWebhook(now: Self.now()) }
                guard let delivery = due else {
                    permits.release()
                    // Until the next retry is due, or something is queued (a poke).
                    await webhookWork.wait(until: nextDue.map(MonotonicInstant.init(nanoseconds:)))
                    continue
                }
                group.addTask {
                    defer { permits.release() }
                    let acked = await self.post(delivery.body, to: url, key: key, client: client)
                    self.core.withLock { $0.finishWebhook(delivery, acked: acked, now: Self.now()) }
                    // A retry may now be due earlier than the loop is waiting for.
                    if !acked { self.webhookWork.poke() }
                }
            }
            group.cancelAll()
        }
        try? await client.shutdown()
    }

    /// The headers of a signed callback, as the platform sends them.
    func signedRequest(_ body: [UInt8], to url: String, key: WebhookKey) -> HTTPClientRequest {
        let timestamp = String(Int64(Date().timeIntervalSince1970))
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "QQBot-Callback")
        request.headers.add(name: "X-Bot-Appid", value: app.id)
        request.headers.add(name: "X-Signature-Method", value: "Ed25519")
        request.headers.add(name: "X-Signature-Timestamp", value: timestamp)
        request.headers.add(name: "X-Signature-Ed25519", value: WebhookKey.hex(key.sign(timestamp: Array(timestamp.utf8), body: body)))
        request.body = .bytes(ByteBuffer(bytes: body))
        return request
    }

    /// POSTs one dispatch; true when the bot acknowledged it (a 2xx answer of op 12 with d 0; d 1 or none asks
    /// for a retry).
    func post(_ body: [UInt8], to url: String, key: WebhookKey, client: HTTPClient) async -> Bool {
        do {
            let response = try await client.execute(signedRequest(body, to: url, key: key), timeout: .nanoseconds(config.webhook.timeout.nanoseconds))
            let answer = try await response.body.collect(upTo: 64 * 1024)
            guard (200..<300).contains(response.status.code) else { return false }
            let json = try JSONValue.parse(bytes: Array(answer.readableBytesView))
            return json["op"]?.intValue == 12 && json["d"]?.intValue == 0
        } catch {
            return false
        }
    }

    /// op 13: the bot must answer with the plain token and its signature of `event_ts + plain_token`.
    func validate(url: String, key: WebhookKey, client: HTTPClient) async -> Bool {
        var random = SystemRandomNumberGenerator()
        let token = WebhookKey.hex((0..<10).map { _ in UInt8.random(in: 0...255, using: &random) })
        let eventTS = String(Int64(Date().timeIntervalSince1970))
        let body = Array("{\"d\":{\"plain_token\":\"\(token)\",\"event_ts\":\"\(eventTS)\"},\"op\":13}".utf8)
        do {
            let response = try await client.execute(signedRequest(body, to: url, key: key), timeout: .nanoseconds(config.webhook.timeout.nanoseconds))
            let answer = try await response.body.collect(upTo: 64 * 1024)
            guard response.status.code == 200 else {
                logger.warning("webhook validation refused: the callback answered \(response.status.code)", metadata: ["url": "\(url)"])
                return false
            }
            let json = try JSONValue.parse(bytes: Array(answer.readableBytesView))
            guard json["plain_token"]?.stringValue == token, let hex = json["signature"]?.stringValue, let signature = WebhookKey.bytes(hex: hex),
                key.verify(signature: signature, timestamp: Array(eventTS.utf8), body: Array(token.utf8))
            else {
                logger.warning("webhook validation refused: the answer's signature is not the app key's over event_ts + plain_token", metadata: ["url": "\(url)"])
                return false
            }
            logger.info("webhook callback URL validated", metadata: ["url": "\(url)"])
            return true
        } catch {
            logger.warning("webhook validation failed: \(error)", metadata: ["url": "\(url)"])
            return false
        }
    }
}
