import ClusterCore
import ClusterProtocol
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Supervisor

/// The supervisor's read-only HTTP endpoint (`http.listen`): `/metrics` for Prometheus, `/healthz` and `/readyz`
/// for probes, `/status` (what `status --json` prints), `/events` (server-sent events of what happens), and `/`,
/// a status page that needs nothing from the internet. Nothing it serves changes the cluster or tells a secret:
/// session ids are cut to a prefix (the socket's `status` is for the operator alone; this port is for anyone
/// on the host, or beyond).
public final class StatusServer: Service, Sendable {
    let supervisor: ClusterSupervisor
    let address: ListenAddress
    let logger: Logger
    /// The bound port, once listening.
    public let listening = AsyncSignal<Int>()
    /// `/status` asks every worker: one fan-out a second however many clients ask (the page polls it).
    let statuses = SingleFlight<ClusterStatus>(freshFor: .seconds(1))

    /// A server for `supervisor` on `address`.
    public init(supervisor: ClusterSupervisor, address: ListenAddress, logger: Logger) {
        self.supervisor = supervisor
        self.address = address
        self.logger = logger
    }

    /// Serves until cancelled or shut down gracefully. A port that cannot be bound is logged, not fatal: the bot
    /// keeps serving (Prometheus sees the target down).
    public func run() async throws {
        let router = Router(context: BasicRequestContext.self)
        addRoutes(to: router)
        do {
            try await HTTPServing.run(
                router, server: .http1(configuration: .init(idleTimeout: .seconds(75))), address: address, what: "http", scheme: "http",
                listening: listening, logger: logger
            )
        } catch {
            logger.error("http: cannot serve on \(address) (http.listen; \"off\" turns it off): \(error)")
        }
    }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ in
            Response.text("ok\n")
        }
        router.get("/readyz") { _, _ in
            let readiness = self.supervisor.readiness()
            return Response.json(Self.encode(readiness), status: readiness.ready ? .ok : .serviceUnavailable)
        }
        router.get("/status") { _, _ in
            Response.json(Self.encode(Self.public(await self.statuses.value { await self.supervisor.status() })))
        }
        router.get("/metrics") { _, _ in
            let text = await self.supervisor.metricsText()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: text))
            )
        }
        router.get("/events") { request, _ in
            let after = request.headers[.init("Last-Event-ID")!].flatMap(Int.init) ?? request.uri.queryParameters.get("after").flatMap(Int.init) ?? 0
            guard let feed = self.supervisor.events.watch(after: after) else {
                return Response(status: .serviceUnavailable, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: "too many watchers\n")))
            }
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                body: ResponseBody { writer in
                    // A comment first (the browser knows it is connected), then one event per entry; a comment
                    // every 15 s keeps proxies from closing an idle stream. Ends with the connection or shutdown.
                    let (chunks, out) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(ClusterEventFeed.capacity))
                    out.yield(": botcluster events\nretry: 2000\n\n")
                    let pump = Task {
                        for await entry in feed { out.yield("id: \(entry.seq)\ndata: \(Self.encode(entry))\n\n") }
                        out.finish()
                    }
                    let ticker = Task {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: .seconds(15))
                            out.yield(": keep-alive\n\n")
                        }
                    }
                    defer {
                        pump.cancel()
                        ticker.cancel()
                    }
                    for await chunk in chunks.cancelOnGracefulShutdown() {
                        try await writer.write(ByteBuffer(string: chunk))
                    }
                    try await writer.finish(nil)
                }
            )
        }
        router.get("/") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"], body: .init(byteBuffer: ByteBuffer(string: StatusPage.html)))
        }
    }

    /// The status with session ids cut to a prefix.
    static func `public`(_ status: ClusterStatus) -> ClusterStatus {
        var status = status
        func cut(_ workers: inout [ClusterStatus.Worker]) {
            for i in workers.indices {
                if let id = workers[i].session?.id { workers[i].session?.id = String(id.prefix(8)) + "…" }
            }
        }
        cut(&status.workers)
        cut(&status.otherLayouts)
        return status
    }

    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

}
