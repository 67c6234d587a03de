import ClusterCore
import Logging
import QQGateway
import RateBudget

/// The supervisor's own calls to the platform (`/gateway/bot` when it plans a rescale), through its own small
/// budget so that they never compete with the workers' replies.
final class PlatformAPI: Sendable {
    let http = HTTPClientPools(maxConnections: 1, pipelineDepth: 1)
    let api: OpenAPIClient

    init(setup: SupervisorSetup, logger: Logger) {
        let tokens = TokenProvider(appID: setup.config.app.id, secret: setup.config.app.secret, tokenURL: setup.tokenURL, http: http, logger: logger)
        api = OpenAPIClient(baseURL: setup.apiBase, appID: setup.config.app.id, tokens: tokens, budget: LocalRateBudget(rate: 1, burst: 2), http: http, logger: logger)
    }

    func gatewayBot() async throws -> GatewayBotInfo {
        try await api.gatewayBot()
    }

    func shutdown() async {
        await http.shutdown()
    }
}
