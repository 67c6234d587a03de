import ClusterCore
import Foundation
import GatewayEmulator
import Logging
import QQGateway
import RateBudget
import TestSupport
import Testing
import Worker

@Suite("the platform over TLS", .timeLimit(.minutes(2)))
struct TLSTests {
    func withCertificates<T>(_ body: (TestCertificate, TestCertificate) async throws -> T) async throws -> T {
        let directory = NSTemporaryDirectory() + "tls-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        return try await body(try TestCertificate.make(in: directory), try TestCertificate.make(in: directory, name: "stranger"))
    }

    @Test func everyMessageIsAnsweredOverHTTPSAndWSS() async throws {
        try await withCertificates { server, _ in
            let tls = #""tls": {"certificate": "\#(server.certificate)", "key": "\#(server.key)"}"#
            try await withShard(
                emulator: testEmulator + ", \(tls)}",
                cluster: #""gateway": {"trustRoots": "\#(server.certificate)"}, "rateBudget": {"global": {"rate": 100000, "burst": 1000}}"#
            ) { h, runtime in
                #expect(h.base.hasPrefix("https://127.0.0.1:"))
                try await h.waitForReady(runtime)
                h.emulator.burst(count: 50)
                try await h.waitFor("50 replies over TLS") { $0.messagesReplied == 50 }
                #expect(h.stats().messagesRepliedMoreThanOnce == 0)
            }
        }
    }

    @Test func aCertificateFromAnotherRootIsRefusedWithAClearError() async throws {
        try await withCertificates { server, stranger in
            let config = try ClusterConfig.parse(#"{"emulator": {"tls": {"certificate": "\#(server.certificate)", "key": "\#(server.key)"}}, "gateway": {"trustRoots": "\#(stranger.certificate)"}}"#)
            var logger = Logger(label: "tls-test")
            logger.logLevel = .critical
            let emulator = GatewayEmulator(config: config.emulator, app: config.app, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await emulator.run() }
                let base = try await emulator.baseURL()
                let clients = try PlatformClients(config: config, endpoints: .emulator(base: base), budget: LocalRateBudget(rate: 100, burst: 10), logger: logger)
                do {
                    _ = try await clients.api.gatewayBot()
                    Issue.record("a certificate from an untrusted root was accepted")
                } catch {
                    let text = "\(error)"
                    #expect(text.contains("the TLS certificate of 127.0.0.1 is not trusted"), "\(text)")
                    #expect(text.contains("gateway.trustRoots"), "\(text)")
                }
                // The gateway's websocket refuses it the same way.
                let url = base.replacingOccurrences(of: "https://", with: "wss://") + "/websocket"
                do {
                    _ = try await GatewaySocket.connect(url: url, tls: clients.http.tls, proxy: nil, maxFrameSize: 1 << 16, timeout: .seconds(5)) { _ in }
                    Issue.record("the websocket accepted a certificate from an untrusted root")
                } catch {
                    #expect("\(error)".contains("is not trusted"), "\(error)")
                }
                await clients.shutdown()
                group.cancelAll()
            }
        }
    }

    @Test func aTrustRootsFileWithoutCertificatesIsAClearError() throws {
        let path = NSTemporaryDirectory() + "not-a-pem-" + UUID().uuidString.prefix(8)
        try "hello".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: PlatformSetupError.self) { try PlatformTLS.clientConfiguration(trustRoots: path) }
        do {
            _ = try PlatformTLS.clientConfiguration(trustRoots: path)
        } catch {
            #expect(error.description.hasPrefix("gateway.trustRoots: "))
        }
    }
}
