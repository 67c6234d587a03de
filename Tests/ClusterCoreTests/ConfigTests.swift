import ClusterCore
import Foundation
import Testing

@Suite("cluster.json")
struct ConfigTests {
    func issues(_ text: String, environment: [String: String] = [:]) -> [String] {
        do {
            _ = try ClusterConfig.parse(text, source: "cluster.json", environment: environment)
            return []
        } catch {
            return error.issues.map(\.description)
        }
    }

    @Test func emptyDocumentGivesTheDefaults() throws {
        let config = try ClusterConfig.parse("{}")
        #expect(config.gateway.embedded)
        #expect(config.shards.count == .fixed(4))
        #expect(config.supervisor.heartbeatInterval == .milliseconds(500))
        #expect(config.supervisor.socket == "run/botcluster.sock")
        #expect(config.rateBudget.globalRate == 50)
        #expect(config.emulator.restRate == 50)
        #expect(config.app.id == AppConfig.emulatorDefaultID)
    }

    @Test func shippedClusterJSONIsValid() throws {
        let text = try readTextFile(#filePath.replacingOccurrences(of: "Tests/ClusterCoreTests/ConfigTests.swift", with: "cluster.json")).get()
        let config = try ClusterConfig.parse(text)
        #expect(config.gateway.embedded)
        #expect(config.shards.count == .fixed(4))
    }

    @Test func shardCountOutOfRangeNamesKeyAndValue() {
        #expect(issues(#"{"shards": {"count": 0}}"#) == ["shards.count: must be 1...1024, got 0"])
        #expect(issues(#"{"shards": {"count": 2000}}"#) == ["shards.count: must be 1...1024, got 2000"])
        #expect(issues(#"{"shards": {"count": "many"}}"#) == [#"shards.count: must be 1...1024 or "auto", got "many""#])
    }

    @Test func autoShardCount() throws {
        #expect(try ClusterConfig.parse(#"{"shards": {"count": "auto"}}"#).shards.count == .auto)
    }

    @Test func unknownKeysSuggestTheNearestName() {
        #expect(issues(#"{"supervisor": {"hartbeat": {}}}"#) == [#"supervisor.hartbeat: unknown key; did you mean "heartbeat"?"#])
        #expect(issues(#"{"shard": {}}"#) == [#"shard: unknown key; did you mean "shards"?"#])
        #expect(issues(#"{"emulator": {"traffic": {"rat": 5}}}"#) == [#"emulator.traffic.rat: unknown key; did you mean "rate"?"#])
    }

    @Test func missingEnvironmentVariableIsAnError() {
        #expect(issues(#"{"app": {"secret": "env:QQ_SECRET"}}"#) == [#"app.secret: environment variable QQ_SECRET (named by "env:QQ_SECRET") is not set"#])
    }

    @Test func secretFromEnvironmentIsResolvedAndRedacted() throws {
        let config = try ClusterConfig.parse(
            #"{"gateway": {"embedded": false}, "app": {"id": "42", "secret": "env:QQ_SECRET"}}"#,
            environment: ["QQ_SECRET": "s3cr3t-value"]
        )
        #expect(config.app.secret.reveal() == "s3cr3t-value")
        #expect("\(config.app.secret)" == "<redacted>")
        let printed = config.normalized.serialized(pretty: true)
        #expect(!printed.contains("s3cr3t-value"))
        #expect(printed.contains(#""secret": "env:QQ_SECRET""#))
        #expect(config.gateway.url == GatewayConfig.platformURL)
        #expect(config.gateway.tokenURL == GatewayConfig.platformTokenURL)
    }

    @Test func literalSecretIsNeverPrinted() throws {
        let config = try ClusterConfig.parse(#"{"gateway": {"embedded": false}, "app": {"id": "42", "secret": "literal-secret"}}"#)
        #expect(!config.normalized.serialized().contains("literal-secret"))
    }

    @Test func malformedJSONReportsLineAndColumn() {
        #expect(issues("{\n  \"shards\": {\n    \"count\": 4,\n  }\n}") == ["malformed JSON at line 4, column 3: unexpected '}', a quoted key was expected"])
        #expect(issues("{\"a\": tru}") == ["malformed JSON at line 1, column 7: invalid literal, expected 'true'"])
        #expect(issues("") == ["malformed JSON at line 1, column 1: the document is empty"])
        #expect(issues("[1, 2]") == ["the document must be a JSON object, got an array"])
    }

    @Test func durationsNeedAUnit() {
        #expect(issues(#"{"supervisor": {"heartbeat": {"interval": 250}}}"#) == [#"supervisor.heartbeat.interval: must be a duration such as "500ms", "5s" or "2m", got a number"#])
        #expect(issues(#"{"supervisor": {"heartbeat": {"interval": "fast"}}}"#) == [#"supervisor.heartbeat.interval: must be a duration such as "500ms", "5s" or "2m", got "fast""#])
        #expect(issues(#"{"supervisor": {"heartbeat": {"interval": "2h"}}}"#) == [#"supervisor.heartbeat.interval: must be 10ms...1m, got "2h""#])
    }

    @Test func durationParsing() {
        #expect(DurationFormat.parse("500ms") == .milliseconds(500))
        #expect(DurationFormat.parse("1.5s") == .milliseconds(1500))
        #expect(DurationFormat.parse("2m") == .seconds(120))
        #expect(DurationFormat.parse("24h") == .seconds(86_400))
        #expect(DurationFormat.parse("7") == nil)
        #expect(DurationFormat.parse("-1s") == nil)
        #expect(DurationFormat.format(.milliseconds(1500)) == "1500ms")
        #expect(DurationFormat.format(.seconds(120)) == "2m")
        #expect(DurationFormat.human(.nanoseconds(4_870_992)) == "4.87ms")
        #expect(DurationFormat.human(.microseconds(312)) == "312us")
        #expect(DurationFormat.human(.milliseconds(1500)) == "1.50s")
    }

    @Test func everyProblemIsReportedNotOnlyTheFirst() {
        let found = issues(#"{"shards": {"count": 0}, "restart": {"jitter": 3}, "log": {"level": "loud"}}"#)
        #expect(found == [
            "shards.count: must be 1...1024, got 0",
            "restart.jitter: must be 0...1, got 3",
            #"log.level: must be one of "trace", "debug", "info", "notice", "warning", "error", "critical", got "loud""#,
        ])
    }

    @Test func wrongTypes() {
        #expect(issues(#"{"gateway": {"embedded": "yes"}}"#) == ["gateway.embedded: must be true or false, got a string"])
        #expect(issues(#"{"shards": 4}"#) == ["shards: must be an object, got a number"])
        #expect(issues(#"{"worker": {"maxInFlight": 2.5}}"#) == ["worker.maxInFlight: must be a whole number, got 2.5"])
    }

    @Test func intentsByName() throws {
        #expect(try ClusterConfig.parse(#"{"gateway": {"intents": ["GUILDS", "PUBLIC_GUILD_MESSAGES"]}}"#).gateway.intents == [.guilds, .publicGuildMessages])
        #expect(issues(#"{"gateway": {"intents": ["PUBLIC_GUILD_MESSAGE"]}}"#) == [#"gateway.intents[0]: unknown intent "PUBLIC_GUILD_MESSAGE"; did you mean "PUBLIC_GUILD_MESSAGES"?"#])
    }

    @Test func externalGatewayNeedsCredentialsAndEmbeddedIgnoresURLs() {
        #expect(issues(#"{"gateway": {"embedded": false}}"#) == [
            "app.id: is required when the gateway is not embedded",
            #"app.secret: is required when the gateway is not embedded (use "env:NAME" to keep it out of the file)"#,
        ])
        #expect(issues(#"{"gateway": {"url": "http://127.0.0.1:8080"}}"#) == [#"gateway.embedded: is true, so url and tokenURL would be ignored: set "embedded": false to use them"#])
        #expect(issues(#"{"gateway": {"embedded": false, "url": "ftp://x"}, "app": {"id": "1", "secret": "x"}}"#) == [#"gateway.url: must be a URL starting with http:// or https://, got "ftp://x""#])
    }

    @Test func crossFieldChecks() {
        #expect(issues(#"{"emulator": {"sessionStartLimit": {"total": 5, "remaining": 9}}}"#) == ["emulator.sessionStartLimit.remaining: must not exceed total (5), got 9"])
        #expect(issues(#"{"emulator": {"heartbeatInterval": "5s", "heartbeatTimeout": "5s"}}"#) == ["emulator.heartbeatTimeout: must be longer than heartbeatInterval (5s)"])
    }

    @Test func normalizedConfigRoundTrips() throws {
        let config = try ClusterConfig.parse(#"{"shards": {"count": 6}, "supervisor": {"heartbeat": {"interval": "1s"}}}"#)
        let again = try ClusterConfig.parse(config.normalized.serialized(pretty: true).replacingOccurrences(of: "\"<redacted>\"", with: "\"x\""))
        #expect(again.shards.count == .fixed(6))
        #expect(again.supervisor.heartbeatInterval == .seconds(1))
    }

    @Test func aKeyWrittenTwiceIsAnErrorNamingIt() {
        // The first, invalid value must not hide behind the second.
        let found = issues(#"{"shards": {"count": 0}, "shards": {"count": 4}, "log": {"level": "info", "level": "debug"}}"#)
        #expect(found.contains("shards: appears more than once; write each key once"))
        #expect(found.contains("log.level: appears more than once; write each key once"))
    }

    @Test func anOversizedFileIsRefusedBeforeItIsParsed() throws {
        let huge = "{\"" + String(repeating: "k", count: ClusterConfig.maxFileSize) + "\": 1}"
        #expect(issues(huge).first?.hasPrefix("the document is") == true)
        let path = NSTemporaryDirectory() + "huge-" + UUID().uuidString.prefix(8) + ".json"
        try huge.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try ClusterConfig.load(path: path, environment: [:])
            Issue.record("a file over the limit was read")
        } catch {
            #expect(error.description.contains("a configuration holds at most \(ClusterConfig.maxFileSize)"))
        }
        // A long unknown key is reported without comparing it against every known one.
        let long = "{\"" + String(repeating: "q", count: 200_000) + "\": 1}"
        #expect(issues(long).count == 1)
    }

    @Test func aSocketPathTooLongForUnixSocketsIsReportedByConfigCheck() {
        let found = issues(#"{"supervisor": {"runDirectory": "\#(String(repeating: "d", count: 120))"}}"#)
        #expect(found.contains { $0.hasPrefix("supervisor.runDirectory: the socket path") && $0.contains("at most 107") })
    }

    @Test func commandsThatNeedNoSecretReadTheFileWithoutIt() throws {
        let text = #"{"gateway": {"embedded": false}, "app": {"id": "42", "secret": "env:UNSET_SECRET_VARIABLE"}}"#
        #expect(issues(text) == ["app.secret: environment variable UNSET_SECRET_VARIABLE (named by \"env:UNSET_SECRET_VARIABLE\") is not set"])
        let config = try ClusterConfig.parse(text, secrets: .notNeeded)
        #expect(config.app.secret.reveal().isEmpty)
        #expect(config.supervisor.socket == "run/botcluster.sock")
    }

    @Test func trustRootsAndEmulatorTLSNameReadableFiles() {
        let found = issues(#"{"gateway": {"trustRoots": "/nonexistent/ca.pem"}, "emulator": {"tls": {"certificate": "/nonexistent/cert.pem"}}}"#)
        #expect(found.contains { $0.hasPrefix("gateway.trustRoots: cannot read \"/nonexistent/ca.pem\"") })
        #expect(found.contains { $0.hasPrefix("emulator.tls.certificate: cannot read") })
    }
}

@Suite("shard math")
struct ShardMathTests {
    @Test func guildRouting() {
        #expect(ShardMath.shard(forGuild: 5 << 22, total: 4) == 1)
        #expect(ShardID(1, of: 4).covers(guildID: 5 << 22 | 123))
        #expect(ShardMath.bucket(ofShard: 7, maxConcurrency: 4) == 3)
        #expect(ShardMath.recommendedShards(guilds: 16, guildsPerShard: 4) == 4)
        #expect(ShardMath.recommendedShards(guilds: 17, guildsPerShard: 4) == 5)
        #expect(ShardID(parsing: "2/4") == ShardID(2, of: 4))
        #expect(ShardID(parsing: "4/4") == nil)
    }
}

@Suite("JSON")
struct JSONValueTests {
    @Test func parsesAndPrints() throws {
        let value = try JSONValue.parse(#"{"a": [1, 2.5, "x\n\u00e9\ud83d\ude00"], "b": {"c": null, "d": true}}"#)
        #expect(value["a"] == .array([.number(1), .number(2.5), .string("x\n\u{E9}\u{1F600}")]))
        #expect(value["b"]?["d"] == .bool(true))
        #expect(try JSONValue.parse(value.serialized()) == value)
    }

    @Test func rejectsTrailingGarbage() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse("{} x") }
    }
}

@Suite("line splitter")
struct LineSplitterTests {
    @Test func wholeLinesComeOutAndAPartialOneWaits() {
        var splitter = LineSplitter()
        #expect(splitter.feed(Array("ab\ncd".utf8)) == ["ab"])
        #expect(splitter.feed(Array("e\n\nf".utf8)) == ["cde", ""])
        #expect(splitter.rest() == "f")
        #expect(splitter.rest() == nil)
    }

    @Test func aLineLongerThanTheBoundIsCutAndMarked() {
        var splitter = LineSplitter(maxLine: 4)
        #expect(splitter.feed(Array("abcd\nabcdefghij".utf8)) == ["abcd", "abcd [line cut at 4 bytes]", "efgh [line cut at 4 bytes]"])
        #expect(splitter.rest() == "ij")
    }

    /// However the stream is chunked, the lines are those a byte-at-a-time reading gives.
    @Test func chunksOfAnySizeGiveTheLinesOfAByteAtATimeReading() {
        func reference(_ bytes: [UInt8], maxLine: Int) -> [String] {
            var lines: [String] = []
            var pending: [UInt8] = []
            for byte in bytes {
                if byte == 0x0A {
                    lines.append(String(decoding: pending, as: UTF8.self))
                    pending = []
                } else if pending.count == maxLine {
                    lines.append(String(decoding: pending, as: UTF8.self) + " [line cut at \(maxLine) bytes]")
                    pending = [byte]
                } else {
                    pending.append(byte)
                }
            }
            if !pending.isEmpty { lines.append(String(decoding: pending, as: UTF8.self)) }
            return lines
        }
        var rng = SplitMix64(seed: 9)
        for round in 0..<300 {
            let maxLine = 1 + Int(rng.next() % 12)
            let stream = (0..<Int(rng.next() % 200)).map { _ in rng.next() % 5 == 0 ? UInt8(0x0A) : UInt8(0x61 + rng.next() % 26) }
            var splitter = LineSplitter(maxLine: maxLine)
            var lines: [String] = []
            var offset = 0
            while offset < stream.count {
                let size = 1 + Int(rng.next() % 40)
                lines += splitter.feed(stream[offset..<min(offset + size, stream.count)])
                offset += size
            }
            if let rest = splitter.rest() { lines.append(rest) }
            #expect(lines == reference(stream, maxLine: maxLine), "round \(round), maxLine \(maxLine)")
        }
    }
}

@Suite("http.listen and the service manager")
struct HTTPConfigTests {
    @Test func listenAddressesParseOrSayWhatIsWrong() throws {
        #expect(try ListenAddress.parse("127.0.0.1:9464").get() == ListenAddress(host: "127.0.0.1", port: 9464))
        #expect(try ListenAddress.parse("[::1]:0").get() == ListenAddress(host: "::1", port: 0))
        #expect(try ListenAddress.parse("[::1]:0").get().description == "[::1]:0")
        for bad in ["9464", ":9464", "host:99999", "host:http", "::1:9464", "[::1]9464"] {
            #expect(throws: ListenAddressError.self, "\(bad)") { try ListenAddress.parse(bad).get() }
        }
    }

    @Test func systemdNotificationsReachADatagramSocketAndNothingWithoutOne() throws {
        #expect(!SystemdNotifier(environment: [:]).isActive)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"]).watchdogInterval == .seconds(2))
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"]).watchdogInterval == nil)
        // An abstract-namespace socket, as systemd uses in containers.
        let name = "botcluster-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in name.utf8.enumerated() { raw[i + 1] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + name.utf8.count)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        try #require(bound == 0)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "@" + name])
        #expect(notifier.notify(["READY=1", "STATUS=ready\nINJECTED=1"]))
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(count > 0)
        #expect(String(decoding: buffer[0..<max(0, count)], as: UTF8.self) == "READY=1\nSTATUS=ready")
    }
}

@Suite("cluster.json: webhook mode")
struct WebhookConfigTests {
    func issues(_ text: String) -> [String] {
        do {
            _ = try ClusterConfig.parse(text, source: "cluster.json")
            return []
        } catch {
            return error.issues.map(\.description)
        }
    }

    @Test func theDefaultsAreTheWebsocketWithAnIngressReadyOnThePlatformsPort() throws {
        let config = try ClusterConfig.parse("{}")
        #expect(config.gateway.mode == .websocket)
        #expect(config.webhook.listen == ListenAddress(host: "0.0.0.0", port: 8443))
        #expect(config.webhook.path == "/qqbot/callback")
        #expect(config.webhook.tls == nil)
        #expect(config.emulator.delivery == .websocket)
        let webhook = try ClusterConfig.parse(#"{"gateway": {"mode": "webhook"}, "webhook": {"listen": "127.0.0.1:0", "streamLimit": 10}}"#)
        #expect(webhook.gateway.mode == .webhook && webhook.webhook.listen.port == 0 && webhook.webhook.streamLimit == 10)
        #expect(webhook.normalized["gateway"]?["mode"]?.stringValue == "webhook")
    }

    @Test func aWrongModePathBodyLimitOrHalfATLSPairIsNamed() {
        #expect(issues(#"{"gateway": {"mode": "http"}}"#).contains { $0.contains("gateway.mode") && $0.contains("\"webhook\"") })
        #expect(issues(#"{"webhook": {"path": "callback"}}"#).contains { $0.contains("webhook.path") && $0.contains("absolute path") })
        #expect(issues(#"{"webhook": {"maxBodyBytes": 10}}"#).contains { $0.contains("webhook.maxBodyBytes") })
        #expect(issues(#"{"webhook": {"tls": {"certificate": "/etc/hostname"}}}"#).contains { $0.contains("webhook.tls") && $0.contains("both certificate and key") })
        #expect(issues(#"{"emulator": {"delivery": "pigeon"}}"#).contains { $0.contains("emulator.delivery") })
    }

    @Test func theIngressMayNotTakeTheStatusPortNorOutliveTheMemoryOfHandledIDs() {
        #expect(issues(#"{"gateway": {"mode": "webhook"}, "http": {"listen": "0.0.0.0:9000"}, "webhook": {"listen": "127.0.0.1:9000"}}"#).contains {
            $0.contains("webhook.listen") && $0.contains("http.listen")
        })
        // The same port in websocket mode: the ingress does not run.
        #expect(issues(#"{"http": {"listen": "0.0.0.0:9000"}, "webhook": {"listen": "127.0.0.1:9000"}}"#).isEmpty)
        #expect(issues(#"{"gateway": {"mode": "webhook"}, "exactlyOnce": {"ttl": "5m"}}"#).contains {
            $0.contains("exactlyOnce.ttl") && $0.contains("twice webhook.timestampWindow")
        })
        #expect(issues(#"{"gateway": {"mode": "webhook"}, "exactlyOnce": {"ttl": "5m"}, "webhook": {"timestampWindow": "2m"}}"#).isEmpty)
    }
}

