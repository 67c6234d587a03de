import ArgumentParser
import AsyncHTTPClient
import BotCluster
import ClusterCore
import ClusterIPC
import ClusterProtocol
import CSQLiteBench
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Foundation
import QQGateway
import RateBudget
import Supervisor
import Synchronization
import UserCache
import Worker

/// Load generators and measuring clients for scripts/bench.sh. Each subcommand prints `name value unit` lines.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "botcluster-bench",
        abstract: "Measuring clients for scripts/bench.sh.",
        subcommands: [EmulatorDispatch.self, EmulatorReplies.self, EndToEnd.self, BenchBotCommand.self, Admin.self, IPCBench.self, KillResumeBench.self, CacheHammer.self, CacheBench.self, BudgetBench.self, Chaos.self, RescaleBench.self]
    )
}

struct Target: ParsableArguments {
    @Option(help: "Emulator base URL, http://127.0.0.1:PORT.") var url: String
    @Option(help: "Rounds to run; the median is reported.") var rounds: Int = 3

    var host: String { String(url.split(separator: "/")[1].split(separator: ":")[0]) }
    var port: Int { Int(url.split(separator: ":").last!)! }
}

func post(_ url: String, _ body: String, token: String? = nil) async throws -> JSONValue {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    if let token { request.headers.add(name: "Authorization", value: "QQBot \(token)") }
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await benchHTTP.execute(request, timeout: .seconds(120))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    return try JSONValue.parse(String(buffer: bytes))
}

/// The bench's HTTP client: it trusts the PEM file `BOTCLUSTER_BENCH_TRUST_ROOTS` names besides the system's
/// roots (an emulator serving TLS with a certificate of its own).
let benchHTTP: HTTPClient = {
    guard let roots = ProcessInfo.processInfo.environment["BOTCLUSTER_BENCH_TRUST_ROOTS"],
        let tls = try? PlatformTLS.clientConfiguration(trustRoots: roots)
    else { return HTTPClient.shared }
    return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: .init(tlsConfiguration: tls))
}()

/// The emulator admin API's token: `BOTCLUSTER_BENCH_ADMIN_TOKEN`, which the emulators started for a bench name as
/// their `emulator.adminToken` (scripts/bench.sh sets it; the chaos check sets it for the emulator it starts).
let benchAdminToken = ProcessInfo.processInfo.environment["BOTCLUSTER_BENCH_ADMIN_TOKEN"] ?? "botcluster-bench-admin"

/// POSTs to the emulator's admin API.
func postAdmin(_ url: String, _ body: String) async throws -> JSONValue {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.headers.add(name: "Authorization", value: "Bearer \(benchAdminToken)")
    request.body = .bytes(ByteBuffer(string: body))
    let response = try await benchHTTP.execute(request, timeout: .seconds(120))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    let reply = try JSONValue.parse(String(buffer: bytes))
    guard response.status == .ok else { throw BenchError("\(url): HTTP \(response.status.code): \(reply.serialized())") }
    return reply
}

func get(_ url: String) async throws -> JSONValue {
    let response = try await benchHTTP.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
    let bytes = try await response.body.collect(upTo: 1 << 24)
    return try JSONValue.parse(String(buffer: bytes))
}

