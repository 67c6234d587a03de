import ClusterCore
import Foundation
import Synchronization

/// Whether the process `pid` is alive (a zombie is not).
public func processAlive(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state != "Z" && state != "X"
}

/// A child process whose output is read line by line (for the lines the bench waits for).
public final class ChildProcess: Sendable {
    public let process: Process
    public let lines: AsyncStream<String>

    /// Starts `executable` in `directory`, this environment plus `environment`. Standard error is discarded, or
    /// appended to the file `errorLog` (created when missing), or read with standard output when `errorLog` is
    /// `ChildProcess.mergeErrors`.
    public init(_ executable: String, _ arguments: [String], directory: String, environment: [String: String] = [:], errorLog: String? = nil) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        switch errorLog {
        case nil: process.standardError = FileHandle.nullDevice
        case Self.mergeErrors?: process.standardError = pipe
        case let path?:
            guard FileManager.default.fileExists(atPath: path) || FileManager.default.createFile(atPath: path, contents: nil),
                let file = FileHandle(forWritingAtPath: path)
            else { throw BenchError("cannot write \(path)") }
            file.seekToEndOfFile()
            process.standardError = file
        }
        let (lines, continuation) = AsyncStream<String>.makeStream()
        self.lines = lines
        let pending = Mutex(LineSplitter(maxLine: 1 << 20))
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                continuation.finish()
                return
            }
            let complete = pending.withLock { $0.feed(data) }
            for line in complete { continuation.yield(line) }
        }
        try process.run()
    }

    /// `errorLog` for standard error read with standard output.
    public static let mergeErrors = "<standard output>"

    /// The first line (from now) containing `text`, or nil once the output ends.
    public func waitForLine(containing text: String) async -> String? {
        for await line in lines where line.contains(text) { return line }
        return nil
    }

    /// The first line (from now) containing each of `texts`, in whatever order they come; nil once the output ends
    /// before all came.
    public func waitForLines(containing texts: [String]) async -> [String: String]? {
        var found: [String: String] = [:]
        for await line in lines {
            for text in texts where found[text] == nil && line.contains(text) { found[text] = line }
            if found.count == texts.count { return found }
        }
        return nil
    }

    /// Sends the process a signal.
    public func signal(_ signal: Int32) { Foundation.kill(process.processIdentifier, signal) }
    /// Sends SIGTERM if the process still runs.
    public func terminate() { if process.isRunning { signal(SIGTERM) } }
    /// Sends SIGKILL if the process still runs.
    public func kill() { if process.isRunning { signal(SIGKILL) } }

    /// Waits for the process to end; its exit status.
    public func waitForExit() async -> Int32 {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                self.process.waitUntilExit()
                continuation.resume(returning: self.process.terminationStatus)
            }
        }
    }
}

/// A bench or check that could not go on, and why.
public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    /// An error that says what went wrong.
    public init(_ description: String) { self.description = description }
}