@Suite("cluster.json: the store")
struct StoreConfigTests {
    func issues(_ text: String, environment: [String: String] = [:]) -> [String] {
        ConfigTests().issues(text, environment: environment)
    }

    @Test func sqliteIsTheDefaultAndPostgresTakesAURLAndAPasswordFromTheEnvironment() throws {
        let config = try ClusterConfig.parse("{}")
        #expect(config.store.postgres == nil)
        #expect(config.normalized["store"]?.stringValue == "sqlite")
        let shared = try ClusterConfig.parse(
            #"{"store": {"postgres": "postgres://bot@db.internal/botcluster", "password": "env:PGPASS", "tls": "require"}}"#,
            environment: ["PGPASS": "hunter2"]
        )
        let postgres = try #require(shared.store.postgres)
        #expect(postgres.host == "db.internal" && postgres.port == 5432 && postgres.user == "bot" && postgres.database == "botcluster")
        #expect(postgres.password?.reveal() == "hunter2" && postgres.tls)
        #expect(postgres.leaseTTL == .seconds(10) && postgres.renewInterval == .seconds(2) && postgres.fenceMargin == .seconds(2))
        // The normalized document (what `config check` prints) never shows the password.
        let printed = shared.normalized.serialized()
        #expect(!printed.contains("hunter2") && printed.contains("env:PGPASS"))
        let v6 = try #require(try ClusterConfig.parse(#"{"store": {"postgres": "postgresql://bot@[::1]:6543/db"}}"#).store.postgres)
        #expect(v6.host == "::1" && v6.port == 6543 && v6.displayURL == "postgres://bot@[::1]:6543/db")
    }

