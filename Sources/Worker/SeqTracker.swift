/// Which seq a successor may resume from: the highest seq such that every dispatch up to it has been handled (or
/// skipped). Dispatches still in flight keep it back, so a replacement's Resume replays them.
struct SeqTracker: Sendable {
    /// Identifies one session's numbering; a new session (after op 9) starts again from 1.
    private(set) var epoch = 0
    private var highest = 0
    private var outstanding: Set<Int> = []

    /// A ticket for a dispatch begun in the current session.
    struct Ticket: Sendable, Hashable {
        var epoch: Int
        var seq: Int
    }

    /// Starts a new session's numbering (after READY of a fresh session).
    mutating func reset(seq: Int = 0) {
        epoch += 1
        highest = seq
        outstanding = []
    }

    /// A seq that needs no handling (READY, RESUMED) moves the mark.
    mutating func observe(_ seq: Int) {
        highest = max(highest, seq)
    }

    mutating func begin(_ seq: Int) -> Ticket {
        highest = max(highest, seq)
        outstanding.insert(seq)
        return Ticket(epoch: epoch, seq: seq)
    }

    mutating func end(_ ticket: Ticket) {
        guard ticket.epoch == epoch else { return }
        outstanding.remove(ticket.seq)
    }

    /// Every dispatch up to this seq is done.
    var committed: Int {
        guard let low = outstanding.min() else { return highest }
        return low - 1
    }

    var inFlight: Int { outstanding.count }
}
