/// The environment variables the supervisor starts a worker process with (`botcluster worker` reads them).
public enum WorkerEnvironment {
    /// The supervisor's IPC socket path.
    public static let socket = "BOTCLUSTER_SOCKET"
    /// The worker's slot in its layout.
    public static let ordinal = "BOTCLUSTER_ORDINAL"
    /// The spawn's generation (unique across layouts).
    public static let generation = "BOTCLUSTER_GENERATION"
    /// The supervisor's pid: the worker checks its parent and its socket's peer against it.
    public static let supervisorPID = "BOTCLUSTER_SUPERVISOR_PID"
    /// The worker's slot in the liveness table it inherits at descriptor 3 (see `LivenessTable`).
    public static let livenessSlot = "BOTCLUSTER_LIVENESS_SLOT"
}
