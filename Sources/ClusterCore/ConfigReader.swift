#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One problem in a configuration: the key it concerns (dotted path) and what is wrong.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String

    /// An issue at the dotted key path `path` (empty for the whole document), saying `message`.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// A configuration that could not be loaded; `issues` holds one line per problem.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var source: String
    public var issues: [ConfigIssue]

    /// The error for `source` (the file's path, or a name for a document given as text) and its issues.
    public init(source: String, issues: [ConfigIssue]) {
        self.source = source
        self.issues = issues
    }

    public var description: String {
        issues.map { "\(source): \($0)" }.joined(separator: "\n")
    }
}

/// Reads one JSON object of a configuration into typed values, collecting every problem instead of stopping at
/// the first, and recording the normalized value of each key (defaults filled in, secrets redacted) for printing.
public final class ConfigReader {
    /// Problems shared by a reader and its nested readers.
    final class Diagnostics {
        var issues: [ConfigIssue] = []
        let environment: [String: String]
        let secrets: SecretResolution
        init(environment: [String: String], secrets: SecretResolution) {
            self.environment = environment
            self.secrets = secrets
        }
    }

    let path: String
    let members: [(key: String, value: JSONValue)]
    let diagnostics: Diagnostics
    private var known: [String] = []
    /// The normalized form of what was read, in reading order.
    public private(set) var normalized: [(key: String, value: JSONValue)] = []
    private weak var parent: ConfigReader?
    private var finished = false

    /// A reader for a whole document, which must be a JSON object.
    public convenience init(document: JSONValue, environment: [String: String], secrets: SecretResolution = .required) {
        let diagnostics = Diagnostics(environment: environment, secrets: secrets)
        if case .object = document {
            self.init(path: "", value: document, diagnostics: diagnostics, parent: nil)
        } else {
            diagnostics.issues.append(ConfigIssue(path: "", message: "the document must be a JSON object, got \(document.kindDescription)"))
            self.init(path: "", value: .object([]), diagnostics: diagnostics, parent: nil)
        }
    }

    init(path: String, value: JSONValue, diagnostics: Diagnostics, parent: ConfigReader?) {
        self.path = path
        if case .object(let members) = value { self.members = members } else { self.members = [] }
        self.diagnostics = diagnostics
        self.parent = parent
        // A key written twice is an error, not a silent "the last one wins" that hides the first one's problem.
        var seen: Set<String> = []
        for member in members where !seen.insert(member.key).inserted {
            diagnostics.issues.append(ConfigIssue(path: keyPath(member.key), message: "appears more than once; write each key once"))
        }
    }

    /// Every problem found so far, in this reader and all others of the same document.
    public var issues: [ConfigIssue] { diagnostics.issues }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// Records a problem at `key` (or at this object when nil).
    public func report(_ key: String?, _ message: String) {
        diagnostics.issues.append(ConfigIssue(path: key.map(keyPath) ?? path, message: message))
    }

    /// The raw value of `key`, marking the key as known.
    public func raw(_ key: String) -> JSONValue? {
        known.append(key)
        guard let value = members.last(where: { $0.key == key })?.value, value != .null else { return nil }
        return value
    }

    func record(_ key: String, _ value: JSONValue) {
        normalized.append((key, value))
    }

    /// A nested object; a missing key reads as an empty object so its defaults apply.
    public func object(_ key: String) -> ConfigReader {
        let value = raw(key)
        if let value, case .object = value {} else if let value {
            report(key, "must be an object, got \(value.kindDescription)")
        }
        return ConfigReader(path: keyPath(key), value: value ?? .object([]), diagnostics: diagnostics, parent: self)
    }

    /// Checks for unknown keys and hands the normalized values to the parent object.
    public func finish() {
        guard !finished else { return }
        finished = true
        let knownKeys = Set(known)
        var reported: Set<String> = []
        for member in members where !knownKeys.contains(member.key) && reported.insert(member.key).inserted {
            let suggestion = nearest(member.key, among: known)
            let hint = suggestion.map { "; did you mean \"\($0)\"?" } ?? ""
            diagnostics.issues.append(ConfigIssue(path: keyPath(member.key), message: "unknown key\(hint)"))
        }
        if let parent, let key = path.split(separator: ".").last {
            parent.record(String(key), .object(normalized))
        }
    }

    // MARK: typed values

    /// A boolean; `defaultValue` when the key is missing or not true or false (which is reported).
    public func bool(_ key: String, default defaultValue: Bool) -> Bool {
        var result = defaultValue
        if let value = raw(key) {
            if case .bool(let b) = value { result = b } else { report(key, "must be true or false, got \(value.kindDescription)") }
        }
        record(key, .bool(result))
        return result
    }

    /// A whole number within `range`; `defaultValue` when the key is missing or invalid (which is reported).
    public func int(_ key: String, default defaultValue: Int, range: ClosedRange<Int>) -> Int {
        var result = defaultValue
        if let value = raw(key) {
            if let n = value.intValue {
                if range.contains(n) { result = n } else { report(key, "must be \(range.lowerBound)...\(range.upperBound), got \(n)") }
            } else if case .number(let n) = value {
                report(key, "must be a whole number, got \(n)")
            } else {
                report(key, "must be a whole number (\(range.lowerBound)...\(range.upperBound)), got \(value.kindDescription)")
            }
        }
        record(key, .number(Double(result)))
        return result
    }

