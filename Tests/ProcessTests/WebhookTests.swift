import AsyncHTTPClient
import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation
import GRDB
import NIOCore
import NIOHTTP1
import Testing
import TestSupport

extension RealProcesses {
    @Suite("webhook delivery (real processes)", .serialized, .timeLimit(.minutes(4)))
    struct WebhookTests {
        /// The emulator delivering by webhook; `traffic` replaces its rates.
        static func emulatorConfig(traffic: String = #"{"rate": 60, "groupRate": 4, "c2cRate": 4, "duplicateShare": 0.05}"#, webhook: String = #"{"retryBase": "50ms", "retryMax": "500ms", "retryLimit": 20}"#) -> String {
            TestCluster.emulatorConfig
                .replacingOccurrences(of: #""traffic": {"rate": 60, "groupRate": 2, "c2cRate": 2}"#, with: #""traffic": \#(traffic)"#)
                .replacingOccurrences(of: #"{"emulator": {"#, with: #"{"emulator": {"delivery": "webhook", "webhook": \#(webhook), "#)
        }

        /// A webhook cluster on `emulator`, the emulator pointed at its ingress; waits for "cluster ready".
        static func launch(in dir: String, emulator: EmulatorProcess, shards: Int, webhook: String = #"{"listen": "127.0.0.1:0"}"#) async throws -> (TestCluster, String) {
            try TestCluster.clusterConfig(emulator, shards: shards, extra: #", "webhook": \#(webhook)"#)
                .replacingOccurrences(of: #""embedded": false"#, with: #""embedded": false, "mode": "webhook""#)
                .write(toFile: dir + "/cluster.json", atomically: true, encoding: .utf8)
            let cluster = try await TestCluster.launch(in: dir, emulator: emulator, shards: shards)
            let line = try #require(cluster.supervisor.output.first { $0.hasPrefix("webhook listening on ") })
            let base = String(line.dropFirst("webhook listening on ".count))
            _ = try await emulator.admin("/emulator/webhook", #"{"url": "\#(base)/qqbot/callback"}"#)
            return (cluster, base)
        }

        func pids(_ cluster: TestCluster) async throws -> [Int32] {
            try await cluster.workers().compactMap { $0["pid"]?.intValue.map(Int32.init) }
        }

        @Test func everyMessageIsAnsweredOnceThroughCrashesHangsARollRescalesAndRedeliveries() async throws {
            try await withTemporaryDirectory { dir in
                let emulator = try await EmulatorProcess.start(config: Self.emulatorConfig(), directory: dir)
                // A stream holds 4 events: the hung worker's fills, and the platform is asked to deliver again.
                let (cluster, _) = try await Self.launch(in: dir, emulator: emulator, shards: 4, webhook: #"{"listen": "127.0.0.1:0", "streamLimit": 4}"#)
                try await emulator.waitFor("50 replies by webhook") { $0["messagesReplied"] ?? 0 >= 50 && $0["webhookValidations"] ?? 0 >= 1 }
                var seen = try await pids(cluster)

                // kill -9 of a worker: its successor takes over the shard's stream.
                kill(try await cluster.pid(of: 1), SIGKILL)
                try await cluster.waitForStatus("worker 1 replaced") { w in w.count == 4 && w.allSatisfy { $0.workerState == "ready" } && w[1]["restarts"]?.intValue == 1 }
                // SIGSTOP of a worker: found hung, killed, replaced.
                let stopped = try await cluster.pid(of: 2)
                kill(stopped, SIGSTOP)
                try await cluster.waitForStatus("worker 2 replaced after its hang") { w in
                    w.count == 4 && w.allSatisfy { $0.workerState == "ready" } && w[2]["pid"]?.intValue.map(Int32.init) != stopped
                }
                seen += try await pids(cluster)
                try await waitForMoreReplies(emulator, 30, "after the faults")

                // A rolling restart and two rescales: no gateway session at all, nothing lost.
                let roll = try BotclusterProcess(["restart", "--rolling"], directory: dir, environment: EmulatorProcess.secretEnvironment)
                #expect(await roll.waitForExit() == 0)
                #expect(roll.output.contains("replaced 4/4"), "\(roll.output)")
                seen += try await pids(cluster)
                try await waitForMoreReplies(emulator, 30, "after the roll")
                let (up, upText) = try await IPCClient.control(path: cluster.socket, .scale(.count(6), planOnly: false), timeout: .seconds(120))
                #expect(up, "\(upText)")
                seen += try await pids(cluster)
                try await waitForMoreReplies(emulator, 30, "after scaling up")
                let (down, downText) = try await IPCClient.control(path: cluster.socket, .scale(.count(3), planOnly: false), timeout: .seconds(120))
                #expect(down, "\(downText)")
                let workers = try await cluster.workers()
                #expect(workers.count == 3 && workers.allSatisfy { $0.workerState == "ready" })
                seen += try await pids(cluster)
                let status = try await cluster.status()
                #expect(status["mode"]?.stringValue == "webhook")

                try await cluster.drainTraffic()
                let stats = try await emulator.stats()
                // Two hard kills (kill -9, and the hung worker's SIGKILL): each may repeat the one reply that left
                // before its completion reached the supervisor (the bound the README states); nothing else may.
                #expect(stats["messagesRepliedMoreThanOnce"] ?? 0 <= 2, "\(stats)")
                #expect(stats["messagesUnreplied"] == 0)
                #expect(stats["messagesUndelivered"] == 0)
                #expect(stats["webhookGaveUp"] == 0)
                #expect(stats["webhookRetries"] ?? 0 > 0, "deliveries answered 503 (a full stream) came again")
                #expect(stats["duplicatePushes"] ?? 0 > 0, "the platform redelivered some events with the same id")
                #expect(stats["identifies"] == 0, "webhook mode starts no gateway session")
                #expect(stats["resumes"] == 0)
                try await cluster.stop(workerPIDs: Array(Set(seen)))
            }
        }

        @Test func theIngressRefusesForgedStaleOversizedAndMalformedRequestsBeforeAnythingElseOverTLS() async throws {
            try await withTemporaryDirectory { dir in
                let server = try TestCertificate.make(in: dir)
                let emulator = try await EmulatorProcess.start(
                    config: Self.emulatorConfig(traffic: #"{"rate": 0, "groupRate": 0, "c2cRate": 0}"#, webhook: #"{"trustRoots": "\#(server.certificate)"}"#),
                    directory: dir
                )
                let (cluster, base) = try await Self.launch(
                    in: dir, emulator: emulator, shards: 2,
                    webhook: #"{"listen": "127.0.0.1:0", "maxBodyBytes": 2048, "tls": {"certificate": "\#(server.certificate)", "key": "\#(server.key)"}}"#
                )
                #expect(base.hasPrefix("https://"))
                // The platform validated the URL over TLS with op 13.
                try await emulator.waitFor("the callback URL validated") { $0["webhookValidations"] ?? 0 >= 1 }
                let client = httpClient(trusting: server.certificate)
                let url = base + "/qqbot/callback"
                let key = try #require(WebhookKey(secret: Secret(EmulatorProcess.secretEnvironment["TEST_APP_SECRET"]!)))
                let now = String(Int(Date().timeIntervalSince1970))
                func post(_ body: String, timestamp: String? = now, signature: String? = nil, signedBy signer: WebhookKey? = nil) async throws -> (Int, String) {
                    var request = HTTPClientRequest(url: url)
                    request.method = .POST
                    if let timestamp { request.headers.add(name: "X-Signature-Timestamp", value: timestamp) }
                    let bytes = Array(body.utf8)
                    if let signature {
                        request.headers.add(name: "X-Signature-Ed25519", value: signature)
                    } else if let timestamp {
                        request.headers.add(name: "X-Signature-Ed25519", value: WebhookKey.hex((signer ?? key).sign(timestamp: Array(timestamp.utf8), body: bytes)))
                    }
                    request.body = .bytes(ByteBuffer(bytes: bytes))
                    let response = try await client.execute(request, timeout: .seconds(10))
                    let answer = try await response.body.collect(upTo: 1 << 16)
                    return (Int(response.status.code), String(buffer: answer).trimmingCharacters(in: .whitespacesAndNewlines))
                }
                let event = #"{"id":"forged-1","op":0,"s":1,"t":"AT_MESSAGE_CREATE","d":{"id":"m1","channel_id":"1","guild_id":"18505170944","content":"x","author":{"id":"1","username":"u"}}}"#
                let stranger = try #require(WebhookKey(secret: Secret("not-this-apps-secret")))
                #expect(try await post(event, signature: "").0 == 401)
                #expect(try await post(event, signature: String(repeating: "0", count: 128)).0 == 401)
                #expect(try await post(event, signedBy: stranger).0 == 401)
                #expect(try await post(event, timestamp: nil, signature: String(repeating: "0", count: 128)).0 == 401)
                #expect(try await post(event, timestamp: "17254x2341").0 == 401)
                #expect(try await post(event, timestamp: String(Int(Date().timeIntervalSince1970) - 3600)).0 == 401, "a replay an hour old")
                #expect(try await post(String(repeating: " ", count: 4096) + event).0 == 413)
                #expect(try await post("this is not JSON").0 == 400)
                #expect(try await post(#"{"op":0,"t":"AT_MESSAGE_CREATE","d":{}}"#).0 == 400, "a dispatch without an id")
                let metrics = try await scrape(cluster)
                // The timestamp is looked at first (the cheapest check): a request without one counts there.
                #expect(metrics.contains(#"botcluster_webhook_requests_total{outcome="refused_signature"} 3"#), "\(metrics)")
                #expect(metrics.contains(#"botcluster_webhook_requests_total{outcome="refused_timestamp"} 3"#))
                #expect(metrics.contains(#"botcluster_webhook_requests_total{outcome="refused_size"} 1"#))
                #expect(metrics.contains(#"botcluster_webhook_requests_total{outcome="refused_payload"} 2"#))
                #expect(metrics.contains(#"botcluster_webhook_requests_total{outcome="acked"} 0"#))
                #expect(!metrics.contains("botcluster_events_received_total{"), "nothing reached a worker")
                // The two workers' READY handlers, and nothing else.
                #expect(metrics.contains("botcluster_handler_duration_seconds_count 2"))

                // op 13, as the platform asks it, and a well-signed dispatch: acknowledged and handled once, even
                // delivered twice.
                let (status, answer) = try await post(#"{"op":13,"d":{"plain_token":"Arq0D5A61EgUu4OxUvOp","event_ts":"1725442341"}}"#)
                #expect(status == 200)
                let validation = try JSONValue.parse(answer)
                #expect(validation["plain_token"]?.stringValue == "Arq0D5A61EgUu4OxUvOp")
                #expect(validation["signature"]?.stringValue == key.validationSignature(eventTS: "1725442341", plainToken: "Arq0D5A61EgUu4OxUvOp"))
                #expect(try await post(event) == (200, #"{"op":12,"d":0}"#))
                #expect(try await post(event) == (200, #"{"op":12,"d":0}"#))
                try await poll("the event handled", timeout: .seconds(30), read: { try await scrape(cluster) }) {
                    $0.contains(#"botcluster_events_received_total{type="AT_MESSAGE_CREATE"} 1"#) || $0.contains(#"botcluster_events_received_total{type="AT_MESSAGE_CREATE"} 2"#)
                }
                let after = try await scrape(cluster)
                #expect(after.contains(#"botcluster_webhook_requests_total{outcome="acked"} 2"#))
                #expect(after.contains("botcluster_handler_duration_seconds_count 3"), "one handler run for the event delivered twice: \(after)")
                try await cluster.stop(workerPIDs: try await pids(cluster))
            }
        }

        /// kill -9 of the supervisor (its workers follow it): what it had acknowledged is in cluster.sqlite, and the
        /// next supervisor hands it to its workers; what the platform could not deliver meanwhile it delivers again.
        @Test func acknowledgedEventsOutliveTheSupervisor() async throws {
            try await withTemporaryDirectory { dir in
                let emulator = try await EmulatorProcess.start(
                    config: Self.emulatorConfig(traffic: #"{"rate": 60, "groupRate": 4, "c2cRate": 4}"#, webhook: #"{"retryBase": "50ms", "retryMax": "300ms", "retryLimit": 200}"#),
                    directory: dir
                )
                let (first, _) = try await Self.launch(in: dir, emulator: emulator, shards: 2)
                try await emulator.waitFor("100 replies") { $0["messagesReplied"] ?? 0 >= 100 }
                let workers = try await pids(first)
                // Worker 0 stops: the events of its shard are acknowledged and wait in its stream (and on disk).
                kill(workers[0], SIGSTOP)
                try await poll("events acknowledged and waiting", timeout: .seconds(30), read: { try await scrape(first) }) { text in
                    text.split(separator: "\n").contains { $0.hasPrefix("botcluster_webhook_queued_events ") && (Double($0.split(separator: " ").last!) ?? 0) >= 3 }
                }
                first.supervisor.signal(SIGKILL)
                _ = await first.supervisor.waitForExit()
                try await waitUntilGone(workers, within: .seconds(5))
                let rows = try await DatabaseQueue(path: dir + "/run/cluster.sqlite").read { db in
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM webhook_inbox") ?? 0
                }
                // Acknowledged, so the platform does not deliver them again: only the rows can bring them back.
                #expect(rows >= 3)
                let (second, _) = try await Self.launch(in: dir, emulator: emulator, shards: 2)
                try await second.drainTraffic()
                let stats = try await emulator.stats()
                #expect(stats["messagesUnreplied"] == 0, "rows left by the killed supervisor: \(rows)")
                #expect(stats["webhookGaveUp"] == 0)
                // Handled, not yet written down as handled when the supervisor died (the same window as a session's
                // resume after a supervisor crash): a few, never more than a report interval's worth.
                #expect(stats["messagesRepliedMoreThanOnce"] ?? 0 <= 20, "\(stats)")
                try await second.stop(workerPIDs: try await pids(second))
            }
        }

        @Test func sixtySecondsOfWebhookChaosKeepEveryPromise() async throws {
            try await withTemporaryDirectory { dir in
                let chaos = try BotclusterProcess(
                    ["--mode", "webhook", "--duration", "60", "--seed", "13", "--botcluster", botclusterBinary()], directory: dir, executable: siblingBinary("botcluster-chaos")
                )
                let status = await chaos.waitForExit()
                #expect(status == 0, "\(chaos.output.suffix(30).joined(separator: "\n"))")
                #expect(chaos.output.contains("PASS"))
                #expect(chaos.output.contains { $0.contains("chaos ground truth (webhook") })
            }
        }

        func waitForMoreReplies(_ emulator: EmulatorProcess, _ count: Double, _ when: String) async throws {
            let before = try await emulator.stats()["messagesReplied"] ?? 0
            try await emulator.waitFor("\(Int(count)) more replies \(when)") { ($0["messagesReplied"] ?? 0) >= before + count }
        }

        func scrape(_ cluster: TestCluster) async throws -> String {
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: try #require(cluster.httpURL) + "/metrics"), timeout: .seconds(10))
            return String(buffer: try await response.body.collect(upTo: 1 << 22))
        }
    }
}
