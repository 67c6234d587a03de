/// The whole of cluster.json, typed and validated. Every field has a default; see the README for the reference.
public struct ClusterConfig: Sendable {
    public var app: AppConfig
    public var gateway: GatewayConfig
    public var shards: ShardsConfig
    public var supervisor: SupervisorConfig
    public var restart: RestartConfig
    public var identify: IdentifyConfig
    public var worker: WorkerConfig
    public var cache: CacheConfig
    public var rateBudget: RateBudgetConfig
    public var exactlyOnce: ExactlyOnceConfig
    public var scale: ScaleConfig
    public var emulator: EmulatorConfig
    public var log: LogConfig
    public var http: HTTPConfig
    public var webhook: WebhookConfig
    /// Where the cluster's authority lives: SQLite on one host, or PostgreSQL shared by several.
    public var store: StoreConfig

    /// The normalized document: every key with its effective value, secrets redacted.
    public var normalized: JSONValue
}

extension ClusterConfig {
    /// The identify window the ledger paces by: the embedded emulator's own, or the configured platform window.
    public var effectiveIdentifyWindow: Duration {
        gateway.embedded ? emulator.identifyWindow : identify.window
    }
}

extension ClusterConfig {
    /// Reads every section from the document's root, in the order the normalized document lists them.
    static func read(_ root: ConfigReader) -> ClusterConfig {
        let gateway = GatewayConfig(reading: root.object("gateway"))
        let app = AppConfig(reading: root.object("app"), embedded: gateway.embedded)
        let shards = ShardsConfig(reading: root.object("shards"))
        let supervisor = SupervisorConfig(reading: root.object("supervisor"))
        let restart = RestartConfig(reading: root.object("restart"))
        let identify = IdentifyConfig(reading: root.object("identify"))
        let worker = WorkerConfig(reading: root.object("worker"))
        let cache = CacheConfig(reading: root.object("cache"))
        let rateBudget = RateBudgetConfig(reading: root.object("rateBudget"))
        let exactlyOnce = ExactlyOnceConfig(reading: root.object("exactlyOnce"))
        let scale = ScaleConfig(reading: root.object("scale"))
        let emulator = EmulatorConfig(reading: root.object("emulator"))
        let log = LogConfig(reading: root.object("log"))
        let http = HTTPConfig(reading: root.object("http"))
        let webhook = WebhookConfig(reading: root.object("webhook"))
        let store = StoreConfig.read(root)
        if gateway.mode == .webhook, let status = http.listen, status.port != 0, status.port == webhook.listen.port,
            status.host == webhook.listen.host || ["0.0.0.0", "::"].contains(status.host) || ["0.0.0.0", "::"].contains(webhook.listen.host) {
            root.report("webhook.listen", "uses the port of http.listen (\(status)): give one of them another port")
        }
        // A signed request can be replayed while its timestamp is in the window (either way): the event ids handled
        // must be remembered at least that long, or a replay is handled again.
        if gateway.mode == .webhook, exactlyOnce.ttl < webhook.timestampWindow * 2 {
            root.report(
                "exactlyOnce.ttl",
                "must be at least twice webhook.timestampWindow (\(DurationFormat.format(webhook.timestampWindow * 2))) in webhook mode: a replayed request is refused only while its event id is remembered"
            )
        }
        // Across hosts the platform's callbacks reach whichever host its load balancer picks, but each host keeps the
        // events it acknowledged, and their order per stream, in its own memory and file: an event redelivered to
        // another host would be handled twice. Until that record lives in the store, several hosts take websockets.
        if gateway.mode == .webhook, store.postgres != nil {
            root.report("gateway.mode", "\"webhook\" cannot run with store.postgres: each host keeps the events it acknowledged to itself, so a redelivery to another host would be handled twice; use \"websocket\" with several hosts")
        }
        root.finish()
        return ClusterConfig(
            app: app, gateway: gateway, shards: shards, supervisor: supervisor, restart: restart,
            identify: identify, worker: worker, cache: cache, rateBudget: rateBudget, exactlyOnce: exactlyOnce,
            scale: scale, emulator: emulator, log: log, http: http, webhook: webhook, store: store, normalized: .object(root.normalized)
        )
    }
}