func token(_ base: String) async throws -> String {
    let reply = try await post(base + "/app/getAppAccessToken", #"{"appId":"\#(AppConfig.emulatorDefaultID)","clientSecret":"\#(AppConfig.emulatorDefaultSecret)"}"#)
    guard let token = reply["access_token"]?.stringValue else { throw BenchError("no token: \(reply.serialized())") }
    return token
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

final class Tally: Sendable {
    let count = Atomic<Int>(0)
    let target: Int
    let done: AsyncSignal<MonotonicInstant>
    init(target: Int) {
        self.target = target
        done = AsyncSignal()
    }
    func add() {
        if count.add(1, ordering: .relaxed).newValue == target { done.set(.now()) }
    }
}

struct EmulatorDispatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Dispatches/s the emulator pushes to connected shards.")
    @OptionGroup var target: Target
    @Option var shards = 4
    @Option var count = 100_000

    func run() async throws {
        let token = try await token(target.url)
        var rates: [Double] = []
        for _ in 0..<target.rounds {
            let tally = Tally(target: count)
            let ready = Tally(target: shards)
            var channels: [any Channel] = []
            for shard in 0..<shards {
                let identify = #"{"op":2,"d":{"token":"QQBot \#(token)","intents":\#(1 << 30),"shard":[\#(shard),\#(shards)],"properties":{}}}"#
                let handler = RawWebSocketHandler { buffer in
                    let head = buffer.getString(at: buffer.readerIndex, length: min(48, buffer.readableBytes)) ?? ""
                    if head.contains("AT_MESSAGE_CREATE") {
                        tally.add()
                    } else if head.contains("READY") {
                        ready.add()
                    }
                    return []
                }
                let channel = try await RawWebSocket.connect(host: target.host, port: target.port, path: "/websocket", handler: handler)
                try await RawWebSocket.send(identify, on: channel)
                channels.append(channel)
            }
            _ = try await ready.done.wait()
            let start = MonotonicInstant.now()
            _ = try await postAdmin(target.url + "/emulator/burst", #"{"count":\#(count)}"#)
            let end = try await tally.done.wait()
            rates.append(Double(count) / (end - start).seconds)
            for channel in channels { try? await channel.close() }
        }
        print("emulator.dispatch.rate \(Int(median(rates))) dispatches/s (\(shards) shards, \(count) per round, median of \(rates.count))")
    }
}

struct EmulatorReplies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reply POSTs/s the emulator accepts and records.")
    @OptionGroup var target: Target
    @Option var count = 50_000
    @Option var connections = 8
    @Option var window = 32

    func run() async throws {
        let token = try await token(target.url)
        var rates: [Double] = []
        for _ in 0..<target.rounds {
            // Collect real message ids and channels from a session, then answer each one once.
            let collected = Mutex<[(String, String)]>([])
            let tally = Tally(target: count)
            let ready = Tally(target: 1)
            let identify = #"{"op":2,"d":{"token":"QQBot \#(token)","intents":\#(1 << 30),"shard":[0,1],"properties":{}}}"#
            let handler = RawWebSocketHandler { buffer in
                let text = String(buffer: buffer)
                if text.contains("\"READY\"") { ready.add(); return [] }
                if let frame = try? JSONValue.parse(text), frame["t"]?.stringValue == "AT_MESSAGE_CREATE",
                    let id = frame["d"]?["id"]?.stringValue, let channel = frame["d"]?["channel_id"]?.stringValue
                {
                    collected.withLock { $0.append((id, channel)) }
                    tally.add()
                }
                return []
            }
            let channel = try await RawWebSocket.connect(host: target.host, port: target.port, path: "/websocket", handler: handler)
            try await RawWebSocket.send(identify, on: channel)
            _ = try await ready.done.wait()
            _ = try await postAdmin(target.url + "/emulator/burst", #"{"count":\#(count)}"#)
            _ = try await tally.done.wait()
            try? await channel.close()

            let messages = collected.withLock { $0 }
            var perConnection = [[(head: HTTPRequestHead, body: ByteBuffer)]](repeating: [], count: connections)
            for (index, (id, channelID)) in messages.enumerated() {
                let body = ByteBuffer(string: #"{"content":"pong","msg_id":"\#(id)"}"#)
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: "\(target.host):\(target.port)")
                headers.add(name: "Authorization", value: "QQBot \(token)")
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(body.readableBytes))
                let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/channels/\(channelID)/messages", headers: headers)
                perConnection[index % connections].append((head, body))
            }
            let start = MonotonicInstant.now()
            let results = try await withThrowingTaskGroup(of: [UInt: Int].self) { group in
                for requests in perConnection {
                    group.addTask { try await PipelinedHTTP.run(host: target.host, port: target.port, requests: requests, window: window) }
                }
                var total: [UInt: Int] = [:]
                for try await result in group { total.merge(result, uniquingKeysWith: +) }
                return total
            }
            let elapsed = (MonotonicInstant.now() - start).seconds
            guard results[200] == messages.count else { throw BenchError("not every reply was accepted: \(results)") }
            rates.append(Double(messages.count) / elapsed)
        }
        print("emulator.replies.rate \(Int(median(rates))) replies/s (\(connections) connections, \(count) per round, median of \(rates.count))")
    }
}

/// A burst through a bot connected to the emulator, timed from the burst's start to the last reply the emulator
/// recorded: for botcluster's worker and for botpy alike.
struct EndToEnd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "e2e", abstract: "Time a burst through a connected bot.")
    @Option var url: String
    @Option var count = 20_000
    @Option(help: "Replies that mark the end (count for a replying bot, 1 for a counting one).") var replies: Int?
    @Option var sessions = 1
    @Option var label = "bot"

    func run() async throws {
        let deadline = MonotonicInstant.now() + .seconds(120)
        while try await get(url + "/emulator/stats")["activeSessions"]?.intValue ?? 0 < sessions {
            guard MonotonicInstant.now() < deadline else { throw BenchError("no session connected to \(url)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        let before = try await get(url + "/emulator/stats")["messagesReplied"]?.intValue ?? 0
        let target = before + (replies ?? count)
        let burst = try await postAdmin(url + "/emulator/burst", #"{"count":\#(count)}"#)
        guard let startedAt = burst["startedAtMs"].flatMap({ if case .number(let n) = $0 { return n } else { return nil } }) else {
            throw BenchError("burst failed: \(burst.serialized())")
        }
        while true {
            let stats = try await get(url + "/emulator/stats")
            if (stats["messagesReplied"]?.intValue ?? 0) >= target, case .number(let end) = stats["lastReplyAtMs"] ?? .null {
                let seconds = (end - startedAt) / 1000
                print("e2e.\(label).rate \(Int(Double(count) / seconds)) events/s (\(count) in \(String(format: "%.3f", seconds)) s)")
                return
            }
            guard MonotonicInstant.now() < deadline else { throw BenchError("\(label): only \(stats["messagesReplied"]?.intValue ?? 0) of \(target) replies") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// A bot executable built on the library: `botcluster-bench bot <botcluster arguments>`. BENCH_HANDLER=count
/// counts events and replies once, to the BENCH_EXPECT-th; otherwise it replies like the example bot.
struct BenchBotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bot", abstract: "Run botcluster with a bench handler.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let expect = environment["BENCH_EXPECT"].flatMap(Int.init) ?? 20_000
        if environment["BENCH_HANDLER"] == "count" {
            await BotCluster.main(handler: CountingBenchBot(expect: expect), arguments: arguments)
        } else {
            await BotCluster.main(handler: ExampleBot(), arguments: arguments)
        }
    }
}

/// Counts AT_MESSAGE_CREATE and answers only the `expect`-th, so the emulator marks when all were handled.
final class CountingBenchBot: EventHandler {
    let expect: Int
    let seen = Atomic<Int>(0)
    init(expect: Int) { self.expect = expect }

    func atMessageCreate(_ ctx: Context, _ message: Message) async throws {
        if seen.add(1, ordering: .relaxed).newValue % expect == 0 {
            try await ctx.reply(to: message, content: "counted \(expect)")
        }
    }
}

/// Posts to the emulator's admin API: `botcluster-bench admin --url U --path /emulator/traffic --body '{"rate":1000}'`.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "POST to the emulator's admin API.")
    @Option var url: String
    @Option var path: String
    @Option var body: String

    func run() async throws {
        print(try await postAdmin(url + path, body).serialized())
    }
}

/// IPC round trips and one-way throughput over the supervisor's framing, beside a raw Unix-socket ping-pong of
/// the same frame size on the same machine in the same run.
struct IPCBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ipc", abstract: "IPC round trip and throughput beside raw Unix sockets.")
    @Option var count = 20_000

    final class Delegate: IPCServerDelegate {
        let received = Atomic<Int>(0)
        let target = Atomic<Int>(0)
        let done = Mutex<AsyncSignal<MonotonicInstant>?>(nil)
        func accept(_ hello: Hello, on connection: IPCConnection) -> String? {
            connection.send(.helloAck(supervisorPID: 0))
            return nil
        }
        func received(_ message: IPCMessage, on connection: IPCConnection) {
            switch message {
            case .ping(let id): connection.send(.pong(id: id))
            default:
                if received.add(1, ordering: .relaxed).newValue == target.load(ordering: .relaxed) {
                    done.withLock { $0 }?.set(.now())
                }
            }
        }
        func closed(_ connection: IPCConnection, reason: String?) {}
    }

    func run() async throws {
        let dir = "/tmp/botcluster-bench-\(getpid())"
        try RunDirectory.prepare(dir)
        defer {
            unlink(dir + "/ipc.sock")
            unlink(dir + "/raw.sock")
            rmdir(dir)
        }
        // IPC: request/reply, answered on the server's event loop.
        let delegate = Delegate()
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let server = IPCServer(configuration: .init(path: dir + "/ipc.sock"), delegate: delegate, logger: logger)
        try await server.start()
        let client = try await IPCClient.connect(path: dir + "/ipc.sock", hello: Hello(role: .control, pid: getpid()))
        var inbound = client.inbound.makeAsyncIterator()
        _ = await inbound.next()
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for _ in 0..<(count / 10) { _ = try await client.request(timeout: .seconds(5)) { .ping(id: $0) } }
        for _ in 0..<count {
            let start = MonotonicInstant.now()
            _ = try await client.request(timeout: .seconds(5)) { .ping(id: $0) }
            samples.append((MonotonicInstant.now() - start).seconds * 1e6)
        }
        samples.sort()
        // One-way: heartbeats as fast as they can be written, until the server has read them all.
        let signal = AsyncSignal<MonotonicInstant>()
        delegate.done.withLock { $0 = signal }
        delegate.target.store(count * 5, ordering: .relaxed)
        let start = MonotonicInstant.now()
        for _ in 0..<(count * 5) { client.send(.heartbeat(WorkerProgress(state: .ready))) }
        let end = try await signal.wait()
        let oneWay = Double(count * 5) / (end - start).seconds
        client.close()

        let loopSamples = try await eventLoopPingPong(path: dir + "/ipc.sock", count: count)
        await server.close()
        let raw = try rawPingPong(path: dir + "/raw.sock", count: count, frameSize: 13)
        print("ipc.el.rtt.p50 \(String(format: "%.1f", loopSamples[loopSamples.count / 2])) us")
        print("ipc.el.rtt.p99 \(String(format: "%.1f", loopSamples[loopSamples.count * 99 / 100])) us")
        print("ipc.rtt.p50 \(String(format: "%.1f", samples[samples.count / 2])) us")
        print("ipc.rtt.p99 \(String(format: "%.1f", samples[samples.count * 99 / 100])) us")
        print("ipc.oneway.rate \(Int(oneWay)) messages/s")
        print("raw.rtt.p50 \(String(format: "%.1f", raw.p50)) us")
        print("raw.rtt.p99 \(String(format: "%.1f", raw.p99)) us")
    }

    /// Pings from a channel handler on the event loop, the next ping sent as the pong arrives: the IPC round trip
    /// without the hop into a Swift task that a caller awaiting a reply adds.
    func eventLoopPingPong(path: String, count: Int) async throws -> [Double] {
        final class Pinger: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = IPCMessage
            typealias OutboundOut = IPCMessage
            let total: Int
            var sent = MonotonicInstant.now()
            var samples: [Double] = []
            let done: EventLoopPromise<[Double]>
            init(total: Int, done: EventLoopPromise<[Double]>) {
                self.total = total
                self.done = done
            }
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                switch unwrapInboundIn(data) {
                case .helloAck: break
                case .pong:
                    samples.append((MonotonicInstant.now() - sent).seconds * 1e6)
                    if samples.count == total {
                        done.succeed(samples)
                        return
                    }
                default: return
                }
                sent = MonotonicInstant.now()
                context.writeAndFlush(wrapOutboundOut(.ping(id: UInt64(samples.count))), promise: nil)
            }
        }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let done = loop.makePromise(of: [Double].self)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addIPCCodec()
                    try channel.pipeline.syncOperations.addHandler(Pinger(total: count + count / 10, done: done))
                }
            }
            .connect(unixDomainSocketPath: path).get()
        try await channel.writeAndFlush(IPCMessage.hello(Hello(role: .control, pid: getpid())))
        var samples = Array(try await done.futureResult.get().dropFirst(count / 10))
        try? await channel.close()
        samples.sort()
        return samples
    }

    /// A blocking ping-pong over a Unix stream socket: a thread echoes `frameSize` bytes back, the caller times.
    func rawPingPong(path: String, count: Int, frameSize: Int) throws -> (p50: Double, p99: Double) {
        unlink(path)
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = RawUnixSocket.withAddress(path) { bind(listener, $0, $1) }
        listen(listener, 1)
        let echo = Thread {
            let fd = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: frameSize)
            while true {
                var got = 0
                while got < frameSize {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, frameSize - got) }
                    if n <= 0 { close(fd); return }
                    got += n
                }
                _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, frameSize) }
            }
        }
        echo.start()
        guard let fd = RawUnixSocket.connect(path: path) else { throw BenchError("cannot connect to \(path)") }
        var buffer = [UInt8](repeating: 7, count: frameSize)
        var samples: [Double] = []
        for i in 0..<(count + count / 10) {
            let start = MonotonicInstant.now()
            _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, frameSize) }
            var got = 0
            while got < frameSize {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, frameSize - got) }
                if n <= 0 { break }
                got += n
            }
            if i >= count / 10 { samples.append((MonotonicInstant.now() - start).seconds * 1e6) }
        }
        close(fd)
        close(listener)
        samples.sort()
        return (samples[samples.count / 2], samples[samples.count * 99 / 100])
    }
}

