import ClusterCore
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// What the supervisor's two HTTP servers (the status endpoint and the webhook ingress) share: running one, and
/// the shape of their answers.
enum HTTPServing {
    /// Serves `router` on `address` until cancelled. Once bound it prints `WHAT listening on SCHEME://HOST:PORT`
    /// (what tests and scripts wait for) and sets `listening`; an address that cannot be served fails `listening`
    /// and throws.
    static func run(
        _ router: Router<BasicRequestContext>, server: HTTPServerBuilder, address: ListenAddress, what: String, scheme: String,
        listening: AsyncSignal<Int>, logger: Logger
    ) async throws {
        let app = Application(
            router: router,
            server: server,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                OutputWriter.standardOutput.write("\(what) listening on \(scheme)://\(ListenAddress(host: address.host, port: port))\n")
                listening.set(port)
            },
            logger: logger
        )
        do {
            try await app.run()
        } catch is CancellationError {
        } catch {
            listening.fail(error)
            throw error
        }
    }
}

extension Response {
    /// A JSON answer.
    static func json(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-cache"], body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
    }

    /// A plain-text answer.
    static func text(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
