import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// The emulator's open connections, so that stopping it closes them: the server otherwise waits for every
/// connection to end, and a client's pool may keep one open and idle for many minutes — one that never sent a
/// request even holds the server's stop uncancellably (it waits for the first request to decide on an upgrade).
final class ConnectionRegistry: Sendable {
    private let channels = Mutex<(open: [ObjectIdentifier: any Channel], closing: Bool)>(([:], false))

    /// How many connections are open.
    var count: Int { channels.withLock { $0.open.count } }

    func add(_ channel: any Channel) {
        let closing = channels.withLock { state in
            if !state.closing { state.open[ObjectIdentifier(channel)] = channel }
            return state.closing
        }
        // Accepted while the server stops: closed at once.
        if closing { channel.close(promise: nil) }
    }

    func remove(_ channel: any Channel) {
        _ = channels.withLock { $0.open.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Closes every listed connection, and every one added from now on.
    func closeAll() {
        let open = channels.withLock { state in
            state.closing = true
            return Array(state.open.values)
        }
        for channel in open { channel.close(promise: nil) }
    }
}

/// A server's child channel that lists each connection in a registry from the moment it is accepted until it
/// closes — before its first request: a connection that never sends one would otherwise hold the server's stop.
struct TrackedChildChannel<Inner: ServerChildChannel>: ServerChildChannel {
    let inner: Inner
    let registry: ConnectionRegistry

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Inner.Value> {
        registry.add(channel)
        let registry = registry
        channel.closeFuture.whenComplete { _ in registry.remove(channel) }
        return inner.setup(channel: channel, logger: logger)
    }

    func handle(value: Inner.Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}
