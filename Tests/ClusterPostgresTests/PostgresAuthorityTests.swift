import ClusterCore
@testable import ClusterPostgres
import Foundation
import Logging
import Testing

/// Against a real PostgreSQL: `BOTCLUSTER_TEST_POSTGRES` (scripts/postgres.sh starts one; scripts/test.sh and CI do
/// it for you). Each test is a cluster of its own (a random app id) in the shared database.
@Suite("PostgreSQL as the authority", .serialized)
struct PostgresAuthorityTests {
    static func authority(cluster: String, timeout: Duration = .seconds(15), database: String? = nil) throws -> PostgresAuthority {
        guard let url = ProcessInfo.processInfo.environment["BOTCLUSTER_TEST_POSTGRES"] else {
            Issue.record("BOTCLUSTER_TEST_POSTGRES is not set: start a server with eval \"$(bash scripts/postgres.sh start)\"")
            throw CancellationError()
        }
        let parsed = try PostgresStoreConfig.parseURL(url).get()
        let config = PostgresStoreConfig(
            host: parsed.host, port: parsed.port, user: parsed.user, password: nil, database: database ?? parsed.database, tls: false, trustRoots: nil,
            leaseTTL: .seconds(10), renewInterval: .seconds(2), fenceMargin: .seconds(2), timeout: timeout
        )
        return try PostgresAuthority(config: config, cluster: cluster, logger: Logger(label: "test"))
    }

    /// Runs one statement on the test server with psql (what an operator's hand, or a damaged disk, could do to a row).
    static func execute(_ a: PostgresAuthority, _ statement: String) async throws {
        let url = try #require(ProcessInfo.processInfo.environment["BOTCLUSTER_TEST_POSTGRES"])
        let psql = Process()
        psql.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        psql.arguments = ["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", statement]
        let exited = AsyncSignal<Int32>()
        psql.terminationHandler = { exited.set($0.terminationStatus) }
        try psql.run()
        do {
            let status = try await withTimeout(.seconds(30), "psql") { try await exited.wait() }
            try #require(status == 0, "psql: \(statement)")
        } catch let timeout as TimeoutError {
            psql.terminate()
            throw timeout
        }
    }

    /// Runs `body` with an authority whose pool runs beside it.
    func withAuthority(shards: Int = 4, _ body: (PostgresAuthority) async throws -> Void) async throws {
        let authority = try Self.authority(cluster: "test-\(UInt64.random(in: 0...UInt64.max))")
        let pool = Task { await authority.run() }
        defer { pool.cancel() }
        try await authority.prepare(shards: shards)
        try await body(authority)
    }

    func round(
        _ a: PostgresAuthority, host: Int, ttl: Duration = .seconds(10), renew: [Int: Int64] = [:], release: [PostgresAuthority.SessionWrite] = [],
        sessions: [PostgresAuthority.SessionWrite] = [], take: [Int] = []
    ) async throws -> PostgresAuthority.Round {
        try await a.round(host: host, address: "host-\(host)", shards: 4, ttl: ttl, renew: renew, release: release, sessions: sessions) { _, holders in
            take.filter { holders[$0] == nil }
        }
    }

    @Test func oneHolderPerShardAndTheTokenFencesEveryWrite() async throws {
        try await withAuthority { a in
            let first = try await round(a, host: 0, take: [0, 1])
            #expect(Set(first.acquired.keys) == [0, 1])
            #expect(first.hosts == [0: "host-0"])
            let t0 = try #require(first.acquired[0]?.token)
            // Host 1 sees them held, and cannot take them even when it asks for them directly.
            let second = try await a.round(host: 1, address: "host-1", shards: 4, ttl: .seconds(10), renew: [:], release: [], sessions: []) { _, _ in [0, 2] }
            #expect(Set(second.acquired.keys) == [2])
            #expect(second.holders[0] == 0 && second.holders[2] == 1 && Set(second.hosts.keys) == [0, 1])
            // A session written under the right token is stored; under a wrong one (or another host) it is not.
            _ = try await round(a, host: 0, renew: [0: t0], sessions: [.init(shard: 0, token: t0, id: "good", seq: 5)])
            _ = try await round(a, host: 0, renew: [0: t0], sessions: [.init(shard: 0, token: t0 + 1, id: "forged", seq: 99)])
            _ = try await round(a, host: 1, sessions: [.init(shard: 0, token: t0, id: "other-host", seq: 7)])
            // Released with its last session: the next holder gets it at once, with a newer token.
            let released = try await round(a, host: 0, renew: [0: t0], release: [.init(shard: 0, token: t0, id: "good", seq: 6)])
            #expect(released.released == [0])
            let taken = try await round(a, host: 1, take: [0])
            let lease = try #require(taken.acquired[0])
            #expect(lease.token > t0)
            #expect(lease.session?.id == "good" && lease.session?.seq == 6)
            // The old holder's token renews nothing now.
            #expect(try await round(a, host: 0, renew: [0: t0]).renewed.isEmpty)
        }
    }