    /// A number within `range`; `defaultValue` when the key is missing or invalid (which is reported).
    public func double(_ key: String, default defaultValue: Double, range: ClosedRange<Double>) -> Double {
        var result = defaultValue
        if let value = raw(key) {
            if case .number(let n) = value {
                if range.contains(n) { result = n } else { report(key, "must be \(format(range.lowerBound))...\(format(range.upperBound)), got \(format(n))") }
            } else {
                report(key, "must be a number (\(format(range.lowerBound))...\(format(range.upperBound))), got \(value.kindDescription)")
            }
        }
        record(key, .number(result))
        return result
    }

    /// A string; `defaultValue` when the key is missing or not a string (which is reported).
    public func string(_ key: String, default defaultValue: String) -> String {
        var result = defaultValue
        if let value = raw(key) {
            if case .string(let s) = value { result = s } else { report(key, "must be a string, got \(value.kindDescription)") }
        }
        record(key, .string(result))
        return result
    }

    /// A string, or nil when the key is missing or not a string (which is reported).
    public func optionalString(_ key: String) -> String? {
        guard let value = raw(key) else { return nil }
        guard case .string(let s) = value else {
            report(key, "must be a string, got \(value.kindDescription)")
            return nil
        }
        record(key, .string(s))
        return s
    }

    /// A duration written as a string with a unit ("500ms", "5s", "2m").
    public func duration(_ key: String, default defaultValue: Duration, min: Duration = .zero, max: Duration = .seconds(86_400 * 7)) -> Duration {
        var result = defaultValue
        if let value = raw(key) {
            if case .string(let s) = value, let d = DurationFormat.parse(s) {
                if d < min || d > max {
                    report(key, "must be \(DurationFormat.format(min))...\(DurationFormat.format(max)), got \"\(s)\"")
                } else {
                    result = d
                }
            } else {
                let got = value.stringValue.map { "\"\($0)\"" } ?? value.kindDescription
                report(key, "must be a duration such as \"500ms\", \"5s\" or \"2m\", got \(got)")
            }
        }
        record(key, .string(DurationFormat.format(result)))
        return result
    }

    /// A secret: a literal string, or `"env:NAME"` read from the environment (an unset variable is an error).
    public func secret(_ key: String, default defaultValue: Secret) -> Secret {
        var result = defaultValue
        if let value = raw(key) {
            if case .string(let s) = value {
                if s.hasPrefix("env:") {
                    let name = String(s.dropFirst(4))
                    if name.isEmpty {
                        report(key, "\"env:\" must name an environment variable, as in \"env:QQ_BOT_SECRET\"")
                    } else if let resolved = diagnostics.environment[name], !resolved.isEmpty {
                        result = Secret(resolved, environmentVariable: name)
                    } else if diagnostics.secrets == .notNeeded {
                        result = Secret("", environmentVariable: name)
                    } else {
                        report(key, "environment variable \(name) (named by \"env:\(name)\") is not set")
                    }
                } else {
                    result = Secret(s)
                }
            } else {
                report(key, "must be a string or \"env:NAME\", got \(value.kindDescription)")
            }
        }
        record(key, .string(result.redactedSource))
        return result
    }

    /// An optional secret (`"env:NAME"` or a literal); nil when the key is absent.
    public func optionalSecret(_ key: String) -> Secret? {
        guard raw(key) != nil else { return nil }
        let value = secret(key, default: Secret(""))
        return value.reveal().isEmpty && diagnostics.secrets == .required ? nil : value
    }

    /// The path of a file this process can read (checked now, so that a typo is reported with the key).
    public func readableFile(_ key: String) -> String? {
        guard let path = optionalString(key) else { return nil }
        guard access(path, R_OK) == 0 else {
            report(key, "cannot read \"\(path)\" (\(lastErrorDescription()))")
            return nil
        }
        return path
    }

    /// A URL with one of the given schemes.
    public func url(_ key: String, schemes: [String], default defaultValue: String?) -> String? {
        var result = defaultValue
        if let value = raw(key) {
            if case .string(let s) = value, let scheme = s.split(separator: ":", maxSplits: 1).first,
                schemes.contains(scheme.lowercased()), s.contains("://"), s.count > scheme.count + 3
            {
                result = s
            } else {
                let got = value.stringValue.map { "\"\($0)\"" } ?? value.kindDescription
                report(key, "must be a URL starting with \(schemes.map { "\($0)://" }.joined(separator: " or ")), got \(got)")
            }
        }
        if let result { record(key, .string(result)) }
        return result
    }

    /// One of a fixed set of words.
    public func choice(_ key: String, default defaultValue: String, among choices: [String]) -> String {
        var result = defaultValue
        if let value = raw(key) {
            if case .string(let s) = value, choices.contains(s) {
                result = s
            } else {
                let got = value.stringValue.map { "\"\($0)\"" } ?? value.kindDescription
                report(key, "must be one of \(choices.map { "\"\($0)\"" }.joined(separator: ", ")), got \(got)")
            }
        }
        record(key, .string(result))
        return result
    }

    /// Records a value read through `raw` by a caller with its own validation.
    public func recordNormalized(_ key: String, _ value: JSONValue) {
        record(key, value)
    }

    private func format(_ n: Double) -> String {
        n.rounded() == n && abs(n) < 1e15 ? String(Int64(n)) : String(n)
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible typo.
func nearest(_ word: String, among candidates: [String]) -> String? {
    // A typo is short; comparing a long key against every candidate would cost its length times theirs.
    guard word.count <= 64 else { return nil }
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
    guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
    return best.1 <= max(2, word.count / 2) ? best.0 : nil
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
