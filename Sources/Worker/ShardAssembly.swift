import ClusterCore
import Logging
import NIOCore
import NIOPosix
import Foundation
import QQGateway
import UserCache

extension ShardRuntime {
    /// Builds the runtime of one shard from the cluster configuration: its events come from `source`, or from a
    /// websocket session of its own when that is nil.
    public static func make(
        config: ClusterConfig, clients: PlatformClients, gatewayURL: String, shard: ShardID, handler: any EventHandler,
        resume: (id: String, seq: Int)?, permit: any IdentifyPermit, claims: any EventClaims, users: UserDirectory?,
        observer: (any RuntimeObserver)?, logger: Logger, holdDispatch: Bool = false, source: (any EventSource)? = nil
    ) -> ShardRuntime {
        let client = source ?? {
            var clientConfiguration = GatewayClient.Configuration(url: gatewayURL, shard: shard, intents: config.gateway.intents, resume: resume)
            clientConfiguration.session.seed = UInt64(truncatingIfNeeded: MonotonicInstant.now().nanoseconds) ^ UInt64(shard.id)
            clientConfiguration.tls = clients.http.tls
            clientConfiguration.proxies = clients.http.proxies
            return GatewayClient(configuration: clientConfiguration, tokens: clients.tokens, permit: permit, logger: logger)
        }()
        return ShardRuntime(
            configuration: .init(shard: shard, maxInFlight: config.worker.maxInFlight, drainTimeout: config.worker.drainTimeout),
            handler: handler, client: client, api: clients.api, claims: claims, users: users, observer: observer, logger: logger,
            holdDispatch: holdDispatch
        )
    }
}

extension UserDirectory {
    /// The directory of one shard's process: the shared file, the configured memory, and (with `fetchMissing`) the
    /// platform's member API for users not cached yet.
    public static func make(store: UserStore, config: ClusterConfig, shard: ShardID, api: OpenAPIClient, logger: Logger, onWritten: @escaping @Sendable (UserDirectory.Written) -> Void) -> UserDirectory {
        let fetch: (@Sendable (String, String?) async throws -> CachedUser?)?
        if config.cache.fetchMissing {
            fetch = { id, guildID in
                guard let guildID else { return nil }
                let member = try await api.guildMember(guildID: guildID, userID: id)
                guard let user = member.user, let name = user.username else { return nil }
                return CachedUser(id: user.id, username: name, avatar: user.avatar, bot: user.bot, updatedAt: Date().timeIntervalSince1970, shard: shard.id)
            }
        } else {
            fetch = nil
        }
        return UserDirectory(store: store, configuration: .init(config.cache, outbox: config.store.postgres != nil), shard: shard.id, logger: logger, fetch: fetch, onWritten: onWritten)
    }
}
