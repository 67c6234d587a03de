import ClusterCore
import ClusterProtocol
import Supervisor
import Testing

@Suite("shard placement")
struct ShardPlacementTests {
    @Test func everyLiveHostGetsItsOwnRange() {
        #expect(ShardPlacement.assignment(shards: 6, liveHosts: [0, 1, 2]) == [0, 0, 1, 1, 2, 2])
        #expect(ShardPlacement.assignment(shards: 7, liveHosts: [0, 1, 2]) == [0, 0, 0, 1, 1, 2, 2])
        #expect(ShardPlacement.assignment(shards: 4, liveHosts: []) == [])
    }

    @Test func aMissingHostsRangeIsSpreadOverTheLiveOnesAndNothingElseMoves() {
        // Host 1 is down: its range (2, 3) goes to 0 and 2 in turn; 0's and 2's own ranges stay where they were.
        #expect(ShardPlacement.assignment(shards: 6, liveHosts: [0, 2]) == [0, 0, 0, 2, 2, 2])
        // The highest host is down: the ranges are recomputed for the hosts that remain (a scale-in).
        #expect(ShardPlacement.assignment(shards: 6, liveHosts: [0, 1]) == [0, 0, 0, 1, 1, 1])
    }

    @Test func everyShardHasExactlyOneLiveHostWhateverTheMembership() {
        var rng = SplitMix64(seed: 3)
        for _ in 0..<500 {
            let shards = Int(rng.next() % 40) + 1
            let hosts = Set((0..<8).filter { _ in rng.next() % 2 == 0 })
            let owner = ShardPlacement.assignment(shards: shards, liveHosts: hosts)
            if hosts.isEmpty { #expect(owner.isEmpty); continue }
            #expect(owner.count == shards)
            #expect(owner.allSatisfy(hosts.contains))
            // Balanced within the ranges' rounding plus the orphans spread in turn.
            let counts = hosts.map { host in owner.filter { $0 == host }.count }
            #expect(counts.max()! - counts.min()! <= (shards + hosts.count - 1) / hosts.count + 1)
        }
    }
}

@Suite("lease keeper")
struct LeaseKeeperTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)
    let timings = LeaseKeeper.Configuration(ttl: .seconds(10), renewInterval: .seconds(2), fenceMargin: .seconds(2))

    func keeper(host: Int, shards: Int = 6) -> LeaseKeeper {
        LeaseKeeper(configuration: timings, host: host, shards: shards)
    }

    @Test func theFirstRoundOnlyLooksThenFreeShardsPlacedHereAreTaken() {
        var k = keeper(host: 1)
        let view = LeaseKeeper.View(liveHosts: [0, 1, 2], holders: [0: 0])
        // Hosts that start together see one another before anyone takes a shard.
        #expect(k.wanted(in: view).isEmpty)
        #expect(k.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: view).isEmpty)
        #expect(k.wanted(in: view) == [2, 3])
        // A shard placed here that another host still holds (its lease unexpired) is not tried.
        #expect(k.wanted(in: .init(liveHosts: [0, 1, 2], holders: [2: 0])) == [3])
    }

    /// A rescale's new layout: its keeper is made after this host has seen the others, so it takes its shards in its
    /// first round. A retired layout takes nothing, hands nothing over, and releases every lease whose worker stopped.
    @Test func aNewLayoutTakesAtOnceAndARetiredOneReleasesWhatStopped() {
        let incoming = LeaseKeeper(configuration: timings, host: 1, shards: 4, joined: true)
        let view = LeaseKeeper.View(liveHosts: [0, 1], holders: [:])
        #expect(incoming.wanted(in: view) == [2, 3])
        var old = keeper(host: 1, shards: 4)
        _ = old.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: view)
        _ = old.roundSucceeded(startedAt: t0, renewed: [], acquired: [2: 1, 3: 1], released: [], view: .init(liveHosts: [0, 1], holders: [2: 1, 3: 1]))
        #expect(old.releasable(stopped: [2, 3]).isEmpty, "a serving lease is released only when handed over")
        old.retire()
        #expect(old.wanted(in: view).isEmpty)
        #expect(old.releasable(stopped: [3]) == [3: 1])
        // Host 2 joins, and shard 3 is placed there: a serving layout would hand it over, a retired one does not.
        #expect(old.roundSucceeded(startedAt: t0 + .seconds(1), renewed: [2, 3], acquired: [:], released: [], view: .init(liveHosts: [0, 1, 2], holders: [2: 1, 3: 1])).isEmpty)
    }

    @Test func aLeaseRunsOnlyUntilItsRoundStartedPlusTTLLessTheMargin() {
        var k = keeper(host: 0)
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: .init(liveHosts: [0], holders: [:]))
        let changes = k.roundSucceeded(startedAt: t0 + .seconds(1), renewed: [], acquired: [0: 7, 1: 3], released: [], view: .init(liveHosts: [0], holders: [0: 0, 1: 0]))
        #expect(changes == [.gained(shard: 0, token: 7), .gained(shard: 1, token: 3)])
        #expect(k.held[0]?.validUntil == t0 + .seconds(9))
        #expect(k.nextExpiry == t0 + .seconds(9))
        // Unrenewed, nothing is lost a moment early...
        #expect(k.expire(now: t0 + .seconds(9) - .milliseconds(1)).isEmpty)
        // ...and everything is fenced on time.
        #expect(k.expire(now: t0 + .seconds(9)) == [
            .lost(shard: 0, reason: "the lease could not be renewed in time"), .lost(shard: 1, reason: "the lease could not be renewed in time"),
        ])
        #expect(k.held.isEmpty && k.nextExpiry == nil)
    }

    @Test func aRenewalMovesTheFenceAndAMissingRenewalLosesTheShard() {
        var k = keeper(host: 0)
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: .init(liveHosts: [0], holders: [:]))
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [0: 1, 1: 1], released: [], view: .init(liveHosts: [0], holders: [0: 0, 1: 0]))
        #expect(k.renewals == [0: 1, 1: 1])
        // Shard 1's token no longer matches in the store (someone took it): lost at once, whatever its deadline.
        let changes = k.roundSucceeded(startedAt: t0 + .seconds(5), renewed: [0], acquired: [:], released: [], view: .init(liveHosts: [0], holders: [0: 0, 1: 3]))
        #expect(changes == [.lost(shard: 1, reason: "the lease was taken by another host (token 1 is stale)")])
        #expect(k.held[0]?.validUntil == t0 + .seconds(13))
        // A round that started earlier than the one that granted the current deadline never moves it back.
        _ = k.roundSucceeded(startedAt: t0 + .seconds(1), renewed: [0], acquired: [:], released: [], view: .init(liveHosts: [0], holders: [0: 0]))
        #expect(k.held[0]?.validUntil == t0 + .seconds(13))
    }

    @Test func aShardPlacedOnAnotherLiveHostIsHandedOverThenReleasedOnceStopped() {
        var k = keeper(host: 0, shards: 4)
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: .init(liveHosts: [0], holders: [:]))
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [0: 1, 1: 1, 2: 1, 3: 1], released: [], view: .init(liveHosts: [0], holders: [0: 0, 1: 0, 2: 0, 3: 0]))
        // Host 1 joins: shards 2 and 3 are its range.
        let changes = k.roundSucceeded(startedAt: t0 + .seconds(2), renewed: [0, 1, 2, 3], acquired: [:], released: [], view: .init(liveHosts: [0, 1], holders: [0: 0, 1: 0, 2: 0, 3: 0]))
        #expect(changes == [.handOver(shard: 2), .handOver(shard: 3)])
        // Asked once; a draining worker still runs on its lease, so it is still renewed.
        #expect(k.roundSucceeded(startedAt: t0 + .seconds(4), renewed: [0, 1, 2, 3], acquired: [:], released: [], view: .init(liveHosts: [0, 1], holders: [0: 0, 1: 0, 2: 0, 3: 0])).isEmpty)
        #expect(k.renewals.keys.sorted() == [0, 1, 2, 3])
        // Only shards whose workers stopped are released.
        #expect(k.releasable(stopped: [2]) == [2: 1])
        _ = k.roundSucceeded(startedAt: t0 + .seconds(6), renewed: [0, 1, 3], acquired: [:], released: [2], view: .init(liveHosts: [0, 1], holders: [0: 0, 1: 0, 3: 0]))
        #expect(k.held.keys.sorted() == [0, 1, 3])
    }

    @Test func nothingIsHandedToAHostThatIsNotLive() {
        var k = keeper(host: 0, shards: 4)
        _ = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [:], released: [], view: .init(liveHosts: [0, 1], holders: [:]))
        // Host 1 died: its range is spread over the live hosts, and this one takes its share.
        let view = LeaseKeeper.View(liveHosts: [0], holders: [:])
        #expect(k.wanted(in: view) == [0, 1, 2, 3])
        let changes = k.roundSucceeded(startedAt: t0, renewed: [], acquired: [0: 1, 1: 1, 2: 4, 3: 4], released: [], view: view)
        #expect(changes.allSatisfy { if case .gained = $0 { true } else { false } })
    }

    /// Two keepers sharing one simulated store (expiry on the store's clock, which runs ahead of theirs): however
    /// the rounds and failures interleave, no moment has two hosts that may run one shard.
    @Test func neverTwoHostsMayRunOneShard() {
        struct Row { var owner: Int?; var token: Int64 = 0; var expires: MonotonicInstant = .zero }
        var rng = SplitMix64(seed: 11)
        for trial in 0..<200 {
            let shards = 4
            var rows = [Row](repeating: Row(), count: shards)
            var keepers = [keeper(host: 0, shards: shards), keeper(host: 1, shards: shards)]
            var hostExpiry: [MonotonicInstant] = [.zero, .zero]
            // The store's clock: ahead of the hosts' by a random offset (any offset is allowed; rates are equal).
            let offset = Duration.milliseconds(Int64(rng.next() % 5000))
            var now = t0
            for _ in 0..<300 {
                now = now + .milliseconds(Int64(rng.next() % 900) + 100)
                let h = Int(rng.next() % 2)
                // Sometimes the round fails (the host is cut off): nothing changes in the store.
                if rng.next() % 4 != 0 {
                    let started = now
                    let db = now + offset + .milliseconds(Int64(rng.next() % 300))  // the store acts a little later
                    hostExpiry[h] = db + timings.ttl
                    var renewed: Set<Int> = []
                    for (shard, token) in keepers[h].renewals where rows[shard].owner == h && rows[shard].token == token && rows[shard].expires > db {
                        rows[shard].expires = db + timings.ttl
                        renewed.insert(shard)
                    }
                    let live = Set((0..<2).filter { hostExpiry[$0] > db })
                    var holders: [Int: Int] = [:]
                    for shard in 0..<shards where rows[shard].expires > db { holders[shard] = rows[shard].owner }
                    var acquired: [Int: Int64] = [:]
                    for shard in keepers[h].wanted(in: .init(liveHosts: live, holders: holders)) where rows[shard].expires <= db {
                        rows[shard] = Row(owner: h, token: rows[shard].token + 1, expires: db + timings.ttl)
                        acquired[shard] = rows[shard].token
                    }
                    _ = keepers[h].roundSucceeded(startedAt: started, renewed: renewed, acquired: acquired, released: [], view: .init(liveHosts: live, holders: holders))
                }
                for i in 0..<2 { _ = keepers[i].expire(now: now) }
                // The invariant: a shard a keeper may run has its lease in the store, held by that host.
                for i in 0..<2 {
                    for (shard, lease) in keepers[i].held where lease.validUntil > now {
                        #expect(rows[shard].owner == i && rows[shard].token == lease.token && rows[shard].expires > now + offset, "trial \(trial)")
                    }
                }
            }
        }
    }
}

