import ClusterCore
import ClusterProtocol
import Foundation
import Prometheus
import Synchronization

/// The cluster's metrics, for one Prometheus scrape of the supervisor.
///
/// What the supervisor itself sees (restarts, sessions, 429s, layout changes, the identify and REST budgets, every
/// worker's state and memory) lives in a swift-prometheus registry. What workers count in their own processes
/// (events by type, handler durations and errors, REST answers, cache lookups, IPC round trips, gateway heartbeat
/// latency) comes back at each scrape as cumulative counts and bucketed histograms (`WorkerMetrics`); the
/// supervisor sums them bucket by bucket and writes those families itself, in the same text format. The
/// registry's histograms take single observations, and re-recording merged buckets through them would make up
/// the sums. A worker that does not answer in time counts with its last answer; a process that is gone has its
/// last answer folded into what retired processes counted, so no counter ever goes down.
public final class ClusterMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let restarts: [ClusterStateMachine.Action.RestartReason: Counter]
    let identifies: Counter
    let resumes: Counter
    let rateLimited: Counter
    let claimsHeldElsewhere: Counter
    let budgetGranted: Counter
    let budgetRate: Gauge
    let budgetLimit: Gauge
    let startsRemaining: Gauge
    let shardStates: [WorkerState: Gauge]
    let workers: Mutex<WorkerCounts>
    let webhookRequests: [WebhookOutcome: Counter]
    let webhookQueued: Gauge

    /// What became of a request to the webhook ingress.
    public enum WebhookOutcome: String, CaseIterable, Sendable {
        /// A dispatch acknowledged (op 12, d 0): in its shard's stream and handed to its worker.
        case acked
        /// An op 13 URL validation answered.
        case validated
        /// Asked to retry: the streams hold `webhook.queueLimit` events, or the shard's `webhook.streamLimit`.
        case retryFull = "retry_full"
        /// Asked to retry before the body was read: 256 requests were being answered already.
        case retryBusy = "retry_busy"
        /// Asked to retry: it could not be written to cluster.sqlite (a full disk, a lock held elsewhere).
        case retryNotRecorded = "retry_not_recorded"
        /// Refused (401): missing, malformed or wrong signature.
        case refusedSignature = "refused_signature"
        /// Refused (401): a timestamp that is not a number, or outside `webhook.timestampWindow` (a replay).
        case refusedTimestamp = "refused_timestamp"
        /// Refused: a body over `webhook.maxBodyBytes` (413), or one that did not arrive within 5 s (408).
        case refusedSize = "refused_size"
        /// Refused (400): a signed body that is not JSON, or a dispatch without an id, a type or a `d` object.
        case refusedPayload = "refused_payload"
    }

    /// The workers' counts: by live process (generation), and the sum of the processes that are gone.
    struct WorkerCounts {
        var live: [UInt64: (shard: Int, metrics: WorkerMetrics)] = [:]
        var retired = WorkerMetrics()
        /// The label values kept apart, decided once (see `WorkerMetrics.Labels`).
        var labels = WorkerMetrics.Labels()
        /// Gateway heartbeat latency is kept by shard: what the processes of each shard that are gone measured.
        var retiredHeartbeat: [Int: MetricHistogram] = [:]
        /// Resident memory gauges by ordinal of the serving layout.
        var memory: [Int: Gauge] = [:]
        /// REST tokens granted, as last exported, and recent samples for the rate.
        var grantedExported = 0
        var grantSamples: [(at: MonotonicInstant, granted: Int)] = []
        /// Layout change counters by kind and outcome (six).
        var layoutChanges: [String: Counter] = [:]
    }

    /// Metrics for a cluster whose REST budget allows `restRate` requests per second, started at `now` (the first
    /// scrape's budget rate is the rate since then).
    public init(restRate: Double, mode: GatewayMode = .websocket, now: MonotonicInstant = .now()) {
        workers = Mutex(WorkerCounts(grantSamples: [(now, 0)]))
        func name(_ metric: String, _ unit: String = "", _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "botcluster", metricName: metric, unitName: unit, helpText: help)
        }
        var restarts: [ClusterStateMachine.Action.RestartReason: Counter] = [:]
        for reason in ClusterStateMachine.Action.RestartReason.allCases {
            restarts[reason] = registry.makeCounter(
                descriptor: name("worker_restarts", "total", "Worker processes replaced, by why: crash (exited or killed by a signal), hang (stopped beating), requested (restart, rolling restart)."),
                labels: [("reason", reason.rawValue)]
            )
        }
        self.restarts = restarts
        let sessions = name("sessions", "total", "Gateway sessions started: identify (a new session, counted against the day's limit) or resume.")
        identifies = registry.makeCounter(descriptor: sessions, labels: [("kind", "identify")])
        resumes = registry.makeCounter(descriptor: sessions, labels: [("kind", "resume")])
        rateLimited = registry.makeCounter(descriptor: name("rest_rate_limited", "total", "REST answers of 429 (each pauses its route on every worker)."))
        claimsHeldElsewhere = registry.makeCounter(descriptor: name(
            "claims_held_elsewhere", "total",
            "Claims the store answered with: the other layout of a rescale holds the event unfinished (the worker waits, and the claim is asked again)."
        ))
        budgetGranted = registry.makeCounter(descriptor: name("rest_budget_tokens_granted", "total", "REST budget tokens granted to workers."))
        budgetRate = registry.makeGauge(descriptor: name("rest_budget_tokens_per_second", "", "REST budget tokens granted per second, over the last minute."))
        budgetLimit = registry.makeGauge(descriptor: name("rest_budget_limit_tokens_per_second", "", "The REST budget's limit for the whole bot (rateBudget.globalRate)."))
        budgetLimit.set(to: restRate)
        startsRemaining = registry.makeGauge(descriptor: name("session_starts_remaining", "", "Session starts (identifies) the platform allows for the rest of the day."))
        var states: [WorkerState: Gauge] = [:]
        for state in WorkerState.allCases {
            states[state] = registry.makeGauge(descriptor: name("shards", "", "Shards of the serving layout, by worker state."), labels: [("state", state.rawValue)])
        }
        shardStates = states
        var webhookRequests: [WebhookOutcome: Counter] = [:]
        for outcome in WebhookOutcome.allCases {
            webhookRequests[outcome] = registry.makeCounter(
                descriptor: name("webhook_requests", "total", "Requests to the webhook ingress, by outcome (refused ones reached no handler)."),
                labels: [("outcome", outcome.rawValue)]
            )
        }
        self.webhookRequests = webhookRequests
        webhookQueued = registry.makeGauge(descriptor: name("webhook_queued_events", "", "Webhook events acknowledged and not yet handled, in every shard's stream."))
        for known in [GatewayMode.websocket, .webhook] {
            registry.makeGauge(descriptor: name("gateway_mode", "", "How events arrive: 1 for the configured mode (websocket sessions or webhook callbacks)."), labels: [("mode", known.rawValue)])
                .set(to: known == mode ? 1 : 0)
        }
        // Every kind and outcome from the start: a series that appears only when it first counts hides its
        // first increase from rate() and increase().
        for kind in ["scale", "rolling_restart"] {
            for outcome in ["done", "failed", "refused"] { _ = layoutCounter(kind: kind, outcome: outcome) }
        }
    }

    func layoutCounter(kind: String, outcome: String) -> Counter {
        workers.withLock { counts in
            if let counter = counts.layoutChanges["\(kind) \(outcome)"] { return counter }
            let counter = registry.makeCounter(
                descriptor: MetricNameDescriptor(namespace: "botcluster", metricName: "layout_changes", unitName: "total", helpText: "Rescales and rolling restarts, by kind and outcome (done, failed, refused)."),
                labels: [("kind", kind), ("outcome", outcome)]
            )
            counts.layoutChanges["\(kind) \(outcome)"] = counter
            return counter
        }
    }

    /// A worker's process was replaced.
    public func restarted(_ reason: ClusterStateMachine.Action.RestartReason) {
        restarts[reason]?.increment()
    }

    /// A gateway session became ready: a new one (`resumed` false), or a resumed one.
    public func sessionStarted(resumed: Bool) {
        (resumed ? resumes : identifies).increment()
    }

    /// A request to the webhook ingress ended so.
    public func webhookRequest(_ outcome: WebhookOutcome) {
        webhookRequests[outcome]?.increment()
    }

    /// The platform answered 429.
    public func rateLimitedOnce() {
        rateLimited.increment()
    }

    /// The store answered `count` claims with "the other layout of a rescale holds it unfinished" (several hosts).
    public func claimsHeldElsewhere(_ count: Int) {
        claimsHeldElsewhere.increment(by: Int64(count))
    }

    /// A rescale or rolling restart ended (`kind`: scale, rolling_restart; `outcome`: done, failed, refused).
    public func layoutChanged(kind: String, outcome: String) {
        layoutCounter(kind: kind, outcome: outcome).increment()
    }

    /// What the supervisor knows at a scrape, beside the workers' answers.
    public struct Snapshot: Sendable {
        /// The serving layout's workers: ordinal, state, process.
        public var workers: [(ordinal: Int, state: WorkerState, pid: Int32?)]
        public var startsRemaining: Int
        public var budgetGranted: Int
        public var now: MonotonicInstant
        /// Webhook events held in the streams (0 with websocket sessions).
        public var webhookQueued: Int = 0
    }

    /// The workers' answers (by generation, with their shard); `live`: every generation with a process now.
    func collect(_ answers: [UInt64: (shard: Int, metrics: WorkerMetrics)], live: Set<UInt64>) {
        workers.withLock { counts in
            for (generation, answer) in answers { counts.live[generation] = answer }
            for (generation, gone) in counts.live.sorted(by: { $0.key < $1.key }) where !live.contains(generation) {
                counts.retired.add(gone.metrics, labels: &counts.labels)
                counts.retiredHeartbeat[gone.shard, default: MetricHistogram(bounds: MetricHistogram.Bounds.heartbeat)].add(gone.metrics.heartbeatLatency)
                counts.live[generation] = nil
            }
        }
    }

    /// The text exposition: the registry's families, then the workers' summed ones.
    func render(_ snapshot: Snapshot) -> String {
        update(snapshot)
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        var text = String(decoding: buffer, as: UTF8.self)
        let (total, heartbeat) = workers.withLock { counts -> (WorkerMetrics, [Int: MetricHistogram]) in
            var total = counts.retired
            var heartbeat = counts.retiredHeartbeat
            for (_, answer) in counts.live.sorted(by: { $0.key < $1.key }) {
                total.add(answer.metrics, labels: &counts.labels)
                heartbeat[answer.shard, default: MetricHistogram(bounds: MetricHistogram.Bounds.heartbeat)].add(answer.metrics.heartbeatLatency)
            }
            return (total, heartbeat)
        }
        var out = ExpositionWriter()
        out.family("botcluster_events_received_total", "counter", "Gateway dispatches received by the workers, by event type.")
        for (type, count) in total.eventsByType.sorted(by: { $0.key < $1.key }) { out.sample("botcluster_events_received_total", [("type", type)], Double(count)) }
        out.family("botcluster_events_duplicate_total", "counter", "Dispatches skipped because another worker (or an earlier process) handled the same event.")
        out.sample("botcluster_events_duplicate_total", [], Double(total.duplicates))
        out.histogram("botcluster_handler_duration_seconds", "How long the bot's handler ran per event.", [([], total.handlerDuration)])
        out.family("botcluster_handler_errors_total", "counter", "Handler runs that threw.")
        out.sample("botcluster_handler_errors_total", [], Double(total.handlerErrors))
        out.family("botcluster_rest_requests_total", "counter", "OpenAPI requests by route template and HTTP status (0: no answer).")
        for (key, count) in total.restRequests.sorted(by: { ($0.key.route, $0.key.status) < ($1.key.route, $1.key.status) }) {
            out.sample("botcluster_rest_requests_total", [("route", key.route), ("status", "\(key.status)")], Double(count))
        }
        out.family("botcluster_cache_lookups_total", "counter", "User cache lookups: hit (answered from memory) or miss.")
        out.sample("botcluster_cache_lookups_total", [("result", "hit")], Double(total.cacheHits))
        out.sample("botcluster_cache_lookups_total", [("result", "miss")], Double(total.cacheMisses))
        out.histogram("botcluster_ipc_round_trip_seconds", "Round trip of a worker's claims request to the supervisor and back.", [([], total.ipcRoundTrip)])
        out.histogram(
            "botcluster_gateway_heartbeat_latency_seconds", "Gateway heartbeat to heartbeat-ACK round trip, by shard.",
            heartbeat.sorted(by: { $0.key < $1.key }).map { ([("shard", "\($0.key)")], $0.value) }
        )
        text += out.text
        return text
    }

    /// Sets the registry's gauges and counters that follow what the supervisor holds.
    func update(_ snapshot: Snapshot) {
        var byState: [WorkerState: Int] = [:]
        for worker in snapshot.workers { byState[worker.state, default: 0] += 1 }
        for (state, gauge) in shardStates { gauge.set(to: Double(byState[state] ?? 0)) }
        startsRemaining.set(to: Double(snapshot.startsRemaining))
        webhookQueued.set(to: Double(snapshot.webhookQueued))
        let (grantedDelta, rate, gauges, dropped) = workers.withLock { counts in
            let delta = max(0, snapshot.budgetGranted - counts.grantedExported)
            counts.grantedExported = max(counts.grantedExported, snapshot.budgetGranted)
            // Samples at least a second apart over the last minute: the rate a scrape sees does not depend on how
            // often something scrapes.
            counts.grantSamples.removeAll { snapshot.now - $0.at > .seconds(60) }
            if counts.grantSamples.last.map({ snapshot.now - $0.at >= .seconds(1) }) ?? true {
                counts.grantSamples.append((snapshot.now, snapshot.budgetGranted))
            }
            var rate = 0.0
            if let first = counts.grantSamples.first, snapshot.now - first.at >= .seconds(1) {
                rate = Double(snapshot.budgetGranted - first.granted) / (snapshot.now - first.at).seconds
            }
            let ordinals = Set(snapshot.workers.map(\.ordinal))
            var dropped: [Gauge] = []
            for (ordinal, gauge) in counts.memory where !ordinals.contains(ordinal) {
                dropped.append(gauge)
                counts.memory[ordinal] = nil
            }
            var gauges: [(Gauge, Int32?)] = []
            for worker in snapshot.workers {
                let gauge = counts.memory[worker.ordinal] ?? registry.makeGauge(
                    descriptor: MetricNameDescriptor(namespace: "botcluster", metricName: "worker_resident_memory", unitName: "bytes", helpText: "Resident memory of each worker process of the serving layout (0: no process)."),
                    labels: [("ordinal", "\(worker.ordinal)")]
                )
                counts.memory[worker.ordinal] = gauge
                gauges.append((gauge, worker.pid))
            }
            return (delta, max(0, rate), gauges, dropped)
        }
        for gauge in dropped { registry.unregisterGauge(gauge) }
        budgetGranted.increment(by: Int64(grantedDelta))
        budgetRate.set(to: rate)
        for (gauge, pid) in gauges { gauge.set(to: Double(pid.flatMap(Self.residentBytes) ?? 0)) }
    }

    /// A process's resident memory, from /proc (nil when it is gone).
    static func residentBytes(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// Prometheus's text format (version 0.0.4) for the families the supervisor sums itself.
struct ExpositionWriter {
    var text = ""

    mutating func family(_ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",") + "}"
        }
        text += " \(Self.format(value))\n"
    }

    /// A histogram family: cumulative buckets, `+Inf`, sum and count per label set.
    mutating func histogram(_ name: String, _ help: String, _ series: [([(String, String)], MetricHistogram)]) {
        family(name, "histogram", help)
        for (labels, histogram) in series {
            var cumulative: Int64 = 0
            for (index, bound) in histogram.bounds.enumerated() {
                cumulative = WorkerMetrics.sum(cumulative, histogram.counts[index])
                sample(name + "_bucket", labels + [("le", Self.format(bound))], Double(cumulative))
            }
            sample(name + "_bucket", labels + [("le", "+Inf")], Double(histogram.count))
            sample(name + "_sum", labels, histogram.sum)
            sample(name + "_count", labels, Double(histogram.count))
        }
    }

    /// A label value as the text format writes it: backslash, quote and line feed escaped, other control
    /// characters (a carriage return) left out. By scalar: "\r\n" is one Character.
    static func escape(_ value: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\"": out.append(contentsOf: "\\\"".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: continue
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    static func format(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
