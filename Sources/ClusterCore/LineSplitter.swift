/// Cuts a byte stream (a child's output read in chunks) into lines: whole lines come out, a partial one waits.
///
/// The one line splitter of the project: the supervisor's relay of worker output, the chaos check and the tests all
/// read children through it. A line longer than `maxLine` bytes comes out cut there, marked, so that a child that
/// writes without newlines costs `maxLine` bytes of memory, not its whole output.
public struct LineSplitter: Sendable {
    /// The longest line kept whole, in bytes.
    public let maxLine: Int
    var pending: [UInt8] = []

    /// A splitter with nothing pending that cuts lines at `maxLine` bytes (16 KiB by default).
    public init(maxLine: Int = 16 << 10) {
        self.maxLine = maxLine
    }

    /// Adds a chunk; returns the lines it completed, without their newline (a cut line ends in a marker saying so).
    /// The supervisor relays every worker's output through this: it searches each chunk for newlines and copies
    /// runs, not byte by byte.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        let chunk = Array(bytes)
        var lines: [String] = []
        var start = 0
        while start < chunk.count {
            let newline = chunk[start...].firstIndex(of: 0x0A)
            let end = newline ?? chunk.count
            var from = start
            // More than fits: the line comes out cut at `maxLine`, and what follows starts the next one.
            while end - from > maxLine - pending.count {
                let take = maxLine - pending.count
                pending += chunk[from..<(from + take)]
                lines.append(String(decoding: pending, as: UTF8.self) + " [line cut at \(maxLine) bytes]")
                pending.removeAll(keepingCapacity: true)
                from += take
            }
            pending += chunk[from..<end]
            if newline != nil {
                lines.append(String(decoding: pending, as: UTF8.self))
                pending.removeAll(keepingCapacity: true)
            }
            start = end + 1
        }
        return lines
    }

    /// What is left after the last newline (at the end of the stream), and an empty splitter.
    public mutating func rest() -> String? {
        defer { pending = [] }
        return pending.isEmpty ? nil : String(decoding: pending, as: UTF8.self)
    }
}
