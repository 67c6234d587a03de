import ClusterCore

/// Access tokens: issued for the app's secret, valid until they expire, checked on every request.
extension EmulatorCore {
    enum TokenResult {
        case issued(token: String, expiresIn: Int)
        case refused(code: Int, message: String)
    }

    mutating func issueToken(appID: String?, secret: String?, now: Int64) -> TokenResult {
        guard let appID, let secret else {
            return .refused(code: 100_016, message: "appId and clientSecret are required")
        }
        guard appID == app.id, secret == app.secret.reveal() else {
            return .refused(code: 100_016, message: "invalid appid or secret")
        }
        tokens = tokens.filter { $0.value > now }
        let lifetime = config.tokenLifetime.nanoseconds
        // The same token until its last 60 s; then a new one, the old one staying valid until it expires.
        if let token = currentToken, let expiry = tokens[token], expiry - now > min(60_000_000_000, lifetime / 2) {
            return .issued(token: token, expiresIn: Int((expiry - now) / 1_000_000_000))
        }
        let token = hex(secureRandom.next(), width: 16) + hex(secureRandom.next(), width: 16)
        tokens[token] = now + lifetime
        currentToken = token
        stats.tokensIssued += 1
        return .issued(token: token, expiresIn: Int(lifetime / 1_000_000_000))
    }

    /// Whether a token (with or without its "QQBot " prefix) is valid now.
    func tokenValid(_ raw: String, now: Int64) -> Bool {
        var token = Substring(raw)
        if token.hasPrefix("QQBot ") { token = token.dropFirst(6) }
        guard let expiry = tokens[String(token)] else { return false }
        return expiry > now
    }

    /// Checks an Authorization header: `QQBot <token>` or the legacy `Bot <appid>.<token>`.
    func authorize(_ header: String?, now: Int64) -> Bool {
        guard let header else { return false }
        if header.hasPrefix("QQBot ") { return tokenValid(String(header.dropFirst(6)), now: now) }
        if header.hasPrefix("Bot ") {
            let rest = header.dropFirst(4)
            guard let dot = rest.firstIndex(of: ".") else { return false }
            return rest[..<dot] == app.id && tokenValid(String(rest[rest.index(after: dot)...]), now: now)
        }
        return false
    }
}
