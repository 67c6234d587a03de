import Testing

/// Every suite that starts real processes, run one after the other: each brings up clusters of processes, and
/// their time bounds are only meaningful when they do not compete with each other for the machine.
@Suite("real processes", .serialized)
struct RealProcesses {}
