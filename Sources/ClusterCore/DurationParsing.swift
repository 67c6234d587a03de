/// Parsing and printing of the durations cluster.json uses: a number and a unit, such as "500ms", "5s", "1.5m", "24h".
public enum DurationFormat {
    /// The units accepted after the number, with their length in nanoseconds.
    static let units: [(suffix: String, nanoseconds: Double)] = [
        ("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
        ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000),
    ]

    /// Parses "250ms" and the like; returns nil for anything else (no bare numbers: a unit is required).
    public static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingWhitespace()
        var numberEnd = trimmed.startIndex
        while numberEnd < trimmed.endIndex, trimmed[numberEnd].isNumber || trimmed[numberEnd] == "." {
            numberEnd = trimmed.index(after: numberEnd)
        }
        let number = trimmed[..<numberEnd]
        let unit = trimmed[numberEnd...]
        guard !number.isEmpty, let value = Double(number), value.isFinite, value >= 0 else { return nil }
        // "ms" must win over "m" + "s": match the whole unit text.
        guard let match = units.first(where: { $0.suffix == unit }) else { return nil }
        let nanos = value * match.nanoseconds
        guard nanos < 9.2e18 else { return nil }
        return .nanoseconds(Int64(nanos.rounded()))
    }

    /// Prints a duration for people: three significant digits in the largest fitting unit ("4.87ms", "312us").
    public static func human(_ duration: Duration) -> String {
        let nanos = Double(duration.nanoseconds)
        for (suffix, size) in [("s", 1e9), ("ms", 1e6), ("us", 1e3)] where abs(nanos) >= size {
            let value = nanos / size
            let digits = value >= 100 ? 0 : value >= 10 ? 1 : 2
            var text = String(Int64((value * pow10(digits)).rounded()))
            if digits > 0 {
                while text.count <= digits { text = "0" + text }
                text.insert(".", at: text.index(text.endIndex, offsetBy: -digits))
            }
            return text + suffix
        }
        return "\(Int64(nanos))ns"
    }

    static func pow10(_ n: Int) -> Double {
        var result = 1.0
        for _ in 0..<n { result *= 10 }
        return result
    }

    /// Prints a duration in the largest unit that keeps it exact, or in seconds with a fraction.
    public static func format(_ duration: Duration) -> String {
        let nanos = duration.nanoseconds
        if nanos == 0 { return "0s" }
        for (suffix, size) in [("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] as [(String, Int64)]
        where nanos % size == 0 {
            return "\(nanos / size)\(suffix)"
        }
        return "\(nanos)ns"
    }
}

extension Duration {
    /// The whole duration in nanoseconds (saturating).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return product &+ attoseconds / 1_000_000_000
    }

    /// The duration in seconds as a floating-point number.
    public var seconds: Double { Double(nanoseconds) / 1e9 }

    /// The duration in milliseconds as a floating-point number.
    public var milliseconds: Double { Double(nanoseconds) / 1e6 }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let first = s.first, first.isWhitespace { s.removeFirst() }
        while let last = s.last, last.isWhitespace { s.removeLast() }
        return String(s)
    }
}
