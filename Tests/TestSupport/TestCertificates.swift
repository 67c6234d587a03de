import Foundation

/// A self-signed certificate for 127.0.0.1 (and its key), made with the openssl command for one test.
public struct TestCertificate: Sendable {
    public var certificate: String
    public var key: String

    /// Writes `NAME.pem` and `NAME.key` into `directory`: an EC P-256 key and a certificate valid for a day, for
    /// `IP:127.0.0.1` and `DNS:localhost`.
    public static func make(in directory: String, name: String = "server") throws -> TestCertificate {
        let certificate = directory + "/\(name).pem"
        let key = directory + "/\(name).key"
        let (status, output) = try runCommand([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=botcluster test \(name)", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", key, "-out", certificate,
        ])
        guard status == 0 else { throw TestSetupError("openssl req failed (\(status)): \(output)") }
        return TestCertificate(certificate: certificate, key: key)
    }
}

/// A test's setup that did not work out (a helper process, a certificate), said plainly.
public struct TestSetupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs a command to its end and returns its exit status and output (both streams).
@discardableResult
public func runCommand(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
