import ClusterCore

/// A least-recently-used cache with a size bound and a time to live, O(1) per operation. Pure: the time is a
/// parameter. Not thread-safe: wrap it in a lock.
public struct LRUCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    struct Node: Sendable {
        var key: Key
        var value: Value
        var storedAt: MonotonicInstant
        var previous: Int
        var next: Int
    }

    public let capacity: Int
    public let ttl: Duration
    var index: [Key: Int] = [:]
    var nodes: [Node] = []
    var free: [Int] = []
    /// Most recently used, least recently used (-1 when empty).
    var head = -1
    var tail = -1

    /// An empty cache of at most `capacity` entries (at least one), each valid for `ttl` after it was set.
    public init(capacity: Int, ttl: Duration) {
        self.capacity = max(1, capacity)
        self.ttl = ttl
    }

    public var count: Int { index.count }

    /// The value for `key` if present and younger than the time to live (and marks it recently used).
    public mutating func get(_ key: Key, now: MonotonicInstant) -> Value? {
        guard let i = index[key] else { return nil }
        if now - nodes[i].storedAt > ttl {
            remove(key)
            return nil
        }
        moveToFront(i)
        return nodes[i].value
    }

    /// The value for `key` without touching recency or expiry.
    public func peek(_ key: Key) -> Value? {
        index[key].map { nodes[$0].value }
    }

    /// Stores `value` as the most recently used, evicting the least recently used entry when full.
    public mutating func set(_ key: Key, _ value: Value, now: MonotonicInstant) {
        if let i = index[key] {
            nodes[i].value = value
            nodes[i].storedAt = now
            moveToFront(i)
            return
        }
        if index.count >= capacity, tail >= 0 { remove(nodes[tail].key) }
        let node = Node(key: key, value: value, storedAt: now, previous: -1, next: head)
        let i: Int
        if let reused = free.popLast() {
            nodes[reused] = node
            i = reused
        } else {
            nodes.append(node)
            i = nodes.count - 1
        }
        if head >= 0 { nodes[head].previous = i }
        head = i
        if tail < 0 { tail = i }
        index[key] = i
    }

    /// Removes the entry for `key`; its value, or nil when there was none.
    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let i = index.removeValue(forKey: key) else { return nil }
        unlink(i)
        free.append(i)
        return nodes[i].value
    }

    mutating func unlink(_ i: Int) {
        let (previous, next) = (nodes[i].previous, nodes[i].next)
        if previous >= 0 { nodes[previous].next = next } else { head = next }
        if next >= 0 { nodes[next].previous = previous } else { tail = previous }
        nodes[i].previous = -1
        nodes[i].next = -1
    }

    mutating func moveToFront(_ i: Int) {
        guard head != i else { return }
        unlink(i)
        nodes[i].next = head
        if head >= 0 { nodes[head].previous = i }
        head = i
        if tail < 0 { tail = i }
    }
}
