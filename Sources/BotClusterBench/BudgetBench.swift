import ArgumentParser
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import Logging
import RateBudget
import Supervisor
import Worker

/// The cluster-wide REST budget over IPC: the grant latency of a worker holding no lease, and the permits granted
/// per second to four workers at once.
struct BudgetBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "budget", abstract: "Rate budget grant latency and throughput over IPC.")
    @Option var count = 20_000

    final class Host: IPCServerDelegate {
        let budget: BudgetService
        init(budget: BudgetService) { self.budget = budget }
        func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
            connection.send(.helloAck(supervisorPID: getpid()))
            return nil
        }
        func received(_ message: IPCMessage, on connection: IPCConnection) {
            switch message {
            case .budgetRequest(let id, let route, let count): budget.request(from: connection, id: id, route: route, count: Int(count))
            case .budgetCancel(let id): budget.cancel(from: connection, id: id)
            case .budgetReturn(let route, let count): budget.giveBack(from: connection, route: route, count: Int(count))
            default: break
            }
        }
        func closed(_ connection: IPCConnection, reason: String?) { budget.connectionClosed(connection) }
    }

    func run() async throws {
        let dir = "/tmp/botcluster-budget-bench-\(getpid())"
        try RunDirectory.prepare(dir)
        defer {
            unlink(dir + "/b.sock")
            rmdir(dir)
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let budget = BudgetService(configuration: .init(rate: 10_000_000, burst: 100_000, leaseSize: 4, leaseTTL: .seconds(1)))
        let server = IPCServer(configuration: .init(path: dir + "/b.sock"), delegate: Host(budget: budget), logger: logger)
        try await server.start()
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await budget.run() }
            func client() async throws -> IPCClient {
                let client = try await IPCClient.connect(path: dir + "/b.sock", hello: Hello(role: .worker, pid: getpid()))
                var inbound = client.inbound.makeAsyncIterator()
                _ = await inbound.next()
                return client
            }
            // Latency: lease size 1, so every acquire asks the supervisor.
            let lone = ClusterRateBudget(client: try await client(), leaseSize: 1)
            var samples: [Double] = []
            for i in 0..<(count + count / 10) {
                let start = MonotonicInstant.now()
                try await lone.acquire(route: "POST /channels/{channel_id}/messages")
                if i >= count / 10 { samples.append((MonotonicInstant.now() - start).seconds * 1e6) }
            }
            samples.sort()
            // Throughput: four workers with the configured leases, acquiring as fast as they can.
            var workers: [ClusterRateBudget] = []
            for _ in 0..<4 { workers.append(ClusterRateBudget(client: try await client(), leaseSize: 4)) }
            let perWorker = count * 5
            let start = MonotonicInstant.now()
            try await withThrowingTaskGroup(of: Void.self) { inner in
                for worker in workers {
                    inner.addTask { for _ in 0..<perWorker { try await worker.acquire(route: "r") } }
                }
                try await inner.waitForAll()
            }
            let rate = Double(perWorker * 4) / (MonotonicInstant.now() - start).seconds
            print("budget.grant.p50 \(String(format: "%.1f", samples[samples.count / 2])) us")
            print("budget.grant.p99 \(String(format: "%.1f", samples[samples.count * 99 / 100])) us")
            print("budget.permits.rate \(Int(rate)) permits/s (4 workers, leases of 4)")
            group.cancelAll()
        }
        await server.close()
    }
}
