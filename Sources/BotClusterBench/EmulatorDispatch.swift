import ArgumentParser
import BenchSupport
import ClusterCore
import NIOCore

/// Dispatches per second the emulator pushes to shards connected by a bare websocket client (what a client costs
/// is kept out of the figure).
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
