import BenchSupport
import ClusterCore
import Foundation

/// Runs a command to its end within `timeout`; its output (standard error with it). A command that fails or outlives
/// its deadline (it is killed then) throws, naming itself and its last lines.
///
/// posix_spawn, not Foundation's `Process`: `Process` learns that a child ended when a socket the child inherits
/// closes, so a command that leaves a daemon behind (`pg_ctl restart`) would never be seen to end (seen: pg_ctl a
/// zombie and the run waiting for good). Here the child inherits nothing but its standard streams, and the end is
/// `waitpid`'s.
func runCommand(_ argv: [String], directory: String = "/", timeout: Duration = .seconds(30)) async throws -> [String] {
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
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/usr/bin/env", &actions, nil, arguments, environment)
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
            if reaped == pid || (reaped < 0 && errno != EINTR) { ended = true; break }
            usleep(20_000)
        } else if waitpid(pid, &status, WNOHANG) == pid {
            ended = true
            open = false
            break
        }
    }
    guard ended else {
        kill(pid, SIGKILL)
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

/// The hosts of a chaos run, each in a network namespace of its own with two links: one to the platform (the
/// emulator) and one to the store (PostgreSQL), each a veth whose other end is a port of a bridge in this namespace.
/// Cutting a host's store link sets its bridge port down: every packet between that host and the database is lost
/// and no connection is told, as when a cable or a switch port fails; its platform link stays up.
///
/// Names carry this process's id, and the subnets are chosen from it, so runs side by side do not meet.
struct HostNetwork {
    let tag: String
    let octet: Int
    let hosts: Int

    /// The emulator's address, on the platform bridge.
    var platformAddress: String { "10.\(octet).1.1" }
    /// The database's address, on the store bridge.
    var storeAddress: String { "10.\(octet).2.1" }
    func namespace(_ host: Int) -> String { "\(tag)-\(host)" }
    func port(_ link: Character, _ host: Int) -> String { "\(tag)\(link)\(host)" }
    var bridges: [String] { ["\(tag)p", "\(tag)s"] }

    init(hosts: Int) {
        let pid = Int(getpid())
        tag = "bc\(pid % 100_000)"
        octet = 100 + pid % 100
        self.hosts = hosts
    }

    /// Creates the bridges, the namespaces and their links.
    func create() async throws {
        for (bridge, subnet) in zip(bridges, [1, 2]) {
            _ = try await runCommand(["ip", "link", "add", bridge, "type", "bridge"])
            _ = try await runCommand(["ip", "addr", "add", "10.\(octet).\(subnet).1/24", "dev", bridge])
            _ = try await runCommand(["ip", "link", "set", bridge, "up"])
        }
        for host in 0..<hosts {
            let ns = namespace(host)
            _ = try await runCommand(["ip", "netns", "add", ns])
            _ = try await runCommand(["ip", "-n", ns, "link", "set", "lo", "up"])
            for (link, (bridge, subnet)) in zip(["p", "s"] as [Character], zip(bridges, [1, 2])) {
                let inside = link == "p" ? "platform0" : "store0"
                _ = try await runCommand(["ip", "link", "add", port(link, host), "type", "veth", "peer", "name", inside, "netns", ns])
                _ = try await runCommand(["ip", "link", "set", port(link, host), "master", bridge, "up"])
                _ = try await runCommand(["ip", "-n", ns, "addr", "add", "10.\(octet).\(subnet).\(10 + host)/24", "dev", inside])
                _ = try await runCommand(["ip", "-n", ns, "link", "set", inside, "up"])
            }
        }
    }

    /// Cuts (or, with `up`, mends) the link between `host` and the database.
    func setStoreLink(_ host: Int, up: Bool) async throws {
        _ = try await runCommand(["ip", "link", "set", port("s", host), up ? "up" : "down"])
    }

    /// The processes still running in `host`'s namespace.
    func processes(in host: Int) async -> [Int32] {
        ((try? await runCommand(["ip", "netns", "pids", namespace(host)])) ?? []).compactMap { Int32($0) }
    }

    /// Kills what runs in the namespaces and removes them and the bridges at once, from a signal handler's thread
    /// (a run interrupted must not leave its links behind).
    func removeNow() {
        func run(_ argv: [String]) -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = argv
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.nullDevice
            guard (try? process.run()) != nil else { return "" }
            let output = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return String(decoding: output, as: UTF8.self)
        }
        for host in 0..<hosts {
            for pid in run(["ip", "netns", "pids", namespace(host)]).split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
            _ = run(["ip", "netns", "del", namespace(host)])
        }
        for bridge in bridges { _ = run(["ip", "link", "del", bridge]) }
    }

    /// Removes the namespaces (their links go with them) and the bridges; what is already gone is skipped.
    func remove() async {
        for host in 0..<hosts { _ = try? await runCommand(["ip", "netns", "del", namespace(host)]) }
        for bridge in bridges { _ = try? await runCommand(["ip", "link", "del", bridge]) }
    }
}

/// A user the hosts run as (they are not root in production either).
struct RunAs {
    let name: String
    let uid: uid_t
    let gid: gid_t

    init(_ name: String) throws {
        guard let entry = getpwnam(name) else {
            throw BenchError("no user \(name): create it (useradd --system \(name)) or name another with --user")
        }
        self.name = name
        uid = entry.pointee.pw_uid
        gid = entry.pointee.pw_gid
    }

    /// `command` as this user, through setpriv (which executes it in place: its process id is the command's).
    func command(_ command: [String]) -> [String] {
        ["setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--init-groups", "--"] + command
    }

    /// Gives `path` to this user.
    func own(_ path: String) throws {
        guard chown(path, uid, gid) == 0 else { throw BenchError("chown \(path): \(String(cString: strerror(errno)))") }
    }
}
