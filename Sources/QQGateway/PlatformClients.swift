import ClusterCore
import Foundation
import Logging

/// Where the platform is: the OpenAPI base and the token endpoint.
public struct GatewayEndpoints: Sendable {
    public var apiBase: String
    public var tokenURL: String

    /// Endpoints from the OpenAPI base URL and the token URL.
    public init(apiBase: String, tokenURL: String) {
        self.apiBase = apiBase
        self.tokenURL = tokenURL
    }

    /// The endpoints an emulator at `base` serves.
    public static func emulator(base: String) -> GatewayEndpoints {
        GatewayEndpoints(apiBase: base, tokenURL: base + "/app/getAppAccessToken")
    }
}

/// The pieces every process that talks to the platform needs, built once: one HTTP client (TLS roots and proxies
/// from the configuration and the environment), the token provider, the OpenAPI client behind the given budget.
public struct PlatformClients: Sendable {
    public let http: PlatformHTTP
    public let tokens: TokenProvider
    public let api: OpenAPIClient

    /// `maxConnections` defaults to what a shard's replies need; a process that only asks now and then passes 1.
    public init(
        config: ClusterConfig, endpoints: GatewayEndpoints, budget: any RequestBudget, logger: Logger,
        environment: [String: String] = ProcessInfo.processInfo.environment, maxConnections: Int = 64
    ) throws(PlatformSetupError) {
        http = try PlatformHTTP(.init(trustRoots: config.gateway.trustRoots, maxConnectionsPerHost: maxConnections, environment: environment))
        tokens = TokenProvider(appID: config.app.id, secret: config.app.secret, tokenURL: endpoints.tokenURL, http: http, logger: logger)
        api = OpenAPIClient(baseURL: endpoints.apiBase, appID: config.app.id, tokens: tokens, budget: budget, http: http, logger: logger)
    }

    /// Closes the HTTP client's connections; requests in flight fail.
    public func shutdown() async {
        await http.shutdown()
    }

    /// What every process that starts shards does first: builds the clients and asks the gateway how to shard
    /// (`GET /gateway/bot`). The error names the step that failed; on failure nothing is left open.
    public static func discover(
        config: ClusterConfig, endpoints: GatewayEndpoints, budget: any RequestBudget, logger: Logger, maxConnections: Int = 64
    ) async throws(GatewayDiscoveryError) -> (PlatformClients, GatewayBotInfo) {
        let clients: PlatformClients
        do {
            clients = try PlatformClients(config: config, endpoints: endpoints, budget: budget, logger: logger, maxConnections: maxConnections)
        } catch {
            throw GatewayDiscoveryError(description: error.description)
        }
        do {
            return (clients, try await clients.api.gatewayBot())
        } catch {
            await clients.shutdown()
            throw GatewayDiscoveryError(description: "cannot ask the gateway how to shard (GET \(endpoints.apiBase)/gateway/bot): \(error)")
        }
    }
}

/// Why a process could not learn from the platform how to shard: its clients could not be set up, or
/// `GET /gateway/bot` failed.
public struct GatewayDiscoveryError: Error, Sendable, CustomStringConvertible {
    public var description: String
}
