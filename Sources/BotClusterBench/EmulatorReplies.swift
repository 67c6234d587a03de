import ArgumentParser
import BenchSupport
import ClusterCore
import NIOCore
import NIOHTTP1
import Synchronization

/// Reply POSTs per second the emulator accepts and records, sent over pipelined keep-alive connections.
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
