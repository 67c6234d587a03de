import AsyncHTTPClient
import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import QQGateway

/// POSTs JSON to the emulator (as the platform's client would, with `token` as its access token) and parses the answer.
public func post(_ url: String, _ body: String, token: String? = nil) async throws -> JSONValue {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    if let token { request.headers.add(name: "Authorization", value: "QQBot \(token)") }
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await benchHTTP.execute(request, timeout: .seconds(120))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    return try JSONValue.parse(String(buffer: bytes))
}

/// The bench's HTTP client: it trusts the PEM file `BOTCLUSTER_BENCH_TRUST_ROOTS` names besides the system's
/// roots (an emulator serving TLS with a certificate of its own).
public let benchHTTP: HTTPClient = {
    guard let roots = ProcessInfo.processInfo.environment["BOTCLUSTER_BENCH_TRUST_ROOTS"],
        let tls = try? PlatformTLS.clientConfiguration(trustRoots: roots)
    else { return HTTPClient.shared }
    return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: .init(tlsConfiguration: tls))
}()

/// The emulator admin API's token: `BOTCLUSTER_BENCH_ADMIN_TOKEN`, which the emulators started for a bench name as
/// their `emulator.adminToken` (scripts/bench.sh sets it; the chaos check sets it for the emulator it starts).
public let benchAdminToken = ProcessInfo.processInfo.environment["BOTCLUSTER_BENCH_ADMIN_TOKEN"] ?? "botcluster-bench-admin"

/// POSTs to the emulator's admin API.
public func postAdmin(_ url: String, _ body: String) async throws -> JSONValue {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.headers.add(name: "Authorization", value: "Bearer \(benchAdminToken)")
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await benchHTTP.execute(request, timeout: .seconds(120))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    let reply = try JSONValue.parse(String(buffer: bytes))
    guard response.status == .ok else { throw BenchError("\(url): HTTP \(response.status.code): \(reply.serialized())") }
    return reply
}

/// GETs JSON from the emulator (its counters).
public func get(_ url: String) async throws -> JSONValue {
    let response = try await benchHTTP.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    return try JSONValue.parse(String(buffer: bytes))
}

/// An access token from the emulator for its default app.
public func token(_ base: String) async throws -> String {
    let reply = try await post(base + "/app/getAppAccessToken", #"{"appId":"\#(AppConfig.emulatorDefaultID)","clientSecret":"\#(AppConfig.emulatorDefaultSecret)"}"#)
    guard let token = reply["access_token"]?.stringValue else { throw BenchError("no token: \(reply.serialized())") }
    return token
}