/// Kills a worker of a running cluster `count` times and times each kill to the emulator's RESUMED.
struct KillResumeBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill-resume", abstract: "Time from kill -9 of a worker to its shard RESUMED.")
    @Option var url: String
    @Option var socket: String
    @Option var count = 20

    func run() async throws {
        var samples: [Double] = []
        for round in 0..<count {
            let status = try await controlStatus(socket)
            guard case .array(let workers) = status["workers"] ?? .null, !workers.isEmpty else { throw BenchError("no workers") }
            let worker = workers[round % workers.count]
            guard let pid = worker["pid"]?.intValue, worker["state"]?.stringValue == "ready" else {
                throw BenchError("worker \(round % workers.count) is not ready: \(worker.serialized())")
            }
            let before = try await get(url + "/emulator/stats")
            let resumes = before["resumes"]?.intValue ?? 0
            // The emulator's stats clock, mapped onto ours.
            let sampledAt = MonotonicInstant.now()
            guard case .number(let clockMs) = before["clockMs"] ?? .null else { throw BenchError("no clock") }
            let offsetMs = Double(sampledAt.nanoseconds) / 1e6 - clockMs
            let killedAt = MonotonicInstant.now()
            kill(Int32(pid), SIGKILL)
            while true {
                let stats = try await get(url + "/emulator/stats")
                if (stats["resumes"]?.intValue ?? 0) > resumes, case .number(let resumedMs) = stats["lastResumeAtMs"] ?? .null {
                    samples.append(resumedMs + offsetMs - Double(killedAt.nanoseconds) / 1e6)
                    break
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            // Let the replacement report ready, and stay ready past restart.resetAfter, before the next kill: each
            // kill is then a worker's first crash (restarted at once), not a crash loop (backed off).
            while true {
                let status = try await controlStatus(socket)
                if case .array(let workers) = status["workers"] ?? .null, workers.allSatisfy({ $0["state"]?.stringValue == "ready" }) { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            try await Task.sleep(for: .milliseconds(300))
        }
        samples.sort()
        print("kill.resumed.p50 \(String(format: "%.1f", samples[samples.count / 2])) ms (\(count) kills)")
        print("kill.resumed.max \(String(format: "%.1f", samples.last!)) ms")
    }
}

func controlStatus(_ socket: String) async throws -> JSONValue {
    let (ok, body) = try await IPCClient.control(path: socket, .status)
    guard ok else { throw BenchError("status failed: \(body)") }
    return try JSONValue.parse(body)
}

/// Writes and reads the same user cache file from this process as fast as it can: two of these at once is the
/// test that concurrent writers never see SQLITE_BUSY; alone it measures batched upserts.
struct CacheHammer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cache-hammer", abstract: "Hammer a user cache file with batched writes and reads.")
    @Option var path: String
    @Option var users = 2000
    @Option var batches = 200
    @Option var batchSize = 100

    func run() async throws {
        var logger = Logger(label: "hammer")
        logger.logLevel = .error
        let store = try UserStore.prepare(path: path, logger: logger)
        var errors = 0
        var written = 0
        let start = MonotonicInstant.now()
        for batch in 0..<batches {
            let population = users
            let rows = (0..<batchSize).map { i -> CachedUser in
                let id = (batch * batchSize + i) % population
                return CachedUser(id: String(id), username: "u\(id)-\(getpid())-\(batch)", avatar: nil, bot: false, updatedAt: Double(batch), shard: Int(getpid() % 100))
            }
            do {
                _ = try await store.upsert(rows)
                written += rows.count
                _ = try store.user(String(batch % population))
            } catch {
                errors += 1
                print("error: \(error)")
            }
        }
        let seconds = (MonotonicInstant.now() - start).seconds
        print("cache.hammer.errors \(errors)")
        print("cache.hammer.upserts \(Int(Double(written) / seconds)) rows/s")
    }
}

/// The user cache: an LRU hit, a miss read from SQLite through GRDB beside the same read in C, batched upserts
/// through GRDB beside the same in C.
struct CacheBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cache", abstract: "User cache lookups and writes beside plain C SQLite.")
    @Option var population = 10_000

    func run() async throws {
        let dir = "/tmp/botcluster-cache-bench-\(getpid())"
        try RunDirectory.prepare(dir)
        defer {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + file) }
            rmdir(dir)
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let store = try UserStore.prepare(path: dir + "/users.sqlite", logger: logger)
        var config = ClusterConfig.defaults.cache
        config.lruSize = population
        let directory = UserDirectory(store: store, configuration: .init(config), shard: 0, logger: logger)
        let users = (0..<population).map { CachedUser(id: String($0), username: "user\($0)", avatar: nil, bot: false, updatedAt: 0, shard: 0) }

        // Batched upserts: GRDB (the worker's writer), then C on a fresh file.
        let batch = 256
        var start = MonotonicInstant.now()
        for round in 0..<4 {
            for chunk in stride(from: 0, to: users.count, by: batch) {
                let rows = users[chunk..<min(chunk + batch, users.count)].map { user -> CachedUser in
                    var user = user
                    user.username += "-\(round)"
                    return user
                }
                _ = try await store.upsert(rows)
            }
        }
        let grdbUpserts = Double(population * 4) / (MonotonicInstant.now() - start).seconds
        let cUpserts = csqlite_batched_upserts(dir + "/c.sqlite", Int32(population * 4), Int32(batch))

        // Misses: point reads through the pool, beside C's prepared statement on the same file.
        let reads = 200_000
        start = MonotonicInstant.now()
        for i in 0..<reads { _ = try store.user(String(i % population)) }
        let grdbReads = Double(reads) / (MonotonicInstant.now() - start).seconds
        let cReads = csqlite_point_reads(dir + "/users.sqlite", Int32(population), Int32(reads))

        // Hits: the LRU in front.
        for user in users { directory.observe(id: user.id, username: user.username, avatar: nil, bot: false) }
        let hits = 1_000_000
        start = MonotonicInstant.now()
        for i in 0..<hits { _ = await directory.get(String(i % population)) }
        let hitNanos = Double((MonotonicInstant.now() - start).nanoseconds) / Double(hits)

        print("cache.hit.ns \(Int(hitNanos)) ns/lookup")
        print("cache.miss.rate \(Int(grdbReads)) lookups/s")
        print("cache.miss.c.rate \(Int(cReads)) lookups/s")
        print("cache.upsert.rate \(Int(grdbUpserts)) rows/s")
        print("cache.upsert.c.rate \(Int(cUpserts)) rows/s")
    }
}

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
