import CBotSystem
import ClusterCore
#if canImport(Glibc)
import Glibc
#endif

/// Worker liveness in shared memory: one 64-bit word per worker slot, in an anonymous file (memfd) the supervisor
/// creates and every worker inherits, where the worker stores the CLOCK_MONOTONIC time of its latest beat.
///
/// Why not IPC heartbeats: a heartbeat message costs a wake-up and a write on the worker's side and a wake-up, a
/// read, a decode and a lock on the supervisor's, for every worker several times a second whether anything happens
/// or not (at 256 idle shards the supervisor spent 28 % of a core on them). A beat is one store; the supervisor
/// reads the words only when a hang deadline is due, and what it reads is exact: the time the worker last ran, not
/// the time its message happened to be read, so a supervisor that falls behind never mistakes its own delay for a
/// worker's hang.
///
/// Slots: the supervisor hands each process a free slot before it spawns it (cleared first) and takes it back once
/// the process is reaped, so a slot is never shared by two processes, whatever rescales and rolls do.
public final class LivenessTable: @unchecked Sendable {
    /// Slots in the table: two full layouts (a rescale's) and as many processes again still being reaped.
    public static let slotCount = 4 * ShardsConfig.maxCount
    /// The file descriptor number a worker inherits the table at.
    public static let inheritedDescriptor: Int32 = 3

    /// The table's file (close-on-exec; the spawner passes it to a worker at `inheritedDescriptor`).
    public let descriptor: Int32
    let words: UnsafeMutablePointer<UInt64>

    init(descriptor: Int32, words: UnsafeMutablePointer<UInt64>) {
        self.descriptor = descriptor
        self.words = words
    }

    /// Creates a zeroed table (the supervisor's side); throws when the kernel refuses the memory.
    public static func create() throws -> LivenessTable {
        let memfd = cbot_memfd_cloexec("botcluster-liveness")
        guard memfd >= 0 else { throw LivenessError("cannot create the worker liveness table: \(lastErrorDescription())") }
        // Far from 0...2, which a spawn action file sets up for the child, so that the duplication to
        // `inheritedDescriptor` is never a no-op that would leave close-on-exec set.
        let fd = fcntl(memfd, F_DUPFD_CLOEXEC, 100)
        close(memfd)
        guard fd >= 0 else { throw LivenessError("cannot place the worker liveness table: \(lastErrorDescription())") }
        guard ftruncate(fd, off_t(byteCount)) == 0 else {
            let text = lastErrorDescription()
            close(fd)
            throw LivenessError("cannot size the worker liveness table: \(text)")
        }
        do {
            return LivenessTable(descriptor: fd, words: try map(fd))
        } catch {
            close(fd)
            throw error
        }
    }

    /// The table a worker inherited at `descriptor` (the worker's side); the descriptor is closed once mapped, so
    /// that nothing the bot starts inherits it. Throws when it is not a table of the right size.
    public static func attach(descriptor: Int32) throws -> LivenessTable {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw LivenessError("no worker liveness table at descriptor \(descriptor): \(lastErrorDescription())") }
        guard info.st_size == byteCount else {
            throw LivenessError("descriptor \(descriptor) is not a worker liveness table (\(info.st_size) bytes, not \(byteCount))")
        }
        let words = try map(descriptor)
        close(descriptor)
        return LivenessTable(descriptor: -1, words: words)
    }

    static var byteCount: Int { slotCount * MemoryLayout<UInt64>.stride }

    static func map(_ fd: Int32) throws -> UnsafeMutablePointer<UInt64> {
        guard let address = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            throw LivenessError("cannot map the worker liveness table: \(lastErrorDescription())")
        }
        return address.bindMemory(to: UInt64.self, capacity: slotCount)
    }

    /// The latest beat in `slot`, or nil when none was stored since it was cleared.
    public func lastBeat(slot: Int) -> MonotonicInstant? {
        guard (0..<Self.slotCount).contains(slot) else { return nil }
        let nanoseconds = cbot_load_u64(words + slot)
        return nanoseconds == 0 ? nil : MonotonicInstant(nanoseconds: Int64(truncatingIfNeeded: nanoseconds))
    }

    /// Stores a beat at `now` in `slot` (the worker's side).
    public func beat(slot: Int, now: MonotonicInstant = .now()) {
        guard (0..<Self.slotCount).contains(slot) else { return }
        cbot_store_u64(words + slot, UInt64(max(1, now.nanoseconds)))
    }

    /// Empties `slot` before a new process takes it.
    public func clear(slot: Int) {
        guard (0..<Self.slotCount).contains(slot) else { return }
        cbot_store_u64(words + slot, 0)
    }

    deinit {
        munmap(words, Self.byteCount)
        if descriptor >= 0 { close(descriptor) }
    }
}

/// Why the liveness table could not be set up.
public struct LivenessError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// An error that says `description`.
    public init(_ description: String) { self.description = description }
}
