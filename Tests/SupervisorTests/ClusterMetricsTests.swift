import ClusterCore
import ClusterProtocol
import Testing

@testable import Supervisor

@Suite("cluster metrics")
struct ClusterMetricsTests {
    func counts(events: Int64, handlerSeconds: [Double] = [], heartbeat: [Double] = []) -> WorkerMetrics {
        var m = WorkerMetrics()
        m.eventsByType["AT_MESSAGE_CREATE"] = events
        for value in handlerSeconds { m.handlerDuration.record(value) }
        for value in heartbeat { m.heartbeatLatency.record(value) }
        return m
    }

    func render(_ metrics: ClusterMetrics, granted: Int = 0, at seconds: Int64 = 0) -> String {
        metrics.render(.init(workers: [(0, .ready, nil), (1, .backoff, nil)], startsRemaining: 990, budgetGranted: granted, now: MonotonicInstant(nanoseconds: seconds * 1_000_000_000)))
    }

    @Test func workersAreSummedAndAProcessThatIsGoneStillCounts() {
        let metrics = ClusterMetrics(restRate: 50)
        metrics.collect([1: (0, counts(events: 10, handlerSeconds: [0.002, 0.3], heartbeat: [0.02])), 2: (1, counts(events: 5, heartbeat: [0.04]))], live: [1, 2])
        var text = render(metrics)
        #expect(sample(text, #"botcluster_events_received_total{type="AT_MESSAGE_CREATE"}"#) == 15)
        #expect(sample(text, #"botcluster_handler_duration_seconds_bucket{le="0.0025"}"#) == 1)
        #expect(sample(text, #"botcluster_handler_duration_seconds_bucket{le="0.5"}"#) == 2)
        #expect(sample(text, #"botcluster_handler_duration_seconds_bucket{le="+Inf"}"#) == 2)
        #expect(sample(text, "botcluster_handler_duration_seconds_sum") == 0.302)
        #expect(sample(text, #"botcluster_gateway_heartbeat_latency_seconds_count{shard="1"}"#) == 1)

        // Generation 2 is gone and its replacement (3) has counted 1 so far: nothing goes down.
        metrics.collect([3: (1, counts(events: 1, heartbeat: [0.01]))], live: [1, 3])
        text = render(metrics)
        #expect(sample(text, #"botcluster_events_received_total{type="AT_MESSAGE_CREATE"}"#) == 16)
        #expect(sample(text, #"botcluster_gateway_heartbeat_latency_seconds_count{shard="1"}"#) == 2)
        // A worker that does not answer counts with its last answer.
        metrics.collect([:], live: [1, 3])
        #expect(sample(render(metrics), #"botcluster_events_received_total{type="AT_MESSAGE_CREATE"}"#) == 16)
    }

    @Test func theSupervisorsOwnFiguresAndTheBudgetRate() {
        let metrics = ClusterMetrics(restRate: 50, now: MonotonicInstant(nanoseconds: 0))
        metrics.restarted(.crash)
        metrics.restarted(.hang)
        metrics.restarted(.crash)
        metrics.sessionStarted(resumed: true)
        metrics.rateLimitedOnce()
        metrics.layoutChanged(kind: "scale", outcome: "done")
        _ = render(metrics, granted: 100, at: 10)
        let text = render(metrics, granted: 300, at: 20)
        #expect(sample(text, #"botcluster_worker_restarts_total{reason="crash"}"#) == 2)
        #expect(sample(text, #"botcluster_worker_restarts_total{reason="hang"}"#) == 1)
        #expect(sample(text, #"botcluster_sessions_total{kind="resume"}"#) == 1)
        #expect(sample(text, #"botcluster_sessions_total{kind="identify"}"#) == 0)
        #expect(sample(text, "botcluster_rest_rate_limited_total") == 1)
        #expect(sample(text, #"botcluster_layout_changes_total{kind="scale",outcome="done"}"#) == 1)
        #expect(sample(text, #"botcluster_layout_changes_total{kind="rolling_restart",outcome="failed"}"#) == 0)
        #expect(sample(text, #"botcluster_shards{state="ready"}"#) == 1)
        #expect(sample(text, #"botcluster_shards{state="backoff"}"#) == 1)
        #expect(sample(text, "botcluster_session_starts_remaining") == 990)
        // 300 tokens in the 20 s since the start; the counter follows the granted total.
        #expect(sample(text, "botcluster_rest_budget_tokens_per_second") == 15)
        #expect(sample(text, "botcluster_rest_budget_tokens_granted_total") == 300)
        #expect(sample(text, "botcluster_rest_budget_limit_tokens_per_second") == 50)
        #expect(sample(text, #"botcluster_worker_resident_memory_bytes{ordinal="1"}"#) == 0)
    }

