/// A secret value from cluster.json: either a literal or `"env:NAME"`, resolved at load time.
///
/// Its `description` never shows the value, so a secret that reaches a log line or an error message by accident
/// prints as `<redacted>`.
public struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    /// Where the value came from: the name of the environment variable, or nil for a literal in the file.
    public let environmentVariable: String?
    private let value: String

    /// A secret of `value`, read from `environmentVariable` (nil for a literal in the file).
    public init(_ value: String, environmentVariable: String? = nil) {
        self.value = value
        self.environmentVariable = environmentVariable
    }

    /// The secret itself. Call only where it is sent to the platform.
    public func reveal() -> String { value }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }

    /// How the normalized configuration shows it: the env reference, or `<redacted>` for a literal.
    public var redactedSource: String {
        environmentVariable.map { "env:\($0)" } ?? "<redacted>"
    }
}