@Suite("the state machine under leases")
struct LeasedStateMachineTests {
    /// Feeds the lease set `held` (token by ordinal) as the next version.
    static func leases(_ c: inout Cluster, _ held: [Int: Int64], handingOver: Set<Int> = [], sessions: [Int: (String, Int)] = [:], version: inout UInt64) -> [ClusterStateMachine.Action] {
        version += 1
        let grants = held.reduce(into: [Int: LeaseGrant]()) { grants, lease in
            grants[lease.key] = LeaseGrant(token: lease.value, sessionID: sessions[lease.key]?.0, sessionSeq: sessions[lease.key]?.1 ?? 0, handingOver: handingOver.contains(lease.key))
        }
        return c.feed(.leases(version: version, held: grants))
    }

    @Test func nothingStartsUntilALeaseIsHeldAndThenItResumesTheStoredSession() {
        var c = Cluster(shards: 3, leased: true)
        var v: UInt64 = 0
        #expect(c.feed(.start).isEmpty)
        #expect(c.machine.workers.allSatisfy { $0.state == .elsewhere })
        #expect(c.machine.allReady)
        let actions = Self.leases(&c, [1: 7], sessions: [1: ("s1", 42)], version: &v)
        #expect(ClusterStateMachineTests.spawnedOrdinals(actions) == [1])
        #expect(c.machine.worker(ordinal: 1)?.session?.seq == 42 && c.machine.worker(ordinal: 1)?.leaseToken == 7)
        #expect(!c.machine.allReady)
        // The same set again starts nothing more.
        #expect(ClusterStateMachineTests.spawnedOrdinals(Self.leases(&c, [1: 7], version: &v)).isEmpty)
    }

