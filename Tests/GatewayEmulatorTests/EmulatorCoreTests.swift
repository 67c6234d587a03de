import ClusterCore
@testable import GatewayEmulator
import Testing

/// The emulator's state without a server: time is a parameter, so limits and expiries are tested without sleeping.
@Suite("emulator core, on an injected clock")
struct EmulatorCoreTests {
    static let second: Int64 = 1_000_000_000

    func core(_ json: String = "{}") throws -> EmulatorCore {
        let config = try ClusterConfig.parse(#"{"emulator": \#(json)}"#)
        return EmulatorCore(config: config.emulator, app: config.app, now: 0, wallClockMs: 1_700_000_000_000)
    }

    func token(_ core: inout EmulatorCore, now: Int64) throws -> String {
        guard case .issued(let token, _) = core.issueToken(appID: core.app.id, secret: core.app.secret.reveal(), now: now) else {
            throw CancellationError()
        }
        return token
    }

    @Test func aTokenExpiresAtItsLifetimeAndIsRenewedBeforeIt() throws {
        var core = try core(#"{"tokenLifetime": "120s"}"#)
        let first = try token(&core, now: 0)
        #expect(core.tokenValid(first, now: 119 * Self.second))
        #expect(!core.tokenValid(first, now: 120 * Self.second))
        // Within its last 60 s, a new one comes; the old one stays valid until it expires.
        #expect(try token(&core, now: 30 * Self.second) == first)
        let second = try token(&core, now: 61 * Self.second)
        #expect(second != first && core.tokenValid(first, now: 61 * Self.second))
    }

    @Test func identifyInsideTheBucketsWindowIsAViolation() throws {
        var core = try core(#"{"identifyWindow": "5s", "sessionStartLimit": {"maxConcurrency": 1}}"#)
        let token = try token(&core, now: 0)
        let intents = core.config.grantedIntents.rawValue
        let a = core.openConnection(now: 0), b = core.openConnection(now: 0), c = core.openConnection(now: 0)
        guard case .ready = core.identify(connectionID: a, token: token, shard: ShardID(0, of: 2), intents: intents, now: Self.second) else {
            Issue.record("the first identify was refused")
            return
        }
        guard case .close(4008, _) = core.identify(connectionID: b, token: token, shard: ShardID(1, of: 2), intents: intents, now: 5 * Self.second) else {
            Issue.record("an identify 4 s after the last, window 5 s, was accepted")
            return
        }
        #expect(core.stats.identifyViolations == 1)
        guard case .ready = core.identify(connectionID: c, token: token, shard: ShardID(1, of: 2), intents: intents, now: 6 * Self.second) else {
            Issue.record("an identify a whole window later was refused")
            return
        }
    }

    @Test func theRestLimitAdmitsASecondsWorthThenAnswersRetryAfter() throws {
        var core = try core(#"{"restRate": 10}"#)
        for _ in 0..<10 { #expect(core.admitRequest(now: 0) == nil) }
        #expect(core.admitRequest(now: 0) == 1)
        #expect(core.admitRequest(now: Self.second / 10) == nil)
        #expect(core.stats.rateLimited == 1 && core.stats.peakRequestsPerSecond == 11)
    }

    @Test func messageTimestampsFollowTheInjectedClock() throws {
        var core = try core()
        // 1,700,000,000 s since 1970 is 2023-11-14T22:13:20Z, written in the platform's +08:00.
        #expect(core.timestamp(now: 0) == "2023-11-15T06:13:20+08:00")
        #expect(core.timestamp(now: 61 * Self.second) == "2023-11-15T06:14:21+08:00")
    }
}
