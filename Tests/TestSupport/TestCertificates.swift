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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=botcluster test \(name)", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", key, "-out", certificate,
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw CertificateError(description: "openssl req failed (\(process.terminationStatus)): \(text)")
        }
        return TestCertificate(certificate: certificate, key: key)
    }
}

public struct CertificateError: Error, CustomStringConvertible {
    public var description: String
}
