import ClusterCore
import Supervisor
import Synchronization
import Testing

@Suite("webhook streams: routing, hand-off, commits, limits")
struct WebhookStreamsTests {
    typealias Key = WebhookStreams.Key

    func streams(total: Int = 4, limit: Int = 100, streamLimit: Int = 100) -> WebhookStreams {
        WebhookStreams(layout: 0, total: total, limit: limit, streamLimit: streamLimit, instance: "t")
    }

    @Test func eventsGoToTheShardThatOwnsThemByTheWebsocketRuleOrAStableHash() throws {
        let guild: UInt64 = 4_412_000_003 << 22 | 77
        #expect(WebhookRoute.of(try JSONValue.parse(#"{"guild_id": "\#(guild)", "channel_id": "1"}"#)) == .guild(guild))
        // Guild 4,412,000,003 (the id's top bits) of 4 shards: 4,412,000,003 % 4 = 3.
        #expect(WebhookRoute.guild(guild).shard(total: 4) == 3)
        #expect(WebhookRoute.of(try JSONValue.parse(#"{"group_openid": "G1", "author": {"member_openid": "M"}}"#)) == .openID("G1"))
        #expect(WebhookRoute.of(try JSONValue.parse(#"{"author": {"user_openid": "U9"}}"#)) == .openID("U9"))
        #expect(WebhookRoute.of(try JSONValue.parse(#"{"content": "x"}"#)) == .unrouted)
        #expect(WebhookRoute.unrouted.shard(total: 7) == 0)
        // FNV-1a 64 of "G1" is 0x09020707b59be3f5 (computed independently): stable across processes and releases.
        #expect(WebhookRoute.openID("G1").shard(total: 1_000_003) == 594_595)
        // Spread: 1,000 openids over 8 shards touch every shard.
        let shards = Set((0..<1000).map { WebhookRoute.openID("U\($0)").shard(total: 8) })
        #expect(shards == Set(0..<8))
    }

    @Test func anEventWaitsInItsStreamUntilAWorkerAttachesThenFollowsInOrder() {
        var s = streams(total: 1)
        #expect(s.offer(route: .unrouted, eventID: "a", name: "T", payload: "{}") == .queued)
        #expect(s.offer(route: .unrouted, eventID: "b", name: "T", payload: "{}") == .queued)
        let attached = s.attach(Key(layout: 0, ordinal: 0), connection: 7)
        #expect(attached.fresh && attached.mark == 1)
        #expect(attached.replay.map(\.seq) == [2, 3] && attached.replay.map(\.eventID) == ["a", "b"])
        guard case .send(let connection, let entry) = s.offer(route: .unrouted, eventID: "c", name: "T", payload: "{}") else {
            Issue.record("an attached stream sends at once")
            return
        }
        #expect(connection == 7 && entry.seq == 4)
    }

    @Test func aRedeliveryOfAnEventStillInItsStreamAddsNothing() {
        var s = streams(total: 1)
        _ = s.attach(Key(layout: 0, ordinal: 0), connection: 1)
        _ = s.offer(route: .unrouted, eventID: "a", name: "T", payload: "{}")
        #expect(s.check(route: .unrouted, eventID: "a") == .duplicate)
        #expect(s.offer(route: .unrouted, eventID: "a", name: "T", payload: "{}") == .duplicate)
        #expect(s.queued == 1)
    }

    @Test func aSuccessorGetsEverythingAfterTheCommittedSeqAndNothingBefore() {
        var s = streams(total: 1)
        let key = Key(layout: 0, ordinal: 0)
        let first = s.attach(key, connection: 1)
        for id in ["a", "b", "c", "d"] { _ = s.offer(route: .unrouted, eventID: id, name: "T", payload: "{}") }
        // The worker handled up to seq 3 (a, b), then died.
        #expect(s.commit(key, streamID: first.streamID, seq: 3) == ["a", "b"])
        s.detach(connection: 1)
        #expect(s.offer(route: .unrouted, eventID: "e", name: "T", payload: "{}") == .queued)
        let next = s.attach(key, connection: 2)
        #expect(!next.fresh && next.mark == 3 && next.streamID == first.streamID)
        #expect(next.replay.map(\.eventID) == ["c", "d", "e"])
        // A commit of another stream id (a forged or stale one), or backwards, trims nothing.
        #expect(s.commit(key, streamID: "other", seq: 100).isEmpty)
        #expect(s.commit(key, streamID: first.streamID, seq: 2).isEmpty)
        // A commit past what was sent trims what there is.
        #expect(s.commit(key, streamID: first.streamID, seq: 1_000) == ["c", "d", "e"])
        #expect(s.queued == 0)
        #expect(s.attach(key, connection: 3).mark == 6)
    }

