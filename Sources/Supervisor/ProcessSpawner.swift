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
/// exits, and pool threads come and go). Each child gets its own process group, a clean signal state, /dev/null
/// for input, and a pipe for its output, read on the event loop and queued to this process's standard error line
/// by line with a prefix.
///
/// Only the workers are reaped: one reaper thread polls a pidfd per child. `waitpid(-1)` would take the exit
/// status of any child the bot's own code starts (a bot built on the library is this very process).
final class ProcessSpawner: @unchecked Sendable {
    struct Request {
        var arguments: [String]
        var environment: [String: String]
        var tag: UInt64
        var continuation: CheckedContinuation<(pid: Int32, output: Int32), any Error>
    }

    let executable: String
    /// Called with a reaped child's pid, the tag it was spawned with, and how it ended.
    let onExit: @Sendable (Int32, UInt64, ExitStatus) -> Void
    let requests = Mutex<[Request]>([])
    let requestSignal = DispatchSemaphore(value: 0)
    /// Children alive (or not yet reaped) by pid, with the tag their spawn was asked with (the generation): what
    /// a worker's hello is checked against, recorded before the child can possibly connect.
    let children = Mutex<[Int32: UInt64]>([:])
    /// Children the reaper has not taken up yet, and the pipe that wakes it for them.
    let newChildren = Mutex<[Int32]>([])
    let reaperWake: (read: Int32, write: Int32)
    let logger: Logger
    /// Descriptors every child gets: this process's `parent` as the child's `child`.
    let inherited: [(parent: Int32, child: Int32)]

    init(executable: String, inherited: [(parent: Int32, child: Int32)] = [], logger: Logger, onExit: @escaping @Sendable (Int32, UInt64, ExitStatus) -> Void) {
        self.executable = executable
        self.inherited = inherited
        self.onExit = onExit
        self.logger = logger
        var fds: [Int32] = [-1, -1]
        if cbot_pipe_cloexec(&fds) == 0 {
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        }
        reaperWake = (fds[0], fds[1])
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
    /// end of its output pipe. `tag` is kept with the pid (see ``tag(of:)``).
    func spawn(arguments: [String], environment: [String: String], tag: UInt64) async throws -> (pid: Int32, output: Int32) {
        try await withCheckedThrowingContinuation { continuation in
            requests.withLock { $0.append(Request(arguments: arguments, environment: environment, tag: tag, continuation: continuation)) }
            requestSignal.signal()
        }
    }

    /// The tag a living child was spawned with, or nil when `pid` is no child of this spawner.
    func tag(of pid: Int32) -> UInt64? {
        children.withLock { $0[pid] }
    }

    private func spawnLoop() {
        while true {
            requestSignal.wait()
            guard let request = requests.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            do {
                let result = try spawnNow(request.arguments, request.environment, tag: request.tag)
                request.continuation.resume(returning: result)
            } catch {
                request.continuation.resume(throwing: error)
            }
        }
    }

    /// Variables of this process that its children must not inherit.
    static let supervisorOnly = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"]

    private func spawnNow(_ arguments: [String], _ extra: [String: String], tag: UInt64) throws -> (pid: Int32, output: Int32) {
        var fds: [Int32] = [0, 0]
        guard cbot_pipe_cloexec(&fds) == 0 else { throw SpawnError("cannot create an output pipe: \(lastErrorDescription())") }
        defer { close(fds[1]) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        for descriptor in inherited { posix_spawn_file_actions_adddup2(&actions, descriptor.parent, descriptor.child) }

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
        // The service manager speaks to the supervisor alone: a worker that inherited these would answer for it.
        for key in Self.supervisorOnly { environment[key] = nil }
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
        // Recorded here, on the spawning thread, microseconds after the fork: long before the child has loaded,
        // read its configuration and connected.
        children.withLock { $0[pid] = tag }
        newChildren.withLock { $0.append(pid) }
        var wake: UInt8 = 1
        _ = write(reaperWake.write, &wake, 1)
        return (pid, fds[0])
    }

    /// Waits for the children through one pidfd each (poll), reaping only them. On a kernel without pidfds
    /// (before Linux 5.3) each child gets a thread that waits for it alone.
    private func reapLoop() {
        var watched: [(fd: Int32, pid: Int32)] = []
        while true {
            for pid in newChildren.withLock({ list -> [Int32] in
                defer { list = [] }
                return list
            }) {
                let fd = cbot_pidfd_open(pid)
                if fd >= 0 {
                    watched.append((fd, pid))
                } else {
                    let waiter = Thread { [self] in self.reap(pid, options: 0) }
                    waiter.name = "botcluster-reaper-\(pid)"
                    waiter.start()
                }
            }
            var pollfds = [pollfd(fd: reaperWake.read, events: Int16(POLLIN), revents: 0)] + watched.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&pollfds, nfds_t(pollfds.count), -1)
            if ready < 0 { continue }
            if pollfds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 256)
                while read(reaperWake.read, &drain, drain.count) > 0 {}
            }
            var still: [(fd: Int32, pid: Int32)] = []
            for (index, child) in watched.enumerated() {
                if pollfds[index + 1].revents != 0 {
                    close(child.fd)
                    reap(child.pid, options: 0)
                } else {
                    still.append(child)
                }
            }
            watched = still
        }
    }

    /// Takes one child's exit status and reports it.
    private func reap(_ pid: Int32, options: Int32) {
        var status: Int32 = 0
        var result: Int32
        repeat { result = waitpid(pid, &status, options) } while result < 0 && errno == EINTR
        guard result == pid else { return }
        let tag = children.withLock { $0.removeValue(forKey: pid) } ?? 0
        let low = status & 0x7F
        onExit(pid, tag, low == 0 ? .exited((status >> 8) & 0xFF) : .signaled(low))
    }
}

struct SpawnError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Reads a child's output pipe on the event loop and queues each line, with a prefix, to this process's standard
/// error (never a blocking write on the event loop). Lines are cut by `LineSplitter`, long ones at its bound.
final class PrefixedLineWriter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let prefix: String
    let output: OutputWriter
    var lines = LineSplitter()

    init(prefix: String, output: OutputWriter = .standardError) {
        self.prefix = prefix
        self.output = output
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let complete = lines.feed(unwrapInboundIn(data).readableBytesView)
        if !complete.isEmpty { output.write(complete.map { prefix + $0 + "\n" }.joined()) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let tail = lines.rest() { output.write(prefix + tail + "\n") }
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