    @Test func aLostLeaseKillsTheWorkerAtOnceAndItIsNotRestarted() {
        var c = Cluster(shards: 2, leased: true)
        var v: UInt64 = 0
        _ = c.spawned(Self.leases(&c, [0: 1], version: &v))
        let pid = c.machine.worker(ordinal: 0)!.pid!
        let actions = Self.leases(&c, [:], version: &v)
        #expect(actions.contains(.killGroup(pid: pid)))
        #expect(c.machine.worker(ordinal: 0)?.state == .elsewhere)
        // Its exit restarts nothing, counts no crash.
        #expect(ClusterStateMachineTests.spawnedOrdinals(c.feed(.exited(pid: pid, status: .signaled(9)))).isEmpty)
        #expect(c.machine.worker(ordinal: 0)?.restarts == 0)
    }

    @Test func anOlderSetIsIgnoredAndAReplacedTokenFencesThenStartsAgain() {
        var c = Cluster(shards: 2, leased: true)
        var v: UInt64 = 0
        _ = c.spawned(Self.leases(&c, [0: 1], version: &v))
        let pid = c.machine.worker(ordinal: 0)!.pid!
        // A report that was overtaken (an older version) changes nothing.
        #expect(c.feed(.leases(version: v - 1, held: [:])).isEmpty)
        #expect(c.machine.worker(ordinal: 0)?.pid == pid)
        // Lost and taken again between two reports: the old worker dies, a new one starts on the new token.
        let actions = Self.leases(&c, [0: 3], version: &v)
        #expect(actions.contains(.killGroup(pid: pid)))
        #expect(ClusterStateMachineTests.spawnedOrdinals(actions) == [0])
        #expect(c.machine.worker(ordinal: 0)?.leaseToken == 3)
    }

