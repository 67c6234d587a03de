import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Text for a file descriptor (standard error or output), written by a thread of its own: `write` never blocks its
/// caller.
///
/// The supervisor's event loops carry every worker's IPC; if they wrote to a standard error that nobody reads (a
/// full pipe, a stopped terminal), one blocked write would stop them all, and hung-worker detection with them. So
/// log lines and worker output are queued here, up to `capacity` bytes; beyond that, text is dropped and counted,
/// and the count is written once the descriptor takes text again.
public final class OutputWriter: Sendable {
    /// Standard error of this process.
    public static let standardError = OutputWriter(fd: 2)
    /// Standard output of this process, for lines printed where a blocking write must not happen (an event loop).
    public static let standardOutput = OutputWriter(fd: 1)
    /// Every writer made so far (each lives as long as the process: its thread holds it).
    static let all = Mutex<[OutputWriter]>([])

    struct State {
        var queued: [[UInt8]] = []
        var bytes = 0
        var dropped = 0
        var writing = false
    }

    let fd: Int32
    let capacity: Int
    let state = Mutex(State())
    let available = DispatchSemaphore(value: 0)

    /// A writer for `fd` holding up to `capacity` bytes (4 MiB by default); its thread runs as long as the process.
    public init(fd: Int32, capacity: Int = 4 << 20) {
        self.fd = fd
        self.capacity = capacity
        let thread = Thread { [self] in self.run() }
        thread.name = "botcluster-output"
        thread.start()
        Self.all.withLock { $0.append(self) }
    }

    /// Waits until every writer made so far has written what it holds, or `limit` passes (at exit).
    public static func flushAll(within limit: Duration) {
        let deadline = MonotonicInstant.now() + limit
        for writer in all.withLock({ $0 }) {
            writer.flush(within: deadline - MonotonicInstant.now())
        }
    }

    /// Queues `text`; drops it (counted) when `capacity` bytes are already waiting.
    public func write(_ text: String) {
        let bytes = Array(text.utf8)
        let queued = state.withLock { state -> Bool in
            guard state.bytes + bytes.count <= capacity else {
                state.dropped += bytes.count
                return false
            }
            state.queued.append(bytes)
            state.bytes += bytes.count
            return true
        }
        if queued { available.signal() }
    }

    /// Waits until everything queued is written, or `limit` passes (before a process exits).
    public func flush(within limit: Duration) {
        let deadline = MonotonicInstant.now() + limit
        while state.withLock({ !$0.queued.isEmpty || $0.writing }), MonotonicInstant.now() < deadline {
            usleep(1000)
        }
    }

    private func run() {
        while true {
            available.wait()
            let (chunks, dropped) = state.withLock { state -> ([[UInt8]], Int) in
                defer {
                    state.queued = []
                    state.dropped = 0
                    state.writing = true
                }
                return (state.queued, state.dropped)
            }
            if dropped > 0 {
                writeAll(fd, "[\(dropped) bytes of output dropped: the output was not being read]\n".utf8)
            }
            for chunk in chunks { writeAll(fd, chunk) }
            state.withLock { state in
                state.bytes -= chunks.reduce(0) { $0 + $1.count }
                state.writing = false
            }
        }
    }
}

/// Writes every byte to a file descriptor, retrying interrupted and short writes; gives up quietly when the
/// descriptor takes no more (a closed pipe): output is never worth dying for. The one write loop of the project.
public func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>) {
    let bytes = Array(bytes)
    bytes.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}

/// Writes a line to standard output at once (unbuffered), so a parent reading a pipe sees it as it is printed. It
/// may block: an event loop uses `OutputWriter.standardOutput` instead.
public func printLine(_ text: String) {
    writeAll(1, (text + "\n").utf8)
}

/// Writes a line to standard error at once.
public func printError(_ text: String) {
    writeAll(2, (text + "\n").utf8)
}

/// A `TextOutputStream` into an `OutputWriter` (for swift-log's `StreamLogHandler`).
public struct OutputWriterStream: TextOutputStream, Sendable {
    let writer: OutputWriter
    /// A stream into `writer`.
    public init(_ writer: OutputWriter) { self.writer = writer }
    /// Queues `string` on the writer (dropped, and counted, when the writer is full).
    public mutating func write(_ string: String) { writer.write(string) }
}
