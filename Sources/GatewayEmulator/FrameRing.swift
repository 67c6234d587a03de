import NIOCore

/// A dispatch frame a session keeps for Resume.
struct BufferedFrame {
    var seq: Int
    var bytes: ByteBuffer
    /// The message record it carries, or -1.
    var message: Int32
}

/// A fixed-capacity ring of frames in seq order: appending to a full ring evicts (and returns) the oldest.
struct FrameRing {
    private var storage: [BufferedFrame?]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        storage = [BufferedFrame?](repeating: nil, count: max(1, capacity))
    }

    var capacity: Int { storage.count }

    /// The seq of the oldest frame held, if any.
    var oldestSeq: Int? { count == 0 ? nil : storage[head]?.seq }

    mutating func append(_ frame: BufferedFrame) -> BufferedFrame? {
        if count == storage.count {
            let evicted = storage[head]
            storage[head] = frame
            head = (head + 1) % storage.count
            return evicted
        }
        storage[(head + count) % storage.count] = frame
        count += 1
        return nil
    }

    /// Frames with a seq greater than `seq`, oldest first.
    func frames(after seq: Int) -> [BufferedFrame] {
        var result: [BufferedFrame] = []
        for i in 0..<count {
            if let frame = storage[(head + i) % storage.count], frame.seq > seq { result.append(frame) }
        }
        return result
    }

    func forEach(_ body: (BufferedFrame) -> Void) {
        for i in 0..<count {
            if let frame = storage[(head + i) % storage.count] { body(frame) }
        }
    }

    mutating func removeAll() {
        storage = [BufferedFrame?](repeating: nil, count: storage.count)
        head = 0
        count = 0
    }
}
