import ClusterCore
import GatewayEmulator
import QQGateway
import Logging
import Worker

/// The gateway a command talks to: the configured platform, or the emulator started in this process.
struct ResolvedGateway: Sendable {
    var endpoints: GatewayEndpoints
    /// The in-process emulator when `gateway.embedded` is set; it must be run as a service.
    var emulator: GatewayEmulator?

    static func resolve(_ config: ClusterConfig, logger: Logger) -> ResolvedGateway {
        if config.gateway.embedded {
            var emulatorConfig = config.emulator
            // Webhook mode wires itself: the embedded platform delivers by webhook to this process's ingress.
            if config.gateway.mode == .webhook { emulatorConfig.delivery = .webhook }
            let emulator = GatewayEmulator(config: emulatorConfig, app: config.app, logger: logger)
            return ResolvedGateway(endpoints: GatewayEndpoints(apiBase: "", tokenURL: ""), emulator: emulator)
        }
        return ResolvedGateway(
            endpoints: GatewayEndpoints(apiBase: config.gateway.url ?? GatewayConfig.platformURL, tokenURL: config.gateway.tokenURL ?? GatewayConfig.platformTokenURL),
            emulator: nil
        )
    }

    /// The endpoints, once an embedded emulator listens (its address is printed: `emulator listening on URL`,
    /// where its counters and admin API are).
    func ready() async throws -> GatewayEndpoints {
        guard let emulator else { return endpoints }
        let base = try await emulator.baseURL()
        printLine("emulator listening on \(base)")
        return .emulator(base: base)
    }
}
