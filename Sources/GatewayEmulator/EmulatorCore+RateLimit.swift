import ClusterCore
import HTTPTypes

/// The platform's global REST limit (GCRA, a second's worth of burst), spent by every authorized request.
extension EmulatorCore {
    /// Authorizes a request and spends the REST limit; the error to answer, or nil when admitted.
    mutating func admit(_ authorization: String?, now: Int64) -> PlatformError? {
        guard authorize(authorization, now: now) else {
            return PlatformError(status: .unauthorized, code: 11244, message: "token invalid or expired")
        }
        guard let retryAfter = admitRequest(now: now) else { return nil }
        return PlatformError(
            status: .tooManyRequests, code: 22009, message: "request rate limit exceeded",
            headers: [.retryAfter: String(retryAfter)]
        )
    }

    /// Takes one request from the global REST limit; returns nil when accepted, else the seconds to wait.
    mutating func admitRequest(now: Int64) -> Int? {
        stats.restRequests += 1
        let interval = Int64(1e9 / config.restRate)
        let burst = max(1, Int64(config.restRate.rounded(.down))) * interval
        let tat = max(restTAT, now)
        if tat - now + interval > burst {
            stats.rateLimited += 1
            let wait = Double(tat + interval - burst - now) / 1e9
            return max(1, Int(wait.rounded(.up)))
        }
        restTAT = tat + interval
        let second = now / 1_000_000_000
        if second != currentSecond {
            currentSecond = second
            requestsThisSecond = 0
        }
        requestsThisSecond += 1
        stats.peakRequestsPerSecond = max(stats.peakRequestsPerSecond, requestsThisSecond)
        return nil
    }
}
