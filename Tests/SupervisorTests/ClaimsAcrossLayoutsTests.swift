import ClusterCore
import ClusterIPC
import ClusterPostgres
import ClusterProtocol
import Foundation
import Logging
import Synchronization
import Testing
import Worker
@testable import Supervisor

/// The claims of a rescale's switch across two hosts, through a real PostgreSQL (`BOTCLUSTER_TEST_POSTGRES`): host 0
/// runs shard 1 of the old 2-shard layout, host 1 shard 1 of the new 3-shard one, and both workers receive the same
/// events. Each host is a `ClaimService` behind a real IPC socket; each worker is the worker's own `ClusterEventClaims`.
@Suite("claims across the two layouts of a rescale", .serialized, .timeLimit(.minutes(2)))
struct ClaimsAcrossLayoutsTests {
    static let quiet = Logger(label: "claims-test") { _ in SwiftLogNoOpLogHandler() }

    /// The supervisor's side of the claims, as `ClusterSupervisor` routes them.
    final class ClaimsHost: IPCServerDelegate {
        let claims: ClaimService

        init(claims: ClaimService) { self.claims = claims }

        func accept(_ hello: Hello, on connection: IPCConnection) -> String? { nil }

        func received(_ message: IPCMessage, on connection: IPCConnection) {
            switch message {
            case .claims(let id, let keys): connection.send(.claimResults(id: id, decisions: claims.claim(keys, by: connection)))
            case .claimsDone(let keys): claims.complete(keys, by: connection)
            case .claimsReleased(let keys): claims.release(keys, by: connection)
            default: break
            }
        }

        func closed(_ connection: IPCConnection, reason: String?) { claims.connectionClosed(connection) }
    }

    /// A host: its authority, its claims served on a socket, and the store task.
    struct Host {
        let authority: PostgresAuthority
        let claims: ClaimService
        /// The claims the store answered `heldElsewhere` (what the metric counts).
        let heldElsewhere: Tally
        let server: IPCServer
        let socket: String
        let tasks: [Task<Void, Never>]

        /// A worker of shard `ordinal` on this host: its claims and the task that routes the answers to them.
        func worker(ordinal: Int32) async throws -> (ClusterEventClaims, IPCClient, Task<Void, Never>) {
            let client = try await IPCClient.connect(path: socket, hello: Hello(role: .worker, ordinal: ordinal, generation: 1, pid: getpid()), supervisorPID: getpid())
            let claims = ClusterEventClaims(client: client)
            let follow = Task {
                for await message in client.inbound {
                    switch message {
                    case .claimResults(let id, let decisions): claims.deliver(id: id, decisions: decisions)
                    case .claimResolved(let key, let decision): claims.resolved(key: key, decision: decision)
                    default: break
                    }
                }
                claims.abandonAll()
            }
            return (claims, client, follow)
        }
    }

    /// A count other tasks add to.
    final class Tally: Sendable {
        let count = Mutex(0)
    }

    /// The lease a host holds for shard 1, once it took it.
    final class HeldLease: Sendable {
        let value = Mutex<(shards: Int, token: Int64)?>(nil)
    }

    static func host(_ id: Int, cluster: String, directory: String, lease: HeldLease) async throws -> Host {
        let authority = try TestPostgres.authority(cluster: cluster, logger: quiet)
        let heldElsewhere = Tally()
        let claims = ClaimService(ledger: ClaimLedger(ttl: .seconds(600)), store: .init(
            authority: authority, host: id, ttl: .seconds(600), logger: quiet, heldElsewhere: { count in heldElsewhere.count.withLock { $0 += count } }
        ))
        let socket = directory + "/host-\(id).sock"
        let server = IPCServer(configuration: .init(path: socket), delegate: ClaimsHost(claims: claims), logger: quiet)
        try await server.start()
        let pool = Task { await authority.run() }
        // Shard 1 only, of the layout this host holds it in.
        let store = Task { await claims.runStore { _, ordinal in ordinal == 1 ? lease.value.withLock { $0 } : nil } }
        return Host(authority: authority, claims: claims, heldElsewhere: heldElsewhere, server: server, socket: socket, tasks: [pool, store])
    }

