import ArgumentParser
import ClusterCore
import ClusterHTTP
import ClusterIPC
import ClusterProtocol
import Foundation
import GatewayEmulator
import Logging
import QQGateway
import RateBudget
import ServiceLifecycle
import Supervisor
import UserCache
import UnixSignals
import Worker

struct LaunchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Run the bot across its shards: a supervisor and one worker process per shard."
    )

    @OptionGroup var options: CommonOptions

    @Option(name: .customLong("host-id"), help: "This host's id (0...999) in a cluster of several hosts sharing store.postgres (default: $BOTCLUSTER_HOST_ID, as a Kubernetes StatefulSet's pod index).")
    var hostID: String?

    func run() async throws {
        let config = try options.loadConfig()
        let logger = makeLogger("botcluster.supervisor", config: config)
        let host: Int?
        switch Self.hostID(option: hostID, environment: ProcessInfo.processInfo.environment, postgres: config.store.postgres != nil) {
        case .success(let id): host = id
        case .failure(let error):
            printError(error.description)
            throw ExitCode(1)
        }
        let lock: SupervisorLock
        do {
            try RunDirectory.checkSocketPath(config.supervisor.socket)
            try RunDirectory.prepare(config.supervisor.runDirectory)
            let socketDirectory = (config.supervisor.socket as NSString).deletingLastPathComponent
            if !socketDirectory.isEmpty { try RunDirectory.prepare(socketDirectory) }
            lock = try SupervisorLock(path: config.supervisor.socket + ".lock")
            // The supervisor owns the user cache's schema: workers only open it.
            _ = try UserStore.prepare(path: config.supervisor.runDirectory + "/users.sqlite", logger: logger)
        } catch let error as SocketPathError {
            printError(error.description)
            throw ExitCode(1)
        } catch {
            printError("supervisor.runDirectory: \(error)")
            throw ExitCode(1)
        }
        let gateway = ResolvedGateway.resolve(config, logger: makeLogger("emulator", config: config))
        let launch = LaunchService(config: config, configPath: absolutePath(options.config), gateway: gateway, hostID: host, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let emulator = gateway.emulator { services.append(.init(service: emulator)) }
        services.append(.init(service: launch, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        withExtendedLifetime(lock) {}
        if let status = launch.exitStatus.current, status != 0 { throw ExitCode(status) }
    }
}

extension LaunchCommand {
    /// The host id from `--host-id`, else `BOTCLUSTER_HOST_ID`: required (0...999) when the store is PostgreSQL,
    /// nil on one host.
    static func hostID(option: String?, environment: [String: String], postgres: Bool) -> Result<Int?, ClusterStoreError> {
        let (text, source) = option.map { ($0, "--host-id") } ?? (environment["BOTCLUSTER_HOST_ID"].map { ($0, "BOTCLUSTER_HOST_ID") } ?? (nil, ""))
        guard postgres else { return .success(nil) }
        guard let text else {
            return .failure(.init(description: "store is PostgreSQL: give this host its id with --host-id N or BOTCLUSTER_HOST_ID (0...999; in Kubernetes, the pod's apps.kubernetes.io/pod-index label)"))
        }
        guard let id = Int(text), (0...999).contains(id) else {
            return .failure(.init(description: "\(source) must be a number 0...999, got \"\(text.prefix(20))\""))
        }
        return .success(id)
    }
}

func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

/// Asks the platform how to shard, checks the daily budget, then runs the supervisor.
final class LaunchService: Service {
    let config: ClusterConfig
    let configPath: String
    let gateway: ResolvedGateway
    let logger: Logger
    let exitStatus = AsyncSignal<Int32>()
    let hostID: Int?

    init(config: ClusterConfig, configPath: String, gateway: ResolvedGateway, hostID: Int?, logger: Logger) {
        self.hostID = hostID
        self.config = config
        self.configPath = configPath
        self.gateway = gateway
        self.logger = logger
    }

    func run() async throws {
        let endpoints = try await gateway.ready()
        let clients: PlatformClients
        let info: GatewayBotInfo
        do {
            (clients, info) = try await PlatformClients.discover(
                config: config, endpoints: endpoints,
                budget: LocalRateBudget(rate: config.rateBudget.globalRate, burst: config.rateBudget.globalBurst), logger: logger, maxConnections: 1
            )
        } catch {
            printError(error.description)
            exitStatus.set(1)
            return
        }
        await clients.shutdown()
        let shards: Int
        switch config.shards.count {
        case .fixed(let n): shards = n
        case .auto: shards = info.shards
        }
        // The record of sessions and handled events belongs to this app on this gateway: another's inherits nothing.
        let store: ClusterStore
        do {
            store = try ClusterStore(path: config.supervisor.runDirectory + "/cluster.sqlite", platform: "\(config.app.id) \(info.url)", logger: logger)
        } catch {
            printError("\(error)")
            exitStatus.set(1)
            return
        }
        // No limit of the system may stop the launch half way.
        let (limitErrors, limitWarnings) = SystemLimits.observe(embeddedGateway: config.gateway.embedded).problems(workers: shards)
        for warning in limitWarnings { logger.warning("\(warning)") }
        guard limitErrors.isEmpty else {
            printError("cannot start \(shards) shards: " + limitErrors.joined(separator: " "))
            exitStatus.set(1)
            return
        }
        let stored = store.sessions(total: shards).count
        // Webhook mode starts no gateway session at all; several hosts count their session starts in the store.
        let needed = config.gateway.mode == .webhook || hostID != nil ? 0 : max(0, shards - stored)
        guard needed <= info.remaining else {
            printError("cannot start \(shards) shards: they need \(needed) new sessions and the platform allows \(info.remaining) more today (of \(info.total); resets in \(DurationFormat.human(info.resetAfter))). Lower shards.count or wait for the reset.")
            exitStatus.set(1)
            return
        }
        let address = "\(ProcessInfo.processInfo.hostName)\(config.http.listen.map { " http \($0)" } ?? "")"
        let setup = SupervisorSetup(
            config: config, configPath: configPath, apiBase: endpoints.apiBase, tokenURL: endpoints.tokenURL, gateway: info, shards: shards,
            hostID: hostID, hostAddress: address
        )
        let supervisor: ClusterSupervisor
        do {
            supervisor = try ClusterSupervisor(setup: setup, store: store, logger: logger)
            // Detached: not told of the graceful shutdown, they keep serving (probes, scrapes, the service
            // manager) while the workers drain, and end with the supervisor.
            let http = config.http.listen.map { address in
                Task.detached { try await StatusServer(supervisor: supervisor, address: address, logger: self.logger).run() }
            }
            // Webhook mode: the platform's POSTs come in here. Without it the cluster gets no event, so a port
            // that cannot be bound stops the launch.
            let ingress = try supervisor.webhook.map { router in
                try WebhookIngress(router: router, metrics: supervisor.metrics, config: config.webhook, secret: config.app.secret, logger: logger)
            }
            let ingressTask = ingress.map { ingress in
                Task.detached {
                    do {
                        try await ingress.run()
                    } catch {
                        printError("\(error)")
                        supervisor.stop()
                    }
                }
            }
            if let ingress, let emulator = gateway.emulator {
                // The embedded platform delivers to this ingress, as the platform's console would be told to.
                Task {
                    guard let port = try? await ingress.listening.wait() else { return }
                    emulator.setWebhook(url: ingress.localCallbackURL(port: port))
                }
            }
            let notifications = Task.detached { await supervisor.notifyServiceManager(SystemdNotifier()) }
            defer {
                ingressTask?.cancel()
                http?.cancel()
                notifications.cancel()
            }
            try await supervisor.run()
        } catch {
            printError("supervisor: \(error)")
            exitStatus.set(1)
            return
        }
        exitStatus.set(0)
    }
}
