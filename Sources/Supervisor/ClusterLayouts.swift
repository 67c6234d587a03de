import ClusterCore

/// The layouts of a cluster: the active one, and during a rescale the incoming one (ready, holding dispatch) and
/// the old one draining after the switch. Each is a `ClusterStateMachine`; this routes events to the right one by
/// generation (each layout numbers its generations from its own base) or by process id. Pure.
public struct ClusterLayouts: Sendable {
    /// A layout's part: serving, getting ready to take over, or draining after it was replaced or given up.
    public enum Role: String, Sendable, Equatable {
        case active, incoming, retiring
    }

    /// One layout: its id, its role and its workers' state machine.
    public struct Layout: Sendable {
        public let id: Int
        public var role: Role
        public var machine: ClusterStateMachine
    }

    /// Generation numbers each layout may use.
    public static let generationsPerLayout: UInt64 = 1_000_000

    public private(set) var layouts: [Layout]
    var nextID: Int

    /// The layouts with `active` as the only one (id 0).
    public init(active: ClusterStateMachine) {
        layouts = [Layout(id: 0, role: .active, machine: active)]
        nextID = 1
    }

    /// Where the generations of the next layout start.
    public var nextGenerationBase: UInt64 { UInt64(nextID) * Self.generationsPerLayout }

    /// The id of the layout a worker generation belongs to.
    public static func layoutID(ofGeneration generation: UInt64) -> Int {
        Int(generation / generationsPerLayout)
    }

    public var active: Layout { layouts.first { $0.role == .active }! }

    /// The layout with `id`, or nil when there is none (never added, or removed).
    public func layout(_ id: Int) -> Layout? { layouts.first { $0.id == id } }

    /// The layout of `total` shards (several hosts: a keeper's leases go to it): the serving or incoming one, else a
    /// retiring one (whose workers a lost lease must still fence), else nil.
    public func layout(total: Int) -> Layout? {
        let matching = layouts(total: total)
        return matching.first { $0.role != .retiring } ?? matching.last
    }

    /// Every layout of `total` shards (a rescale's retiring one and a new one may share a count only briefly).
    public func layouts(total: Int) -> [Layout] {
        layouts.filter { $0.machine.workers.count == total }
    }

    /// The serving or incoming layout of `total` shards, nil when there is none (only a retiring one, or none).
    public func running(total: Int) -> Layout? {
        layouts(total: total).first { $0.role != .retiring }
    }

    /// Adds a layout that will take over at the switch; returns its id.
    public mutating func beginIncoming(_ machine: ClusterStateMachine) -> Int {
        let id = nextID
        nextID += 1
        layouts.append(Layout(id: id, role: .incoming, machine: machine))
        return id
    }

    /// The incoming layout becomes active; the active one starts retiring. Returns the retiring layout's id.
    public mutating func switchOver() -> Int? {
        guard let incoming = layouts.firstIndex(where: { $0.role == .incoming }),
            let active = layouts.firstIndex(where: { $0.role == .active })
        else { return nil }
        layouts[active].role = .retiring
        layouts[incoming].role = .active
        return layouts[active].id
    }

    /// The incoming layout is given up: it retires without ever having been active.
    public mutating func abandonIncoming() -> Int? {
        guard let incoming = layouts.firstIndex(where: { $0.role == .incoming }) else { return nil }
        layouts[incoming].role = .retiring
        return layouts[incoming].id
    }

    /// A retiring layout whose workers have all exited is dropped.
    public mutating func remove(_ id: Int) {
        layouts.removeAll { $0.id == id && $0.role == .retiring }
    }

    /// Feeds one layout.
    public mutating func handle(_ event: ClusterStateMachine.Event, in id: Int, now: MonotonicInstant) -> [(Int, ClusterStateMachine.Action)] {
        guard let index = layouts.firstIndex(where: { $0.id == id }) else { return [] }
        return layouts[index].machine.handle(event, now: now).map { (id, $0) }
    }

    /// A beat of the worker `ordinal` whose process has `generation` (see `ClusterStateMachine.recordBeat`).
    public mutating func recordBeat(ordinal: Int, generation: UInt64, at: MonotonicInstant, now: MonotonicInstant) {
        let id = Self.layoutID(ofGeneration: generation)
        guard let index = layouts.firstIndex(where: { $0.id == id }) else { return }
        layouts[index].machine.recordBeat(ordinal: ordinal, generation: generation, at: at, now: now)
    }

    /// Routes an event: by generation, by pid, to the active layout (restart), or to all (tick, stop).
    public mutating func handle(_ event: ClusterStateMachine.Event, now: MonotonicInstant) -> [(Int, ClusterStateMachine.Action)] {
        switch event {
        case .spawned(_, let generation, _), .spawnFailed(_, let generation, _), .hello(_, let generation),
            .progress(_, let generation, _), .identifying(_, let generation), .gatewayReady(_, let generation),
            .sessionCommitted(_, let generation, _, _), .sessionInvalidated(_, let generation), .gatewayFailed(_, let generation, _):
            return handle(event, in: Self.layoutID(ofGeneration: generation), now: now)
        case .exited(let pid, _):
            guard let layout = layouts.first(where: { $0.machine.owns(pid: pid) }) else { return [] }
            return handle(event, in: layout.id, now: now)
        case .restart, .leases:
            return handle(event, in: active.id, now: now)
        case .start:
            return handle(event, in: active.id, now: now)
        case .tick, .stop:
            return layouts.map(\.id).flatMap { handle(event, in: $0, now: now) }
        }
    }

    public var nextDeadline: MonotonicInstant? {
        layouts.compactMap(\.machine.nextDeadline).min()
    }
}
