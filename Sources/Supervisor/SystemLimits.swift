import ClusterCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the operating system lets this user run, checked before a launch or a scale starts processes: a cluster
/// that would hit a limit half way (the supervisor out of file descriptors, the user out of processes) fails with
/// a message naming the limit and the setting to raise, instead of crash-looping workers.
///
/// The check is pure (`problems(workers:)` over observed numbers); `observe()` reads the real ones.
public struct SystemLimits: Sendable, Equatable {
    /// The supervisor's open-file limit (soft, after `BotCluster.main` raised it to the hard one).
    public var openFiles: Int
    /// Descriptors the supervisor has open now.
    public var openFilesInUse: Int
    /// The user's task limit (RLIMIT_NPROC: processes and their threads); nil when it does not apply (unlimited,
    /// or root, whom the kernel does not hold to it).
    public var tasks: Int?
    /// Tasks this user runs now (every thread of every process).
    public var tasksInUse: Int
    /// The kernel's cap on a listening socket's queue (`net.core.somaxconn`); nil when unknown.
    public var listenBacklog: Int?
    /// Processors the workers see: each runs about two threads per processor (NIO's loops, Swift's pool).
    public var processors: Int
    /// Whether the gateway emulator runs in the supervisor's process (its connections are the supervisor's files).
    public var embeddedGateway: Bool

    /// Limits from their parts (tests give them; `observe` reads them from the system).
    public init(openFiles: Int, openFilesInUse: Int, tasks: Int?, tasksInUse: Int, listenBacklog: Int?, processors: Int, embeddedGateway: Bool) {
        self.openFiles = openFiles
        self.openFilesInUse = openFilesInUse
        self.tasks = tasks
        self.tasksInUse = tasksInUse
        self.listenBacklog = listenBacklog
        self.processors = processors
        self.embeddedGateway = embeddedGateway
    }

    /// Files the supervisor holds per worker: its IPC socket, its output pipe, its pidfd; with the gateway in this
    /// process, also the worker's websocket and at least one HTTP connection.
    public var filesPerWorker: Int { embeddedGateway ? 5 : 3 }
    /// Threads of an idle worker: main, output writer, cache writer and timers, plus NIO's event loops and Swift's
    /// concurrency pool, one each per processor (measured: 7 to 8 on 2 processors).
    public var tasksPerWorker: Int { 4 + 2 * max(1, processors) }
    /// Headroom for what the supervisor opens besides its workers (databases, the control socket, clients).
    public static let fileHeadroom = 64

    /// What stops `workers` more worker processes from running next to what runs now: `errors` would make the
    /// launch or scale fail part way, `warnings` may slow it. Each names the limit, what is needed and the fix.
    public func problems(workers: Int) -> (errors: [String], warnings: [String]) {
        var errors: [String] = []
        var warnings: [String] = []
        let files = openFilesInUse + workers * filesPerWorker + Self.fileHeadroom
        if files > openFiles {
            errors.append(
                "open files: \(workers) workers need about \(files) descriptors in the supervisor (\(filesPerWorker) per worker\(embeddedGateway ? " with the embedded gateway" : "") and \(openFilesInUse) open now), and its limit is \(openFiles). Raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit, --ulimit nofile= for a container)."
            )
        }
        if let tasks {
            let needed = tasksInUse + workers * tasksPerWorker
            if needed > tasks {
                errors.append(
                    "processes: \(workers) workers need about \(workers * tasksPerWorker) tasks (\(tasksPerWorker) threads each on \(processors) processors) beside the \(tasksInUse) this user runs now, and the user's limit is \(tasks). Raise it (ulimit -u, LimitNPROC= or TasksMax= in a systemd unit, pids-limit for a container)."
                )
            }
        }
        if let backlog = listenBacklog, backlog < workers {
            warnings.append(
                "net.core.somaxconn is \(backlog): at most \(backlog) of \(workers) workers can wait to be accepted at once, and one refused must restart. Raise it (sysctl -w net.core.somaxconn=\(max(4096, workers)))."
            )
        }
        return (errors, warnings)
    }

    /// The limits of this process and user now.
    public static func observe(embeddedGateway: Bool) -> SystemLimits {
        var files = rlimit()
        let openFiles = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files) == 0 ? clampToInt(files.rlim_cur) : Int.max
        var processes = rlimit()
        var tasks: Int?
        if geteuid() != 0, getrlimit(__rlimit_resource_t(__RLIMIT_NPROC.rawValue), &processes) == 0, processes.rlim_cur != rlim_t.max {
            tasks = clampToInt(processes.rlim_cur)
        }
        let backlog = (try? String(contentsOfFile: "/proc/sys/net/core/somaxconn", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        return SystemLimits(
            openFiles: openFiles, openFilesInUse: countEntries("/proc/self/fd"), tasks: tasks,
            tasksInUse: tasks == nil ? 0 : tasksOfThisUser(), listenBacklog: backlog,
            processors: ProcessInfo.processInfo.activeProcessorCount, embeddedGateway: embeddedGateway
        )
    }

    static func clampToInt(_ value: rlim_t) -> Int {
        value > rlim_t(Int.max) ? Int.max : Int(value)
    }

    static func countEntries(_ directory: String) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: directory).count) ?? 0
    }

    /// Every thread of every process of this user (what RLIMIT_NPROC counts), from /proc.
    static func tasksOfThisUser() -> Int {
        let uid = getuid()
        let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return processes.reduce(0) { total, name in
            var info = stat()
            guard name.first?.isNumber == true, stat("/proc/" + name, &info) == 0, info.st_uid == uid else { return total }
            return total + countEntries("/proc/" + name + "/task")
        }
    }
}
