import BenchSupport
import ClusterCore
import Foundation

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
        let run = Self.runNow
        for host in 0..<hosts {
            for pid in run(["ip", "netns", "pids", namespace(host)]).split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
            _ = run(["ip", "netns", "del", namespace(host)])
        }
        for bridge in bridges { _ = run(["ip", "link", "del", bridge]) }
    }

    /// Runs a short command to its end from a thread that may block (a signal handler's); its output.
    static func runNow(_ argv: [String]) -> String {
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