    @Test func aFullStreamOrAFullClusterAsksForARetryAndAStreamCannotTakeEveryonesRoom() {
        var s = streams(total: 2, limit: 5, streamLimit: 3)
        let toZero = WebhookRoute.openID((0..<100).map { "U\($0)" }.first { WebhookRoute.openID($0).shard(total: 2) == 0 }!)
        for index in 0..<3 { #expect(s.offer(route: toZero, eventID: "z\(index)", name: "T", payload: "{}") == .queued) }
        #expect(s.check(route: toZero, eventID: "z3") == .full)
        #expect(s.offer(route: toZero, eventID: "z3", name: "T", payload: "{}") == .full)
        let toOne = WebhookRoute.openID((0..<100).map { "U\($0)" }.first { WebhookRoute.openID($0).shard(total: 2) == 1 }!)
        #expect(s.offer(route: toOne, eventID: "o0", name: "T", payload: "{}") == .queued)
        #expect(s.offer(route: toOne, eventID: "o1", name: "T", payload: "{}") == .queued)
        #expect(s.offer(route: toOne, eventID: "o2", name: "T", payload: "{}") == .full)
        // What an earlier supervisor acknowledged always finds room.
        #expect(s.offer(route: toOne, eventID: "r", name: "T", payload: "{}", ignoringLimits: true) == .queued)
        #expect(s.queued == 6)
    }

    @Test func aRescaleSwitchSendsNewEventsToTheNewLayoutWhileTheOldOneKeepsWhatItHolds() {
        var s = streams(total: 2)
        let old = s.attach(Key(layout: 0, ordinal: 0), connection: 1)
        _ = s.attach(Key(layout: 0, ordinal: 1), connection: 2)
        _ = s.offer(route: .unrouted, eventID: "before", name: "T", payload: "{}")
        _ = s.attach(Key(layout: 1, ordinal: 0), connection: 3)
        s.serve(layout: 1, total: 3)
        guard case .send(let connection, let entry) = s.offer(route: .unrouted, eventID: "after", name: "T", payload: "{}") else {
            Issue.record("the new layout's attached worker gets it")
            return
        }
        #expect(connection == 3 && entry.seq == 2)
        #expect(s.pending(Key(layout: 0, ordinal: 0)) == 1)
        #expect(s.commit(Key(layout: 0, ordinal: 0), streamID: old.streamID, seq: 2) == ["before"])
        // Layouts that are neither serving nor the one before, with nothing left and no worker, are dropped.
        s.detach(connection: 1)
        s.detach(connection: 2)
        s.serve(layout: 2, total: 1)
        s.serve(layout: 3, total: 1)
        #expect(s.pending(Key(layout: 0, ordinal: 0)) == 0)
        #expect(s.attach(Key(layout: 0, ordinal: 0), connection: 9).fresh)
    }
}

@Suite("webhook streams: a retired layout, hostile workers")
struct WebhookStreamsRetireTests {
    @Test func whatARetiredLayoutsStreamsStillHoldIsTakenInOrderAndNothingElse() {
        var s = WebhookStreams(layout: 0, total: 2, limit: 100, streamLimit: 100, instance: "t")
        let zero = s.attach(.init(layout: 0, ordinal: 0), connection: 1)
        for id in ["a", "b", "c"] { _ = s.offer(route: .unrouted, eventID: id, name: "T", payload: "{}") }
        s.commit(.init(layout: 0, ordinal: 0), streamID: zero.streamID, seq: 2)
        s.serve(layout: 1, total: 3)
        _ = s.offer(route: .unrouted, eventID: "new", name: "T", payload: "{}")
        #expect(s.allEntries.map(\.eventID) == ["b", "c", "new"])
        let left = s.removeLayout(0)
        #expect(left.map(\.eventID) == ["b", "c"])
        #expect(left.allSatisfy { $0.route == .unrouted }, "each keeps its route, to be placed again")
        #expect(s.queued == 1 && s.allEntries.map(\.eventID) == ["new"])
        // A commit for the removed stream (the retired worker, late) trims nothing.
        #expect(s.commit(.init(layout: 0, ordinal: 0), streamID: zero.streamID, seq: 100).isEmpty)
        #expect(s.queued == 1)
    }

