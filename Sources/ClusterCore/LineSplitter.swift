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
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        var lines: [String] = []
        for byte in bytes {
            if byte == 0x0A {
                lines.append(String(decoding: pending, as: UTF8.self))
                pending.removeAll(keepingCapacity: true)
            } else if pending.count == maxLine {
                lines.append(String(decoding: pending, as: UTF8.self) + " [line cut at \(maxLine) bytes]")
                pending.removeAll(keepingCapacity: true)
                pending.append(byte)
            } else {
                pending.append(byte)
            }
        }
        return lines
    }

    /// What is left after the last newline (at the end of the stream), and an empty splitter.
    public mutating func rest() -> String? {
        defer { pending = [] }
        return pending.isEmpty ? nil : String(decoding: pending, as: UTF8.self)
    }
}
