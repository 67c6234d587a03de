/// The supervisor's read-only HTTP endpoint: metrics, health, status and the status page.
public struct HTTPConfig: Sendable {
    /// Where it listens; nil when `http.listen` is `"off"`.
    public var listen: ListenAddress?
}

/// A `HOST:PORT` to listen on (`[::1]:9464` for an IPv6 host; port 0 picks a free one).
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// The address `host`:`port`.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` or `[V6HOST]:PORT`; nil, with why, when it is neither.
    public static func parse(_ text: String) -> Result<ListenAddress, ListenAddressError> {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(.init("an IPv6 host is written [HOST]:PORT"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return .failure(.init("write HOST:PORT, for example 127.0.0.1:9464")) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return .failure(.init("an IPv6 host is written [HOST]:PORT")) }
        }
        guard !host.isEmpty else { return .failure(.init("the host is missing (0.0.0.0 listens on every address)")) }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(.init("the port must be a number 0...65535 (0 picks a free one), got \"\(portText.prefix(20))\""))
        }
        return .success(ListenAddress(host: String(host), port: port))
    }

    /// `HOST:PORT`, with brackets around an IPv6 host.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Why a listen address does not parse.
public struct ListenAddressError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension HTTPConfig {
    /// The default: loopback only, on the port Prometheus exporters conventionally take first.
    public static let defaultListen = "127.0.0.1:9464"

    /// Reads the section from `reader`, reporting what is wrong there and recording the effective values.
    init(reading reader: ConfigReader) {
        let text = reader.string("listen", default: Self.defaultListen)
        if text == "off" {
            self.init(listen: nil)
        } else {
            switch ListenAddress.parse(text) {
            case .success(let address): self.init(listen: address)
            case .failure(let error):
                reader.report("listen", "\(error) (or \"off\")")
                self.init(listen: nil)
            }
        }
        reader.finish()
    }
}
