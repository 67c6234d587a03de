import ArgumentParser
import CBotSystem
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Logging
import QQGateway
import RateBudget
import ServiceLifecycle
import Supervisor
import UserCache
import UnixSignals
import Worker
#if canImport(Glibc)
import Glibc
#endif

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run one shard under a supervisor (started by botcluster launch, not by hand).",
        shouldDisplay: false
    )

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let environment = processEnvironment()
        guard let socket = environment[WorkerEnvironment.socket], let ordinal = environment[WorkerEnvironment.ordinal].flatMap(Int32.init),
            let generation = environment[WorkerEnvironment.generation].flatMap(UInt64.init),
            let supervisorPID = environment[WorkerEnvironment.supervisorPID].flatMap(Int32.init)
        else {
            printError("botcluster worker is started by botcluster launch; to run one shard by hand use botcluster run --shard ID/TOTAL")
            throw ExitCode(2)
        }
        // No orphans: die with the supervisor, and make sure it had not died already.
        _ = cbot_set_parent_death_signal(SIGKILL)
        guard getppid() == supervisorPID else {
            printError("the supervisor (pid \(supervisorPID)) is gone; exiting")
            throw ExitCode(WorkerExitStatus.orphaned)
        }
        let config = try options.loadConfig()
        var logger = makeLogger("botcluster.worker", config: config)
        logger[metadataKey: "worker.ordinal"] = "\(ordinal)"

        let client: IPCClient
        let assignment: Assignment
        do {
            client = try await IPCClient.connect(path: socket, hello: Hello(role: .worker, ordinal: ordinal, generation: generation, pid: getpid()), supervisorPID: supervisorPID)
            var inbound = client.inbound.makeAsyncIterator()
            switch await inbound.next() {
            case .welcome(let welcome): assignment = welcome
            case .refused(let reason):
                printError("the supervisor refused this worker: \(reason)")
                throw ExitCode(WorkerExitStatus.orphaned)
            default:
                printError("no welcome from the supervisor")
                throw ExitCode(WorkerExitStatus.orphaned)
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("cannot reach the supervisor at \(socket): \(error)")
            throw ExitCode(WorkerExitStatus.orphaned)
        }
        let service = ClusterWorkerService(config: config, client: client, assignment: assignment, handler: BotCluster.handler, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
        ))
        try await group.run()
        throw ExitCode(service.exitStatus.current ?? 0)
    }
}

/// One shard under the supervisor: identify slots and session hand-off over IPC, heartbeats with progress, drain
/// on SIGTERM or a stop message, exit at once when the supervisor's socket closes.
final class ClusterWorkerService: Service {
    let config: ClusterConfig
    let client: IPCClient
    let assignment: Assignment
    let handler: any EventHandler
    let logger: Logger
    let exitStatus = AsyncSignal<Int32>()

    init(config: ClusterConfig, client: IPCClient, assignment: Assignment, handler: any EventHandler, logger: Logger) {
        self.config = config
        self.client = client
        self.assignment = assignment
        self.handler = handler
        var logger = logger
        logger[metadataKey: "shard.id"] = "\(assignment.shard)/\(assignment.total)"
        self.logger = logger
    }

    func run() async throws {
        let shard = ShardID(Int(assignment.shard), of: Int(assignment.total))
        let link = SupervisorLink(client: client)
        let budget = ClusterRateBudget(client: client, leaseSize: config.rateBudget.leaseSize)
        let clients: PlatformClients
        do {
            clients = try PlatformClients(config: config, endpoints: GatewayEndpoints(apiBase: assignment.apiBase, tokenURL: assignment.tokenURL), budget: budget, logger: logger)
        } catch {
            logger.error("cannot set up the platform client", metadata: ["error": "\(error)"])
            exitStatus.set(1)
            return
        }
        let users: UserDirectory?
        do {
            let store = try UserStore.open(path: config.supervisor.runDirectory + "/users.sqlite")
            users = UserDirectory.make(store: store, config: config, shard: shard, api: clients.api, logger: logger) { [client] ids in
                client.send(.usersChanged(ids: ids))
            }
        } catch {
            logger.error("user cache unavailable; running without it", metadata: ["error": "\(error)"])
            users = nil
        }
        let resume = assignment.resumeSessionID.map { (id: $0, seq: Int(assignment.resumeSeq)) }
        let claims = ClusterEventClaims(client: client)
        let runtime = ShardRuntime.make(
            config: config, clients: clients, gatewayURL: assignment.gatewayURL, shard: shard, handler: handler, resume: resume,
            permit: link, claims: claims, users: users, observer: link, logger: logger, holdDispatch: assignment.holdDispatch
        )
        let outcome = await runShard(runtime, drainTimeout: config.worker.drainTimeout, onStop: { link.gatewayState = .draining }, onDeadline: { sessionID, seq in
            self.logger.warning("handlers still running at the drain deadline were abandoned; exiting", metadata: ["session.seq": "\(seq)"])
            _ = try? await self.client.sendFlushed(.drained(sessionID: sessionID, seq: Int64(seq)), within: .milliseconds(500))
            exit(WorkerExitStatus.stopped)
        }, beside: [
            {
                // Heartbeats with progress; session reports as the committed seq moves.
                var nextHeartbeat = MonotonicInstant.now()
                while !Task.isCancelled {
                    let now = MonotonicInstant.now()
                    if now >= nextHeartbeat {
                        link.sendHeartbeat(runtime.stats)
                        nextHeartbeat = now + self.config.supervisor.heartbeatInterval
                    }
                    runtime.reportSession()
                    try? await Task.sleep(for: min(self.config.worker.reportInterval, self.config.supervisor.heartbeatInterval))
                }
            },
            { await users?.run() },
            {
                for await message in self.client.inbound {
                    switch message {
                    case .stop:
                        link.gatewayState = .draining
                        runtime.stop()
                    case .budgetPause(let route, let ms):
                        budget.pause(route: route, for: .milliseconds(Int64(ms)))
                    case .usersInvalidate(let ids):
                        users?.invalidate(ids)
                    case .userQuery(let id, let userID):
                        let user = await users?.get(userID)
                        self.client.send(.userAnswer(id: id, username: user?.username))
                    case .claimResults(let id, let decisions):
                        claims.deliver(id: id, decisions: decisions)
                    case .claimResolved(let key, let decision):
                        claims.resolved(key: key, decision: decision)
                    case .startDispatch:
                        self.logger.info("switch: handling events")
                        runtime.startDispatch()
                    case .finishDispatch:
                        // Not on this loop: the claims' answers come through it.
                        Task {
                            await runtime.finishDispatch()
                            self.logger.info("retiring: everything received is handled")
                            self.client.send(.dispatchFinished)
                        }
                    default:
                        break
                    }
                }
                // The supervisor's socket closed: it is gone, and so is this worker (no orphan answers twice).
                claims.abandonAll()
                if !Task.isCancelled && link.gatewayState != .draining {
                    self.logger.error("the supervisor connection closed; exiting")
                    exit(WorkerExitStatus.orphaned)
                }
            },
        ])
        _ = try? await withTimeout(.seconds(1), "the user cache's last write") { await users?.flush() }
        budget.returnUnused()
        await clients.shutdown()
        client.send(.drained(sessionID: outcome.sessionID, seq: Int64(outcome.committedSeq)))
        logger.info("worker stopped", metadata: ["session.seq": "\(outcome.committedSeq)", "handled": "\(outcome.stats.handled)"])
        exitStatus.set(WorkerExitStatus.of(outcome.gateway))
        client.close()
    }
}
