import ClusterCore
import Foundation

/// Runs a command to its end within `timeout`; its output (standard error with it). A command that fails or outlives
/// its deadline (it is killed then) throws, naming itself and its last lines.
///
/// posix_spawn, not Foundation's `Process`: `Process` learns that a child ended when a socket the child inherits
/// closes, so a command that leaves a daemon behind (`pg_ctl restart`) would never be seen to end (seen: pg_ctl a
/// zombie and the run waiting for good). Here the child inherits nothing but its standard streams, and the end is
/// `waitpid`'s.
public func runCommand(_ argv: [String], directory: String = "/", timeout: Duration = .seconds(30)) async throws -> [String] {
    let deadline = MonotonicInstant.now() + timeout
    let result: Result<(Int32, String), BenchError> = await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: spawnAndWait(argv, directory: directory, deadline: deadline)) }
    }
    let (status, text) = try result.get()
    let output = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).dropLast(text.hasSuffix("\n") ? 1 : 0)
    guard status == 0 else {
        throw BenchError("\(argv.joined(separator: " ")): exit status \(status): \(output.suffix(5).joined(separator: " | "))")
    }
    return Array(output)
}

/// `runCommand`'s blocking part, on a thread of its own: the exit status and the output (at most 1 MiB kept).
private func spawnAndWait(_ argv: [String], directory: String, deadline: MonotonicInstant) -> Result<(Int32, String), BenchError> {
    let name = argv.joined(separator: " ")
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { return .failure(BenchError("\(name): pipe: \(String(cString: strerror(errno)))")) }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    // Every other descriptor open now is closed in the child (glibc's closefrom action is not visible from Swift;
    // a close of one that is no longer open is skipped).
    let inherited = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
    for fd in inherited where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
    let arguments = (["/usr/bin/env", "--chdir=\(directory)"] + argv).map { strdup($0) } + [nil]
    let environment = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (arguments + environment).forEach { free($0) } }
    // Every signal at its default and none blocked (the calling thread's mask and this process's ignored signals
    // are not the command's), in a process group of its own (a timeout kills the command and what it started).
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    var all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, arguments, environment)
    close(fds[1])
    defer { close(fds[0]) }
    guard spawned == 0 else { return .failure(BenchError("\(name): posix_spawn: \(String(cString: strerror(spawned)))")) }

    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    var status: Int32 = 0
    var ended = false
    var open = true
    while MonotonicInstant.now() < deadline {
        if open {
            var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 100) > 0 {
                let count = read(fds[0], &buffer, buffer.count)
                if count > 0 {
                    if output.count < 1 << 20 { output += buffer[..<count] }
                } else if count == 0 || errno != EINTR {
                    open = false
                }
            }
        }
        if !open {
            // The output ended (or a daemon the command left holds it): the command's own end decides.
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { ended = true; break }
            if reaped < 0 && errno != EINTR { return .failure(BenchError("\(name): waitpid: \(String(cString: strerror(errno)))")) }
            usleep(20_000)
        } else if waitpid(pid, &status, WNOHANG) == pid {
            ended = true
            open = false
            break
        }
    }
    guard ended else {
        kill(-pid, SIGKILL)
        waitpid(pid, &status, 0)
        return .failure(BenchError("\(name): no end within its deadline"))
    }
    // What the command wrote before it ended and is still in the pipe.
    var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
    while poll(&poller, 1, 0) > 0, case let count = read(fds[0], &buffer, buffer.count), count > 0 {
        if output.count < 1 << 20 { output += buffer[..<count] }
    }
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return .success((code, String(decoding: output, as: UTF8.self)))
}

/// The value of `operation`, or nil when it has none within `limit` (the operation is cancelled then; one that does
/// not end on cancellation goes on unseen, and its answer is dropped).
public func within<T: Sendable>(_ limit: Duration, _ operation: @escaping @Sendable () async -> T?) async -> T? {
    let first = AsyncStream<T?> { continuation in
        let work = Task { continuation.yield(await operation()) }
        let timer = Task {
            try? await Task.sleep(for: limit)
            continuation.yield(nil)
        }
        continuation.onTermination = { _ in
            work.cancel()
            timer.cancel()
        }
    }
    for await value in first { return value }
    return nil
}

extension ChildProcess {
    /// The process's exit status, or nil when it has not ended within `limit`.
    public func exitStatus(within limit: Duration) async -> Int32? {
        await within(limit) { await self.waitForExit() }
    }

    /// Asks the process to end (SIGTERM) and kills it when it has not within `grace`; its exit status.
    public func stop(grace: Duration = .seconds(10)) async -> Int32? {
        terminate()
        if let status = await exitStatus(within: grace) { return status }
        kill()
        return await exitStatus(within: .seconds(5))
    }
}
