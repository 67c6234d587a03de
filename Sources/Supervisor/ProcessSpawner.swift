import CBotSystem
import ClusterCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Starts worker processes and learns when they end.
///
/// Spawns happen on one long-lived thread (a child's PR_SET_PDEATHSIG fires when the *thread* that spawned it
/// exits, and pool threads come and go); one reaper thread waits for every child. Each child gets its own process
/// group, a clean signal state, /dev/null for input, and a pipe for its output, read on the event loop and written
/// to this process's standard error line by line with a prefix.
final class ProcessSpawner: @unchecked Sendable {
    struct Request {
        var arguments: [String]
        var environment: [String: String]
        var continuation: CheckedContinuation<(pid: Int32, output: Int32), any Error>
    }

    let executable: String
    let onExit: @Sendable (Int32, ExitStatus) -> Void
    let requests = Mutex<[Request]>([])
    let requestSignal = DispatchSemaphore(value: 0)
    let childSignal = DispatchSemaphore(value: 0)
    let logger: Logger

    init(executable: String, logger: Logger, onExit: @escaping @Sendable (Int32, ExitStatus) -> Void) {
        self.executable = executable
        self.onExit = onExit
        self.logger = logger
        let spawner = Thread { [unowned self] in self.spawnLoop() }
        spawner.name = "botcluster-spawner"
        spawner.start()
        let reaper = Thread { [unowned self] in self.reapLoop() }
        reaper.name = "botcluster-reaper"
        reaper.start()
    }

    /// The path of this executable (so a user's bot binary spawns itself), as it is on disk now.
    static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return CommandLine.arguments[0] }
        var path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // A binary replaced by a deploy shows as "(deleted)": spawn the new one at the same path.
        if path.hasSuffix(" (deleted)") { path.removeLast(10) }
        return path
    }

    /// Starts `executable arguments...` with `environment` added to this process's; returns its pid and the read
    /// end of its output pipe.
    func spawn(arguments: [String], environment: [String: String]) async throws -> (pid: Int32, output: Int32) {
        try await withCheckedThrowingContinuation { continuation in
            requests.withLock { $0.append(Request(arguments: arguments, environment: environment, continuation: continuation)) }
            requestSignal.signal()
        }
    }

    private func spawnLoop() {
        while true {
            requestSignal.wait()
            guard let request = requests.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            do {
                let result = try spawnNow(request.arguments, request.environment)
                childSignal.signal()
                request.continuation.resume(returning: result)
            } catch {
                request.continuation.resume(throwing: error)
            }
        }
    }

    private func spawnNow(_ arguments: [String], _ extra: [String: String]) throws -> (pid: Int32, output: Int32) {
        var fds: [Int32] = [0, 0]
        guard cbot_pipe_cloexec(&fds) == 0 else { throw SpawnError("cannot create an output pipe: \(lastErrorDescription())") }
        defer { close(fds[1]) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else {
            close(fds[0])
            throw SpawnError("cannot start \(executable): \(String(cString: strerror(status)))")
        }
        return (pid, fds[0])
    }

    private func reapLoop() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, 0)
            if pid > 0 {
                let low = status & 0x7F
                onExit(pid, low == 0 ? .exited((status >> 8) & 0xFF) : .signaled(low))
            } else if errno == ECHILD {
                childSignal.wait()
            }
        }
    }
}

struct SpawnError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Reads a child's output pipe on the event loop and writes each line to standard error with a prefix.
final class PrefixedLineWriter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let prefix: String
    var partial = ByteBuffer()

    init(prefix: String) { self.prefix = prefix }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        partial.writeBuffer(&buffer)
        var out = ""
        while let newline = partial.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - partial.readerIndex
            let line = partial.readString(length: length) ?? ""
            partial.moveReaderIndex(forwardBy: 1)
            out += prefix + line + "\n"
        }
        partial.discardReadBytes()
        if !out.isEmpty { writeToStandardError(out) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if partial.readableBytes > 0 {
            writeToStandardError(prefix + (partial.readString(length: partial.readableBytes) ?? "") + "\n")
        }
        context.fireChannelInactive()
    }
}

/// Follows a child's output pipe until it is closed (by the child and anything it started).
func followOutput(of fd: Int32, prefix: String) async {
    _ = try? await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(PrefixedLineWriter(prefix: prefix))
            }
        }
        .takingOwnershipOfDescriptor(input: fd)
        .get()
}

/// Writes text to standard error in one write where it fits.
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        offset += n
    }
}