    @Test func aConnectionIsAttachedOnce() {
        var s = WebhookStreams(layout: 0, total: 2, limit: 100, streamLimit: 100, instance: "t")
        #expect(!s.isAttached(5))
        _ = s.attach(.init(layout: 0, ordinal: 1), connection: 5)
        #expect(s.isAttached(5))
        s.detach(connection: 5)
        #expect(!s.isAttached(5))
    }
}

@Suite("webhook router: written before acknowledged, moved at retirement")
struct WebhookRouterTests {
    @Test func anEventIsWrittenOnceAndARedeliveryIsNotWrittenAgain() async {
        let written = Mutex<[String]>([])
        let router = WebhookRouter(layout: 0, total: 1, limit: 10, streamLimit: 10, record: { events in written.withLock { $0 += events.map(\.id) } })
        #expect(await router.offer(route: .unrouted, eventID: "a", name: "T", body: "{}") == .accepted)
        #expect(await router.offer(route: .unrouted, eventID: "a", name: "T", body: "{}") == .accepted)
        #expect(written.withLock { $0 } == ["a"])
        #expect(router.queued == 1)
    }

    @Test func aFailedWriteIsNeverAcknowledgedAndLeavesNothingBehind() async {
        struct DiskFull: Error {}
        let router = WebhookRouter(layout: 0, total: 1, limit: 10, streamLimit: 10, record: { _ in throw DiskFull() })
        #expect(await router.offer(route: .unrouted, eventID: "a", name: "T", body: "{}") == .notRecorded)
        #expect(router.queued == 0)
    }

    @Test func aFullStreamIsAskedToRetryBeforeAnythingIsWritten() async {
        let written = Mutex(0)
        let router = WebhookRouter(layout: 0, total: 1, limit: 10, streamLimit: 1, record: { events in written.withLock { $0 += events.count } })
        #expect(await router.offer(route: .unrouted, eventID: "a", name: "T", body: "{}") == .accepted)
        #expect(await router.offer(route: .unrouted, eventID: "b", name: "T", body: "{}") == .full)
        #expect(written.withLock { $0 } == 1)
    }

    @Test func aRetiredLayoutsEventsMoveToTheServingLayoutAndKeepTheirRows() async {
        let handled = Mutex<[String]>([])
        let router = WebhookRouter(layout: 0, total: 2, limit: 10, streamLimit: 10, record: { _ in }, onHandled: { ids in handled.withLock { $0 += ids } })
        #expect(await router.offer(route: .guild(7 << 22), eventID: "a", name: "T", body: #"{"d":{"guild_id":"29360128"}}"#) == .accepted)
        #expect(await router.offer(route: .unrouted, eventID: "b", name: "T", body: "{}") == .accepted)
        router.serve(layout: 1, total: 4)
        router.retire(layout: 0)
        #expect(router.queued == 2)
        #expect(router.held.map(\.id).sorted() == ["a", "b"])
        #expect(handled.withLock { $0 }.isEmpty, "nothing was handled: no row goes")
    }
}

@Suite("webhook router: rows read back at start")
struct WebhookRestoreTests {
    @Test func aRowIsRoutedByTheDOfItsBodyBeyondTheLimits() async {
        let router = WebhookRouter(layout: 0, total: 4, limit: 1, streamLimit: 1)
        let guild: UInt64 = 4_412_000_003 << 22
        router.restore([
            .init(id: "a", name: "AT_MESSAGE_CREATE", payload: #"{"op":0,"id":"a","t":"AT_MESSAGE_CREATE","d":{"guild_id":"\#(guild)"}}"#),
            .init(id: "b", name: "AT_MESSAGE_CREATE", payload: #"{"op":0,"id":"b","t":"AT_MESSAGE_CREATE","d":{"guild_id":"\#(guild)"}}"#),
            .init(id: "c", name: "C2C_MESSAGE_CREATE", payload: #"{"op":0,"d":{"author":{"user_openid":"U1"}}}"#),
        ])
        // Beyond the limits (1 in all): they were acknowledged. a and b share guild's stream (3), in order.
        #expect(router.queued == 3)
        #expect(router.held.map(\.id).filter { $0 != "c" } == ["a", "b"])
        // A redelivery of one of them is one already held: accepted, nothing added (a new event finds no room).
        #expect(await router.offer(route: .guild(guild), eventID: "b", name: "AT_MESSAGE_CREATE", body: "{}") == .accepted)
        #expect(await router.offer(route: .guild(guild), eventID: "new", name: "AT_MESSAGE_CREATE", body: "{}") == .full)
        #expect(router.queued == 3)
    }
}
