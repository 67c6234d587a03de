import Supervisor
import Testing

@Suite("system limits before a launch or a scale")
struct SystemLimitsTests {
    static let roomy = SystemLimits(
        openFiles: 1 << 20, openFilesInUse: 40, tasks: 1 << 16, tasksInUse: 200, listenBacklog: 4096, processors: 2, embeddedGateway: false
    )

    @Test func aThousandWorkersFitWhereTheLimitsAllowThem() {
        let (errors, warnings) = Self.roomy.problems(workers: 1024)
        #expect(errors.isEmpty)
        #expect(warnings.isEmpty)
    }

    @Test func tooFewOpenFilesNameTheNeedTheLimitAndTheFix() {
        var limits = Self.roomy
        limits.openFiles = 1024
        // 40 open + 3 per worker + 64 headroom: 328 workers need 1088.
        let (errors, _) = limits.problems(workers: 328)
        #expect(errors == [
            "open files: 328 workers need about 1088 descriptors in the supervisor (3 per worker and 40 open now), and its limit is 1024. Raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit, --ulimit nofile= for a container).",
        ])
        #expect(limits.problems(workers: 306).errors.isEmpty)
        limits.embeddedGateway = true
        #expect(limits.filesPerWorker == 5)
        #expect(!limits.problems(workers: 200).errors.isEmpty, "the embedded gateway's connections are the supervisor's files too")
    }

    @Test func tooFewTasksCountWhatTheUserRunsAlready() {
        var limits = Self.roomy
        limits.tasks = 4096
        limits.tasksInUse = 1000
        // 8 threads per worker on 2 processors: 387 workers fit beside 1000 tasks, 388 do not.
        #expect(limits.tasksPerWorker == 8)
        #expect(limits.problems(workers: 387).errors.isEmpty)
        let errors = limits.problems(workers: 388).errors
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("processes: 388 workers need about 3104 tasks (8 threads each on 2 processors) beside the 1000 this user runs now, and the user's limit is 4096.") == true)
        limits.tasks = nil
        #expect(limits.problems(workers: 388).errors.isEmpty, "no task limit applies (unlimited, or root)")
    }

    @Test func aShortListenQueueIsAWarningNotARefusal() {
        var limits = Self.roomy
        limits.listenBacklog = 128
        let (errors, warnings) = limits.problems(workers: 256)
        #expect(errors.isEmpty)
        #expect(warnings == ["net.core.somaxconn is 128: at most 128 of 256 workers can wait to be accepted at once, and one refused must restart. Raise it (sysctl -w net.core.somaxconn=4096)."])
    }

    @Test func theLimitsOfThisProcessAreRead() {
        let limits = SystemLimits.observe(embeddedGateway: false)
        #expect(limits.openFilesInUse > 0)
        #expect(limits.openFiles >= limits.openFilesInUse)
        #expect(limits.processors >= 1)
        if let backlog = limits.listenBacklog { #expect(backlog > 0) }
        if limits.tasks != nil { #expect(limits.tasksInUse > 0) }
    }
}
