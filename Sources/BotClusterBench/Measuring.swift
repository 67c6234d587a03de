import ClusterCore
import Synchronization

/// The middle of `values` (the upper middle for an even count).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

/// Counts events until `target`, and signals the moment it is reached.
final class Tally: Sendable {
    let count = Atomic<Int>(0)
    let target: Int
    let done: AsyncSignal<MonotonicInstant>
    init(target: Int) {
        self.target = target
        done = AsyncSignal()
    }
    func add() {
        if count.add(1, ordering: .relaxed).newValue == target { done.set(.now()) }
    }
}
