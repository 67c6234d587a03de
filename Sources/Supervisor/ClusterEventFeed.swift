import ClusterCore
import Foundation
import Synchronization

/// What happened to the cluster lately (crashes, restarts, resumes, rescales, 429s), for the status page: the
/// last `capacity` entries, and a stream of new ones per watcher. Bounded everywhere: the history, the watchers,
/// and what a slow watcher has not read yet (the oldest unread entries go first).
public final class ClusterEventFeed: Sendable {
    /// One thing that happened.
    public struct Entry: Sendable, Codable, Equatable {
        /// Increases by one per entry.
        public var seq: Int
        /// Wall-clock time, seconds since 1970.
        public var time: Double
        /// `crash`, `hang`, `restart`, `resume`, `identify`, `ready`, `rescale`, `rolling`, `429`, `failed`.
        public var kind: String
        public var text: String
    }

    struct State {
        var entries: [Entry] = []
        var nextSeq = 1
        var watchers: [Int: AsyncStream<Entry>.Continuation] = [:]
        var nextWatcher = 0
    }

    let state = Mutex(State())
    /// Entries kept for a page that opens now.
    public static let capacity = 200
    /// Watchers at once (open status pages); one more is refused.
    public static let maxWatchers = 64

    /// An empty feed.
    public init() {}

    /// Records `text` of `kind` and hands it to every watcher.
    public func post(_ kind: String, _ text: String) {
        let (entry, watchers) = state.withLock { state -> (Entry, [AsyncStream<Entry>.Continuation]) in
            let entry = Entry(seq: state.nextSeq, time: Date().timeIntervalSince1970, kind: kind, text: text)
            state.nextSeq += 1
            state.entries.append(entry)
            if state.entries.count > Self.capacity { state.entries.removeFirst(state.entries.count - Self.capacity) }
            return (entry, Array(state.watchers.values))
        }
        for watcher in watchers { watcher.yield(entry) }
    }

    /// The entries kept, oldest first.
    public var recent: [Entry] { state.withLock { $0.entries } }

    /// The kept entries after `seq`, then every new one as it comes; nil when `maxWatchers` already watch.
    public func watch(after seq: Int = 0) -> AsyncStream<Entry>? {
        let (stream, continuation) = AsyncStream.makeStream(of: Entry.self, bufferingPolicy: .bufferingNewest(Self.capacity))
        let admitted = state.withLock { state -> Bool in
            guard state.watchers.count < Self.maxWatchers else { return false }
            for entry in state.entries where entry.seq > seq { continuation.yield(entry) }
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[id] = continuation
            continuation.onTermination = { [weak self] _ in
                _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
            }
            return true
        }
        return admitted ? stream : nil
    }
}
