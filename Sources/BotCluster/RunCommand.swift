import ArgumentParser
import ClusterCore
import Logging
import QQGateway
import RateBudget
import ClusterIPC
import ClusterProtocol
import ServiceLifecycle
import UserCache
import UnixSignals
import Worker
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run one shard in this process, without a supervisor (the embedded emulator by default)."
    )

    @OptionGroup var options: CommonOptions

    @Option(name: .long, help: "The shard to run, as ID/TOTAL (0/1 for an unsharded bot).")
    var shard: String = "0/1"

    func run() async throws {
        guard let shard = ShardID(parsing: shard) else {
            printError("--shard: must be ID/TOTAL with 0 <= ID < TOTAL, got \"\(self.shard)\"")
            throw ExitCode(1)
        }
        let config = try options.loadConfig()
        let logger = makeLogger("botcluster.run", config: config)
        let gateway = ResolvedGateway.resolve(config, logger: makeLogger("emulator", config: config))
        let shardService = LoneShardService(config: config, shard: shard, gateway: gateway, handler: BotCluster.handler, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let emulator = gateway.emulator { services.append(.init(service: emulator)) }
        services.append(.init(service: shardService, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        if let status = shardService.exitStatus.current, status != 0 { throw ExitCode(status) }
    }
}

/// One shard in this process: discovers the gateway, paces its own identifies, spends its own REST budget,
/// and on graceful shutdown drains and prints where it stopped.
final class LoneShardService: Service {
    let config: ClusterConfig
    let shard: ShardID
    let gateway: ResolvedGateway
    let handler: any EventHandler
    let logger: Logger
    let exitStatus = AsyncSignal<Int32>()

    init(config: ClusterConfig, shard: ShardID, gateway: ResolvedGateway, handler: any EventHandler, logger: Logger) {
        self.config = config
        self.shard = shard
        self.gateway = gateway
        self.handler = handler
        self.logger = logger
    }

    func run() async throws {
        let endpoints = try await gateway.ready()
        let budget = LocalRateBudget(rate: config.rateBudget.globalRate, burst: config.rateBudget.globalBurst)
        let clients: PlatformClients
        do {
            clients = try PlatformClients(config: config, endpoints: endpoints, budget: budget, logger: logger)
        } catch {
            printError(error.description)
            exitStatus.set(1)
            return
        }
        let info: GatewayBotInfo
        do {
            info = try await clients.api.gatewayBot()
        } catch {
            printError("cannot reach the gateway (GET \(endpoints.apiBase)/gateway/bot): \(error)")
            exitStatus.set(1)
            await clients.shutdown()
            return
        }
        let permit = LocalIdentifyPermit(
            configuration: .init(maxConcurrency: info.maxConcurrency, window: config.effectiveIdentifyWindow, margin: config.identify.margin, slotTimeout: config.identify.slotTimeout),
            remaining: info.remaining
        )
        let users: UserDirectory?
        do {
            try RunDirectory.prepare(config.supervisor.runDirectory)
            let store = try UserStore.prepare(path: config.supervisor.runDirectory + "/users.sqlite", logger: logger)
            users = UserDirectory.make(store: store, config: config, shard: shard, api: clients.api, logger: logger) { _ in }
        } catch {
            logger.error("user cache unavailable; running without it", metadata: ["error": "\(error)"])
            users = nil
        }
        let runtime = ShardRuntime.make(
            config: config, clients: clients, gatewayURL: info.url, shard: shard, handler: handler, resume: nil,
            permit: permit, claims: LocalEventClaims(ttl: config.exactlyOnce.ttl), users: users, observer: nil, logger: logger
        )
        logger.info("running shard", metadata: ["gateway": "\(info.url)", "max_concurrency": "\(info.maxConcurrency)"])
        let outcome = await runShard(
            runtime, drainTimeout: config.worker.drainTimeout,
            onDeadline: { sessionID, seq in
                printLine("stopped shard \(self.shard): session \(sessionID ?? "none") seq \(seq); handlers still running at the drain deadline were abandoned (their events come after that seq)")
                exit(WorkerExitStatus.stopped)
            },
            beside: [{ await permit.run() }, { await users?.run() }]
        )
        // Users seen last are written if the file lets us within a second (a cache: losing them costs a lookup).
        _ = try? await withTimeout(.seconds(1), "the user cache's last write") { await users?.flush() }
        await clients.shutdown()
        let stats = outcome.stats
        let p50 = stats.dispatchLatency.percentile(0.5).map(DurationFormat.human) ?? "-"
        let p99 = stats.dispatchLatency.percentile(0.99).map(DurationFormat.human) ?? "-"
        printLine("stopped shard \(shard): session \(outcome.sessionID ?? "none") seq \(outcome.committedSeq); received \(stats.received), handled \(stats.handled), duplicates skipped \(stats.duplicatesSkipped), handler errors \(stats.handlerErrors), reconnects \(stats.reconnects); dispatch latency p50 \(p50) p99 \(p99)")
        switch outcome.gateway {
        case .stopped: break
        case .failed(.configuration(let code)):
            printError("shard \(shard): the gateway refused the configuration (close \(code)); fix cluster.json, restarting cannot help")
        case .failed(.reshardRequired):
            printError("shard \(shard): too many guilds for \(shard.total) shards (close 4011); run with more shards")
        case .failed(.stopped(let code)):
            printError("shard \(shard): the bot is delisted or banned (close \(code))")
        }
        exitStatus.set(WorkerExitStatus.of(outcome.gateway))
    }
}