    @Test func aPasswordInTheURLAMissingPartOrTimingsThatCannotRenewAreNamed() {
        #expect(issues(#"{"store": {"postgres": "postgres://bot:secret@db/x"}}"#).contains { $0.contains("store.postgres") && $0.contains("env:NAME") && !$0.contains("secret@") })
        #expect(issues(#"{"store": {"postgres": "postgres://db:5432/x"}}"#).contains { $0.contains("store.postgres") && $0.contains("names no user") })
        #expect(issues(#"{"store": {"postgres": "postgres://bot@db:5432"}}"#).contains { $0.contains("names no database") })
        #expect(issues(#"{"store": {"postgres": "mysql://bot@db/x"}}"#).contains { $0.contains("must start with postgres://") })
        #expect(issues(#"{"store": "redis"}"#).contains { $0.contains("store") && $0.contains("\"sqlite\"") })
        #expect(issues(#"{"store": {"password": "env:X"}}"#, environment: ["X": "y"]).contains { $0.contains("store.postgres") && $0.contains("is required") })
        #expect(issues(#"{"store": {"postgres": "postgres://bot@db/x", "leaseTTL": "3s", "renewInterval": "1s", "fenceMargin": "1s", "timeout": "1s"}}"#)
            .contains { $0.contains("store.leaseTTL") && $0.contains("two renewals") })
        #expect(issues(#"{"store": {"postgres": "postgres://bot@db/x", "password": "env:UNSET_PASSWORD"}}"#).contains { $0.contains("UNSET_PASSWORD") && $0.contains("not set") })
        #expect(issues(#"{"gateway": {"mode": "webhook"}, "store": {"postgres": "postgres://bot@db/x"}}"#)
            .contains { $0.contains("gateway.mode") && $0.contains("store.postgres") && $0.contains("\"websocket\"") })
        #expect(issues(#"{"gateway": {"mode": "webhook"}}"#).isEmpty)
    }
}
