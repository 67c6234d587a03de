/// Whether the secrets a configuration names must be resolvable: a command that never talks to the platform
/// (`status`, `stop`) reads the file without them, so an unset `env:` variable does not stop it.
public enum SecretResolution: Sendable {
    case required
    case notNeeded
}

extension ClusterConfig {
    /// The largest cluster.json read: far above any real configuration, far below what makes validation slow.
    public static let maxFileSize = 1 << 20

    /// Loads and validates a cluster.json file. Every problem is reported, each on its own line.
    public static func load(path: String, environment: [String: String], secrets: SecretResolution = .required) throws(ConfigError) -> ClusterConfig {
        let text: String
        switch readTextFile(path, limit: maxFileSize) {
        case .success(let contents): text = contents
        case .failure(.tooLarge(let size)):
            throw ConfigError(source: path, issues: [ConfigIssue(path: "", message: "the file is \(size) bytes; a configuration holds at most \(maxFileSize)")])
        case .failure(.unreadable(let reason)):
            throw ConfigError(source: path, issues: [ConfigIssue(path: "", message: "cannot read the file (\(reason))")])
        }
        return try parse(text, source: path, environment: environment, secrets: secrets)
    }

    /// Validates the text of a cluster.json.
    public static func parse(
        _ text: String, source: String = "cluster.json", environment: [String: String] = [:], secrets: SecretResolution = .required
    ) throws(ConfigError) -> ClusterConfig {
        guard text.utf8.count <= maxFileSize else {
            throw ConfigError(source: source, issues: [ConfigIssue(path: "", message: "the document is \(text.utf8.count) bytes; a configuration holds at most \(maxFileSize)")])
        }
        let document: JSONValue
        do {
            document = try JSONValue.parse(text)
        } catch {
            throw ConfigError(source: source, issues: [ConfigIssue(path: "", message: "malformed JSON at \(error)")])
        }
        let root = ConfigReader(document: document, environment: environment, secrets: secrets)
        let config = read(root)
        if !root.issues.isEmpty { throw ConfigError(source: source, issues: root.issues) }
        return config
    }

    /// The configuration with every default, as if cluster.json were `{}`.
    public static var defaults: ClusterConfig {
        read(ConfigReader(document: .object([]), environment: [:]))
    }
}
