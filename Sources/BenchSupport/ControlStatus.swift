import ClusterCore
import ClusterIPC
import ClusterProtocol
import Foundation

/// The running cluster's status, asked over its control socket.
public func controlStatus(_ socket: String) async throws -> ClusterStatus {
    let (ok, body) = try await IPCClient.control(path: socket, .status)
    guard ok else { throw BenchError("status failed: \(body)") }
    return try JSONDecoder().decode(ClusterStatus.self, from: Data(body.utf8))
}

/// What each worker of the cluster at `socket` serves for `user` (`botcluster user`), by ordinal; nil where a worker
/// has no name for it.
public func controlUserNames(_ socket: String, user: String) async throws -> [String: String?] {
    let (ok, body) = try await IPCClient.control(path: socket, .user(id: user))
    guard ok, case .object(let workers) = try JSONValue.parse(body)["workers"] ?? .null else { throw BenchError("user query failed: \(body)") }
    var names: [String: String?] = [:]
    for (ordinal, name) in workers { names[ordinal] = name.stringValue }
    return names
}