    /// Waits until host's store answered that `key` is held by the other layout (its worker waits meanwhile).
    func waitUntilAskedAgain(_ host: Host, _ key: String) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !host.claims.pending.withLock({ $0.later.contains { $0.claim.key == key } }) {
            try #require(ContinuousClock.now < deadline, "\(key): not answered held elsewhere within 20 s")
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// The old layout's worker holds an event when the new layout's receives it: the new one waits, and skips it
    /// once the old one handled it; an event whose old worker dies unfinished is handled by the new one once the
    /// old lease is released, not lost.
    @Test func theNewLayoutWaitsForTheOldOnesClaimAndTakesOverWhatItLeftUnfinished() async throws {
        let directory = NSTemporaryDirectory() + "claims-" + UUID().uuidString.prefix(8)
        try RunDirectory.prepare(directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = "claims-\(UInt64.random(in: 0...UInt64.max))"
        let oldLease = HeldLease()
        let newLease = HeldLease()
        let a = try await Self.host(0, cluster: cluster, directory: directory, lease: oldLease)
        let b = try await Self.host(1, cluster: cluster, directory: directory, lease: newLease)
        defer { for task in a.tasks + b.tasks { task.cancel() } }
        try await a.authority.prepare(shards: 2)
        let old = try await a.authority.round(host: 0, address: "a", shards: 2, ttl: .seconds(30), renew: [:], release: [], sessions: [], ready: nil) { _, _ in [1] }
        let oldToken = try #require(old.acquired[1]?.token)
        oldLease.value.withLock { $0 = (2, oldToken) }
        #expect(try await a.authority.beginRescale(from: 2, to: 3, within: .seconds(60)) == nil)
        let new = try await b.authority.round(host: 1, address: "b", shards: 3, ttl: .seconds(30), renew: [:], release: [], sessions: [], ready: []) { _, _ in [1] }
        let newToken = try #require(new.acquired[1]?.token)
        newLease.value.withLock { $0 = (3, newToken) }

        let (oldWorker, oldClient, oldFollow) = try await a.worker(ordinal: 1)
        let (newWorker, newClient, newFollow) = try await b.worker(ordinal: 1)
        // Closing the clients ends their answers: a claim still waiting is abandoned, so a failure cannot hang.
        let stop = {
            oldClient.close()
            newClient.close()
            _ = await (oldFollow.value, newFollow.value)
            await a.server.close()
            await b.server.close()
        }
        do {
            // Handled by the old worker while the new one waits: skipped by the new one.
            #expect(await oldWorker.claim("e1"))
            let e1 = Task { await newWorker.claim("e1") }
            try await waitUntilAskedAgain(b, "e1")
            oldWorker.complete("e1")
            #expect(await e1.value == false)

            // Claimed by the old worker, which dies before its reply: host 0 releases the old lease (its retiring
            // layout's worker stopped), and the new worker handles the event.
            #expect(await oldWorker.claim("e2"))
            let e2 = Task { await newWorker.claim("e2") }
            try await waitUntilAskedAgain(b, "e2")
            oldClient.close()
            _ = try await a.authority.round(
                host: 0, address: "a", shards: 2, ttl: .seconds(30), renew: [:], release: [.init(shard: 1, token: oldToken, id: "", seq: 0)], sessions: [],
                ready: nil
            ) { _, _ in [] }
            #expect(await e2.value == true)
            newWorker.complete("e2")
            // Counted for the metric: at least one answer for each of the two events, none on the old layout's host.
            #expect(b.heldElsewhere.count.withLock { $0 } >= 2)
            #expect(a.heldElsewhere.count.withLock { $0 } == 0)
        } catch {
            await stop()
            throw error
        }
        await stop()
    }
}
