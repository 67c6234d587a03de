import Testing
@testable import Worker

/// The committed seq of a process started to resume a session: the replay comes before RESUMED, and what of it is
/// still being handled keeps the seq a successor resumes from back (pure: the runtime's state, no connection).
@Suite("the committed seq across a resume")
struct ResumedSeqTests {
    @Test func aReplayStillInFlightAtResumedKeepsTheCommittedSeqBack() {
        var state = ShardRuntime.State()
        // A new process resumes at seq 40: 41 and 42 are replayed, and 41's handler is still running at RESUMED.
        let first = state.tracker.begin(41)
        let second = state.tracker.begin(42)
        state.tracker.end(second)
        state.resumed(sessionID: "s", seq: 42)
        #expect(state.sessionID == "s")
        #expect(state.tracker.committed == 40)
        state.tracker.end(first)
        #expect(state.tracker.committed == 42)
    }

    @Test func anotherSessionResumedStartsItsNumberingAfresh() {
        var state = ShardRuntime.State()
        state.sessionID = "old"
        _ = state.tracker.begin(7)
        state.resumed(sessionID: "new", seq: 3)
        #expect(state.sessionID == "new")
        #expect(state.tracker.committed == 3)
    }
}