    @Test func labelsAreEscapedAndBoundedAndCountsSaturate() {
        var writer = ExpositionWriter()
        writer.sample("x_total", [("route", "a\"b\\c\nd\r\ne")], 1)
        #expect(writer.text == "x_total{route=\"a\\\"b\\\\c\\nd\\ne\"} 1\n")
        var many = WorkerMetrics()
        for i in 0..<(WorkerMetrics.maxLabels + 10) { WorkerMetrics.tally(&many.eventsByType, "TYPE_\(i)", 1, overflow: WorkerMetrics.otherLabel) }
        #expect(many.eventsByType.count == WorkerMetrics.maxLabels)
        #expect(many.eventsByType[WorkerMetrics.otherLabel] == 11)
        // Summed across processes, the labels kept apart are decided once: a second sum keeps the same ones.
        var labels = WorkerMetrics.Labels()
        var total = WorkerMetrics()
        total.add(many, labels: &labels)
        var other = WorkerMetrics()
        other.eventsByType = ["ZZZ_NEW": 5, "TYPE_3": 1]
        total.add(other, labels: &labels)
        #expect(total.eventsByType.count <= WorkerMetrics.maxLabels)
        #expect(total.eventsByType["TYPE_3"] == 2)
        #expect(total.eventsByType["ZZZ_NEW"] == nil)
        #expect(total.eventsByType.values.reduce(0, +) == Int64(WorkerMetrics.maxLabels + 10 + 6))
        // A peer's huge numbers saturate; they neither trap nor wrap.
        var huge = WorkerMetrics()
        huge.duplicates = WorkerMetrics.maxCount
        total.add(huge, labels: &labels)
        total.add(huge, labels: &labels)
        #expect(total.duplicates == WorkerMetrics.maxCount)
        let histogram = MetricHistogram(bounds: [1, 2], counts: [WorkerMetrics.maxCount, WorkerMetrics.maxCount, 1], sum: 1)!
        writer = ExpositionWriter()
        writer.histogram("h_seconds", "help", [([], histogram)])
        #expect(writer.text.contains("h_seconds_bucket{le=\"2\"} \(WorkerMetrics.maxCount)"))
        #expect(MetricHistogram(bounds: [1], counts: [Int64.max, 0], sum: 0) == nil)
    }

    @Test func theFeedKeepsTheLastEntriesAndWatchersAreBounded() async {
        let feed = ClusterEventFeed()
        for i in 0..<(ClusterEventFeed.capacity + 5) { feed.post("crash", "worker \(i)") }
        #expect(feed.recent.count == ClusterEventFeed.capacity)
        #expect(feed.recent.first?.seq == 6)
        var watchers: [AsyncStream<ClusterEventFeed.Entry>] = []
        for _ in 0..<ClusterEventFeed.maxWatchers { watchers.append(feed.watch(after: feed.recent.last!.seq)!) }
        #expect(feed.watch() == nil)
        feed.post("resume", "worker 3 resumed")
        var iterator = watchers[0].makeAsyncIterator()
        #expect(await iterator.next()?.kind == "resume")
    }

    func sample(_ text: String, _ name: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }
}
