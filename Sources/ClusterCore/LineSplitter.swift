/// Cuts a byte stream (a child's output read in chunks) into lines: whole lines come out, a partial one waits.
public struct LineSplitter: Sendable {
    var pending: [UInt8] = []

    public init() {}

    /// Adds a chunk; returns the lines it completed, without their newline.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        pending.append(contentsOf: bytes)
        var lines: [String] = []
        var start = 0
        while let newline = pending[start...].firstIndex(of: 0x0A) {
            lines.append(String(decoding: pending[start..<newline], as: UTF8.self))
            start = newline + 1
        }
        pending.removeFirst(start)
        return lines
    }

    /// What is left after the last newline (at the end of the stream), and an empty splitter.
    public mutating func rest() -> String? {
        defer { pending = [] }
        return pending.isEmpty ? nil : String(decoding: pending, as: UTF8.self)
    }
}