    @Test func anUnrenewedLeaseExpiresOnTheDatabasesClockAndIsTakenOverWithItsSession() async throws {
        try await withAuthority { a in
            let first = try await round(a, host: 0, ttl: .seconds(2), take: [3])
            let t0 = try #require(first.acquired[3]?.token)
            _ = try await round(a, host: 0, ttl: .seconds(2), renew: [3: t0], sessions: [.init(shard: 3, token: t0, id: "s", seq: 41)])
            #expect(try await round(a, host: 1, take: [3]).acquired.isEmpty)
            // Host 0 stops renewing: its lease (and heartbeat) expire, and host 1 takes the shard with its session.
            var taken: (token: Int64, session: (id: String, seq: Int)?)?
            let deadline = ContinuousClock.now + .seconds(10)
            while taken == nil && ContinuousClock.now < deadline {
                let r = try await round(a, host: 1, take: [3])
                taken = r.acquired[3]
                if taken == nil { try await Task.sleep(for: .milliseconds(50)) } else { #expect(r.hosts.keys.sorted() == [1]) }
            }
            let lease = try #require(taken)
            #expect(lease.token == t0 + 1 && lease.session?.id == "s" && lease.session?.seq == 41)
            // Too late for host 0: its renewal is refused.
            #expect(try await round(a, host: 0, renew: [3: t0]).renewed.isEmpty)
        }
    }

    /// A layout round of `shards` shards: takes `take` when free, reports `ready` (a rescale's new layout) and
    /// `fenced` (the serving layout).
    func layoutRound(
        _ a: PostgresAuthority, host: Int, shards: Int, ttl: Duration = .seconds(10), renew: [Int: Int64] = [:],
        release: [PostgresAuthority.SessionWrite] = [], take: [Int] = [], ready: Set<Int>? = nil, fenced: Set<Int>? = nil
    ) async throws -> PostgresAuthority.Round {
        try await a.round(
            host: host, address: "host-\(host)", shards: shards, ttl: ttl, renew: renew, release: release, sessions: [], ready: ready, fenced: fenced
        ) { _, holders in
            take.filter { holders[$0] == nil }
        }
    }

    /// A rescale across hosts in the store: begun once, the new layout's leases taken and reported ready by two
    /// hosts, the switch only when every one is held and ready and every serving lease is past its fence, the old
    /// layout's claims never taken over by the new one's, and the old rows forgotten once no host holds one.
    @Test func aRescaleSwitchesOnlyWhenEveryNewLeaseIsHeldAndReadyAndEveryServingOneFenced() async throws {
        try await withAuthority(shards: 2) { a in
            let old = try await layoutRound(a, host: 0, shards: 2, take: [0, 1])
            #expect(old.layout == .init(shards: 2, next: nil))
            let t1 = try #require(old.acquired[1]?.token)
            #expect(try await a.claim([.init(key: "k", shard: 1, shards: 2, token: t1), .init(key: "j", shard: 1, shards: 2, token: t1)], host: 0).granted == ["k", "j"])
            // Another shard of the same layout is not told to wait for it: it skips.
            let t0 = try #require(old.acquired[0]?.token)
            #expect(try await a.claim([.init(key: "k", shard: 0, shards: 2, token: t0)], host: 0) == .init())
            #expect(try await a.beginRescale(from: 3, to: 4, within: .seconds(30)) == "the cluster runs 2 shards now, not 3")
            #expect(try await a.beginRescale(from: 2, to: 3, within: .seconds(30)) == nil)
            #expect(try await a.beginRescale(from: 2, to: 4, within: .seconds(30)) == "a rescale to 3 shards is under way")
            // Host 0 takes two new shards and both are ready; host 1 takes the third, not ready yet: no switch.
            let a0 = try await layoutRound(a, host: 0, shards: 3, take: [0, 1], ready: [])
            #expect(Set(a0.acquired.keys) == [0, 1] && a0.layout == .init(shards: 2, next: 3))
            let n1 = try #require(a0.acquired[1]?.token)
            #expect(try await layoutRound(a, host: 0, shards: 3, renew: a0.acquired.mapValues(\.token), ready: [0, 1]).layout.next == 3)
            let b0 = try await layoutRound(a, host: 1, shards: 3, take: [2], ready: [])
            #expect(b0.layout == .init(shards: 2, next: 3))
            // The new layout's shard 1 cannot take over the old one's claims of the same events (same shard number,
            // another layout), though its token is not older: it is told to ask again. Once the old worker has
            // handled one, the new one skips it.
            let j = PostgresAuthority.Claim(key: "j", shard: 1, shards: 3, token: n1)
            #expect(try await a.claim([.init(key: "k", shard: 1, shards: 3, token: max(n1, t1)), j], host: 0) == .init(heldElsewhere: ["k", "j"]))
            #expect(try await a.claim([j], completing: ["j"], host: 0) == .init())
            // A host that holds no lease of the new shard is not told to ask again: the holder decides.
            #expect(try await a.claim([.init(key: "k", shard: 2, shards: 3, token: n1)], host: 0) == .init())
            // Every new lease held and ready: the serving workers are to pass the fence, and the switch waits for it.
            let allReady = try await layoutRound(a, host: 1, shards: 3, renew: b0.acquired.mapValues(\.token), ready: [2])
            #expect(allReady.layout == .init(shards: 2, next: 3, nextReady: true))
            _ = try await layoutRound(a, host: 0, shards: 2, renew: old.acquired.mapValues(\.token), fenced: [0])
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: b0.acquired.mapValues(\.token), ready: [2]).layout == allReady.layout)
            // Every serving lease past its fence, but a new worker restarts (not ready): the fences are forgotten, for
            // what the serving layout receives until it is ready again reaches the serving layout alone.
            _ = try await layoutRound(a, host: 0, shards: 2, renew: old.acquired.mapValues(\.token), fenced: [0, 1])
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: b0.acquired.mapValues(\.token), ready: []).layout == .init(shards: 2, next: 3))
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: b0.acquired.mapValues(\.token), ready: [2]).layout == allReady.layout)
            // The last serving lease past its fence again: the next round that reports the new layout switches it.
            _ = try await layoutRound(a, host: 0, shards: 2, renew: old.acquired.mapValues(\.token), fenced: [0, 1])
            let switched = try await layoutRound(a, host: 1, shards: 3, renew: b0.acquired.mapValues(\.token), ready: [2])
            #expect(switched.layout == .init(shards: 3, next: nil))
            // The old layout is still held: its rows stay until released, then go.
            try await a.forgetLayout(shards: 2)
            #expect(try await layoutRound(a, host: 0, shards: 2, renew: old.acquired.mapValues(\.token)).renewed == [0, 1])
            _ = try await layoutRound(a, host: 0, shards: 2, release: old.acquired.map { .init(shard: $0.key, token: $0.value.token, id: "", seq: 0) })
            // The old layout's unfinished claim of k is no longer under a current lease: the new layout takes it over.
            #expect(try await a.claim([.init(key: "k", shard: 1, shards: 3, token: n1)], host: 0).granted == ["k"])
            try await a.forgetLayout(shards: 2)
            #expect(try await layoutRound(a, host: 0, shards: 2, take: [0]).acquired.isEmpty)
            // A rescale's target is never forgotten, even while no lease of it is held yet.
            #expect(try await a.beginRescale(from: 3, to: 5, within: .seconds(30)) == nil)
            try await a.forgetLayout(shards: 5)
            #expect(try await layoutRound(a, host: 0, shards: 5, take: [4], ready: []).acquired.keys.sorted() == [4])
            // A later host joins the serving layout (and the rescale under way), whatever its configuration says.
            #expect(try await a.prepare(shards: 2) == .init(shards: 3, next: 5))
        }
    }

    /// A serving lease whose host died after its fence is taken over unfenced (its new worker resumes and must
    /// pass the fence again), and a new rescale starts with no serving lease fenced.
    @Test func aServingLeaseTakenOverOrANewRescaleStartsUnfenced() async throws {
        try await withAuthority(shards: 2) { a in
            let old = try await layoutRound(a, host: 0, shards: 2, ttl: .milliseconds(500), take: [0, 1])
            #expect(try await a.beginRescale(from: 2, to: 3, within: .seconds(30)) == nil)
            let new = try await layoutRound(a, host: 1, shards: 3, take: [0, 1, 2], ready: [0, 1, 2])
            #expect(new.layout == .init(shards: 2, next: 3, nextReady: true))
            _ = try await layoutRound(a, host: 0, shards: 2, ttl: .milliseconds(500), renew: old.acquired.mapValues(\.token), fenced: [0, 1])
            // Host 0 dies; host 1 takes its serving leases over when they expire.
            var taken: [Int: (token: Int64, session: (id: String, seq: Int)?)] = [:]
            let deadline = ContinuousClock.now + .seconds(10)
            while taken.count < 2, ContinuousClock.now < deadline {
                taken.merge(try await layoutRound(a, host: 1, shards: 2, take: [0, 1]).acquired) { $1 }
                if taken.count < 2 { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(taken.keys.sorted() == [0, 1])
            let renew = taken.mapValues(\.token)
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: new.acquired.mapValues(\.token), ready: [0, 1, 2]).layout.next == 3)
            // Given up and begun again: the fence of the rescale given up does not count for the new one.
            _ = try await layoutRound(a, host: 1, shards: 2, renew: renew, fenced: [0, 1])
            try await a.cancelRescale(to: 3)
            _ = try await layoutRound(a, host: 1, shards: 3, release: new.acquired.map { .init(shard: $0.key, token: $0.value.token, id: "", seq: 0) })
            #expect(try await a.beginRescale(from: 2, to: 3, within: .seconds(30)) == nil)
            let again = try await layoutRound(a, host: 1, shards: 3, take: [0, 1, 2], ready: [0, 1, 2])
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: again.acquired.mapValues(\.token), ready: [0, 1, 2]).layout.next == 3)
            _ = try await layoutRound(a, host: 1, shards: 2, renew: renew, fenced: [0, 1])
            #expect(try await layoutRound(a, host: 1, shards: 3, renew: again.acquired.mapValues(\.token), ready: [0, 1, 2]).layout == .init(shards: 3, next: nil))
        }
    }

    /// Every host follows the cluster's row: one that is gone or names no layout a cluster can run fails the round
    /// (and the join), with what is wrong, instead of being followed.
    @Test func aDamagedLayoutRowFailsTheRoundAndIsNamed() async throws {
        try await withAuthority(shards: 2) { a in
            _ = try await layoutRound(a, host: 0, shards: 2)
            try await Self.execute(a, "UPDATE botcluster_clusters SET next_shards = 0 WHERE cluster = '\(a.cluster)'")
            await #expect { _ = try await layoutRound(a, host: 0, shards: 2) } throws: { error in
                "\(error)".contains("next_shards 0")
            }
            try await Self.execute(a, "DELETE FROM botcluster_clusters WHERE cluster = '\(a.cluster)'")
            await #expect { _ = try await layoutRound(a, host: 0, shards: 2) } throws: { error in
                "\(error)".contains("row in botcluster_clusters is gone")
            }
        }
    }

    /// A rescale not carried through by its deadline is given up by the next round of any host; one given up by a
    /// host (its new worker failed) at once.
    @Test func aRescalePastItsDeadlineOrCancelledIsGivenUp() async throws {
        try await withAuthority(shards: 2) { a in
            _ = try await layoutRound(a, host: 0, shards: 2, take: [0, 1])
            #expect(try await a.beginRescale(from: 2, to: 3, within: .milliseconds(200)) == nil)
            let taken = try await layoutRound(a, host: 0, shards: 3, take: [0, 1, 2], ready: [])
            var layout = taken.layout
            let deadline = ContinuousClock.now + .seconds(10)
            while layout.next != nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                layout = try await layoutRound(a, host: 1, shards: 2).layout
            }
            #expect(layout == .init(shards: 2, next: nil))
            // Every new shard reported ready too late switches nothing.
            let late = try await layoutRound(a, host: 0, shards: 3, renew: taken.acquired.mapValues(\.token), ready: [0, 1, 2])
            #expect(late.renewed == [0, 1, 2] && late.layout == .init(shards: 2, next: nil))
            _ = try await layoutRound(a, host: 0, shards: 3, release: taken.acquired.map { .init(shard: $0.key, token: $0.value.token, id: "", seq: 0) })
            #expect(try await a.beginRescale(from: 2, to: 4, within: .seconds(30)) == nil)
            try await a.cancelRescale(to: 4)
            #expect(try await layoutRound(a, host: 1, shards: 2).layout == .init(shards: 2, next: nil))
        }
    }

    @Test func aClaimNeedsACurrentLeaseAndAnEventIsHandledOnce() async throws {
        try await withAuthority { a in
            let t = try #require(try await round(a, host: 0, ttl: .seconds(2), take: [1]).acquired[1]?.token)
            #expect(try await a.claim([.init(key: "e1", shard: 1, shards: 4, token: t), .init(key: "e2", shard: 1, shards: 4, token: t)], host: 0).granted == ["e1", "e2"])
            // A claim under a token that is not the lease's, or by a host that holds none, is refused.
            #expect(try await a.claim([.init(key: "e3", shard: 1, shards: 4, token: t + 5)], host: 0) == .init())
            #expect(try await a.claim([.init(key: "e3", shard: 1, shards: 4, token: t)], host: 1) == .init())
            // The record of e1 goes with the next claim, in one transaction; a key done there is not claimed again.
            #expect(try await a.claim([.init(key: "e5", shard: 1, shards: 4, token: t)], completing: ["e1"], host: 0).granted == ["e5"])
            #expect(try await a.claim([.init(key: "e1", shard: 1, shards: 4, token: t)], host: 0) == .init())
            #expect(try await a.claim([], completing: ["e5"], host: 0).granted.isEmpty)
            // Host 0 dies mid-handler for e2. Host 1 takes the shard over after expiry: e1 is handled, e2 is its own.
            var token: Int64?
            let deadline = ContinuousClock.now + .seconds(10)
            while token == nil && ContinuousClock.now < deadline {
                token = try await round(a, host: 1, take: [1]).acquired[1]?.token
                if token == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            let t1 = try #require(token)
            #expect(try await a.claim([.init(key: "e1", shard: 1, shards: 4, token: t1), .init(key: "e2", shard: 1, shards: 4, token: t1), .init(key: "e5", shard: 1, shards: 4, token: t1)], host: 1).granted == ["e2"])
            // The old holder can no longer claim anything, not even what it had begun.
            #expect(try await a.claim([.init(key: "e2", shard: 1, shards: 4, token: t), .init(key: "e4", shard: 1, shards: 4, token: t)], host: 0) == .init())
            try await a.expireClaims(olderThan: .seconds(600))
            #expect(try await a.claim([.init(key: "e1", shard: 1, shards: 4, token: t1)], host: 1).granted.isEmpty)
        }
    }

    @Test func identifySlotsAreSpacedClusterWideAndTheDaysStartsCounted() async throws {
        try await withAuthority { a in
            try await a.setSessionStarts(remaining: 2, resetAfter: .seconds(3600))
            // A host's older, higher count does not give back what the cluster spent within the day.
            try await a.setSessionStarts(remaining: 1000, resetAfter: .seconds(3600))
            let spacing = Duration.seconds(5)
            #expect(try await a.reserveIdentify(bucket: 0, holder: "h0/1", spacing: spacing, slotTimeout: .seconds(10)) == .granted)
            // Held: another host waits (at most the slot timeout plus the spacing), any bucket is independent.
            guard case .wait(let held) = try await a.reserveIdentify(bucket: 0, holder: "h1/1", spacing: spacing, slotTimeout: .seconds(10)) else {
                Issue.record("a held bucket was granted again"); return
            }
            #expect(held > .seconds(14) && held <= .seconds(15) + .milliseconds(1))
            // The Identify left: the next one of the bucket is one spacing away.
            try await a.identifyDone(bucket: 0, holder: "h0/1", spacing: spacing)
            guard case .wait(let next) = try await a.reserveIdentify(bucket: 0, holder: "h1/1", spacing: spacing, slotTimeout: .seconds(10)) else {
                Issue.record("a bucket was granted within its spacing"); return
            }
            #expect(next > .seconds(4) && next <= .seconds(5) + .milliseconds(1))
            #expect(try await a.reserveIdentify(bucket: 1, holder: "h1/2", spacing: spacing, slotTimeout: .seconds(10)) == .granted)
            // Two starts were left and both are taken: the day is spent, for every host.
            #expect(try await a.reserveIdentify(bucket: 2, holder: "h2/1", spacing: spacing, slotTimeout: .seconds(10)) == .spent)
        }
    }

    @Test func anUnreachableServerFailsWithinTheDeadlineAndNamesNoPassword() async throws {
        // A port nothing listens on: the operation fails within its deadline with an error, never hangs.
        var config = PostgresStoreConfig(
            host: "127.0.0.1", port: 1, user: "bot", password: Secret("pw-never-shown"), database: "x", tls: false, trustRoots: nil,
            leaseTTL: .seconds(10), renewInterval: .seconds(2), fenceMargin: .seconds(2), timeout: .milliseconds(500)
        )
        config.port = 1
        let a = try PostgresAuthority(config: config, cluster: "unreachable", logger: Logger(label: "test"))
        let pool = Task { await a.run() }
        defer { pool.cancel() }
        let started = ContinuousClock.now
        do {
            try await a.prepare(shards: 1)
            Issue.record("a server that is not there answered")
        } catch {
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(!String(describing: error).contains("pw-never-shown"))
        }
    }

    /// A 429 on one host is written with its round; every host's next round reads the route paused, with the time
    /// left; a shorter pause never shortens a longer one.
    @Test func aRoutePausedOnOneHostIsReadByEvery() async throws {
        try await withAuthority { a in
            let route = "POST /v2/groups/{group_openid}/messages"
            _ = try await a.round(host: 0, address: "host-0", shards: 4, ttl: .seconds(10), renew: [:], release: [], sessions: [],
                                  pauses: [.init(route: route, seconds: 5)]) { _, _ in [] }
            let seen = try await round(a, host: 1)
            let left = try #require(seen.pauses[route])
            #expect(left > 3 && left <= 5)
            _ = try await a.round(host: 2, address: "host-2", shards: 4, ttl: .seconds(10), renew: [:], release: [], sessions: [],
                                  pauses: [.init(route: route, seconds: 1)]) { _, _ in [] }
            #expect(try await round(a, host: 1).pauses[route].map { $0 > 3 } == true)
            #expect(try await round(a, host: 1).pauses.count == 1)
        }
    }

    /// A server that turns the connection away (here: no such database; alike for an authentication failure or a
    /// pg_hba.conf rule): the calls end at their deadline and say what the server said, not only "no answer".
    @Test func aServerThatRefusesTheConnectionIsNamedInTheError() async throws {
        let a = try Self.authority(cluster: "refused", timeout: .seconds(2), database: "no_such_database_here")
        let pool = Task { await a.run() }
        defer { pool.cancel() }
        var seen = ""
        // The first call may end before the first attempt failed; the pool tries again at once.
        for _ in 0..<5 where !seen.contains("does not exist") {
            do {
                try await a.prepare(shards: 1)
                Issue.record("a database that does not exist answered")
                return
            } catch {
                seen = String(describing: error)
            }
        }
        #expect(seen.contains(#"database "no_such_database_here" does not exist"#), "\(seen)")
    }

    /// What one host publishes wakes every listening host of its cluster, and every other host reads it in order,
    /// page by page; a host's own publications and another cluster's are not its to read.
    @Test func usersPublishedOnOneHostAreReadByTheOthersInOrder() async throws {
        try await withAuthority { a in
            let other = try Self.authority(cluster: "other-\(UInt64.random(in: 0...UInt64.max))")
            let otherPool = Task { await other.run() }
            defer { otherPool.cancel() }
            let (wakes, sink) = AsyncStream<Void>.makeStream()
            let listener = Task { try await a.listenUserChanges(keepalive: .seconds(60)) { sink.yield() } }
            var iterator = wakes.makeAsyncIterator()
            #expect(await iterator.next() != nil, "woken once it listens")
            try await a.publishUserChanges(["[1]", "[2]"], host: 0)
            #expect(await iterator.next() != nil, "woken by the publication")
            try await a.publishUserChanges(["[mine]"], host: 1)
            try await other.publishUserChanges(["[theirs]"], host: 0)
            try await a.publishUserChanges(["[3]"], host: 2)
            listener.cancel()
            await #expect(throws: (any Error).self) { try await listener.value }
            // Host 1 reads the others' texts, and its own publication only as a place (no text).
            let all = try await a.userChanges(after: .start, host: 1, limit: 10).changes
            #expect(all.map(\.payload) == ["[1]", "[2]", nil, "[3]"])
            #expect(all.map(\.own) == [false, false, true, false])
            #expect(all.map(\.cursor) == all.map(\.cursor).sorted())
            let first = try await a.userChanges(after: .start, host: 1, limit: 2).changes
            #expect(first.map(\.payload) == ["[1]", "[2]"])
            #expect(try await a.userChanges(after: first[1].cursor, host: 1, limit: 2).changes.map(\.payload) == [nil, "[3]"])
            #expect(try await a.userChanges(after: .start, host: 0, limit: 10).changes.compactMap(\.payload) == ["[mine]", "[3]"])
            #expect(try await a.userChanges(after: .start, host: 1, limit: 10).pruned == 0)
            // Forgotten in batches; the newest transaction forgotten is kept, for readers left behind it.
            #expect(try await a.pruneUserChanges(olderThan: .zero, batch: 2) == 2)
            #expect(try await a.pruneUserChanges(olderThan: .zero, batch: 2) == 2)
            let pruned = try await a.userChanges(after: .start, host: 1, limit: 10)
            #expect(pruned.changes.isEmpty && pruned.pruned == all[3].cursor.transaction)
            #expect(pruned.horizon > pruned.pruned)
            #expect(try await other.userChanges(after: .start, host: 1, limit: 10).changes.map(\.payload) == ["[theirs]"])
        }
    }

    /// A publication whose transaction is still open holds every later one back (even those committed before it):
    /// once it commits, a reader gets both, the earlier transaction first, and never skips the late one.
    @Test func aPublicationCommittedLateIsNeverSkipped() async throws {
        try await withAuthority { a in
            let b = try Self.authority(cluster: a.cluster)
            let bPool = Task { await b.run() }
            defer { bPool.cancel() }
            let (inserted, insertedSink) = AsyncStream<Void>.makeStream()
            let (release, releaseSink) = AsyncStream<Void>.makeStream()
            let slow = Task {
                try await a.transaction("a slow publication") { connection in
                    try await connection.query(
                        """
                        INSERT INTO botcluster_user_publications (cluster, xact, at, host, payload)
                        VALUES (\(a.cluster), pg_current_xact_id()::text::bigint, now(), 0, '[slow]')
                        """, logger: PostgresAuthority.quiet)
                    insertedSink.yield()
                    var wait = release.makeAsyncIterator()
                    _ = await wait.next()
                }
            }
            var insertedIterator = inserted.makeAsyncIterator()
            _ = await insertedIterator.next()
            try await b.publishUserChanges(["[fast]"], host: 2)
            let held = try await b.userChanges(after: .start, host: 1, limit: 10)
            #expect(held.changes.isEmpty && held.heldBack, "held back by the open transaction")
            releaseSink.yield()
            try await slow.value
            let read = try await b.userChanges(after: .start, host: 1, limit: 10)
            #expect(read.changes.map(\.payload) == ["[slow]", "[fast]"] && !read.heldBack)
        }
    }
}
