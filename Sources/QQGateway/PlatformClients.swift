import ClusterCore
import Logging

/// Where the platform is: the OpenAPI base and the token endpoint.
public struct GatewayEndpoints: Sendable {
    public var apiBase: String
    public var tokenURL: String

    public init(apiBase: String, tokenURL: String) {
        self.apiBase = apiBase
        self.tokenURL = tokenURL
    }

    /// The endpoints an emulator at `base` serves.
    public static func emulator(base: String) -> GatewayEndpoints {
        GatewayEndpoints(apiBase: base, tokenURL: base + "/app/getAppAccessToken")
    }
}

/// The pieces every process that talks to the platform needs, built once: one pooled HTTP client, the token
/// provider, the OpenAPI client behind the given budget.
public struct PlatformClients: Sendable {
    public let http: HTTPClientPools
    public let tokens: TokenProvider
    public let api: OpenAPIClient

    /// `http` defaults to a pool sized for a shard's replies; a process that only asks now and then passes a
    /// smaller one.
    public init(config: ClusterConfig, endpoints: GatewayEndpoints, budget: any RequestBudget, logger: Logger, http: HTTPClientPools = HTTPClientPools()) {
        self.http = http
        tokens = TokenProvider(appID: config.app.id, secret: config.app.secret, tokenURL: endpoints.tokenURL, http: http, logger: logger)
        api = OpenAPIClient(baseURL: endpoints.apiBase, appID: config.app.id, tokens: tokens, budget: budget, http: http, logger: logger)
    }

    public func shutdown() async {
        await http.shutdown()
    }
}