    @Test func aWorkerWhoseLeaseWentWhileItSpawnedIsKilledWhenItsPidComes() {
        var c = Cluster(shards: 2, leased: true)
        var v: UInt64 = 0
        _ = Self.leases(&c, [1: 1], version: &v)
        let first = c.gen(1)
        _ = Self.leases(&c, [:], version: &v)
        #expect(c.feed(.spawned(ordinal: 1, generation: first, pid: 4242)) == [.killGroup(pid: 4242)])
        // Taken again before the first pid arrived: the first process is still not the slot's.
        _ = Self.leases(&c, [1: 2], version: &v)
        #expect(c.gen(1) != first)
        #expect(c.feed(.spawned(ordinal: 1, generation: first, pid: 4243)) == [.killGroup(pid: 4243)])
        #expect(c.feed(.spawned(ordinal: 1, generation: c.gen(1), pid: 4244)).isEmpty)
    }

    @Test func aHandOverDrainsTheWorkerAndLeavesTheSlotElsewhere() {
        var c = Cluster(shards: 2, leased: true)
        var v: UInt64 = 0
        _ = c.spawned(Self.leases(&c, [0: 1], version: &v))
        let pid = c.machine.worker(ordinal: 0)!.pid!
        #expect(Self.leases(&c, [0: 1], handingOver: [0], version: &v).contains(.signal(pid: pid, signal: .terminate)))
        #expect(c.machine.worker(ordinal: 0)?.state == .draining)
        // Still held while it drains: nothing is killed, nothing restarted.
        #expect(Self.leases(&c, [0: 1], handingOver: [0], version: &v).isEmpty)
        let after = c.feed(.exited(pid: pid, status: .exited(0)))
        #expect(ClusterStateMachineTests.spawnedOrdinals(after).isEmpty)
        #expect(c.machine.worker(ordinal: 0)?.state == .elsewhere)
        // A lease being handed over is not started again; a restart request for a slot another host holds does nothing.
        #expect(ClusterStateMachineTests.spawnedOrdinals(Self.leases(&c, [0: 1], handingOver: [0], version: &v)).isEmpty)
        #expect(ClusterStateMachineTests.spawnedOrdinals(c.feed(.restart(ordinal: 0))).isEmpty)
        // Handed over while queued: elsewhere at once.
        var q = Cluster(shards: 2, startLimit: 1, leased: true)
        var w: UInt64 = 0
        _ = q.spawned(Self.leases(&q, [0: 1, 1: 1], version: &w))
        #expect(q.machine.worker(ordinal: 1)?.state == .queued)
        _ = Self.leases(&q, [0: 1, 1: 1], handingOver: [1], version: &w)
        #expect(q.machine.worker(ordinal: 1)?.state == .elsewhere)
    }
}
