import ClusterIPC
import ClusterProtocol
import Foundation

/// The running cluster's status, asked over its control socket.
public func controlStatus(_ socket: String) async throws -> ClusterStatus {
    let (ok, body) = try await IPCClient.control(path: socket, .status)
    guard ok else { throw BenchError("status failed: \(body)") }
    return try JSONDecoder().decode(ClusterStatus.self, from: Data(body.utf8))
}
