import ClusterCore
import Testing

@Suite("retry backoff")
struct BackoffTests {
    @Test func doublesFromTheBaseUpToTheCapForAnyCountOfAttempts() {
        let waits = (0...5).map { Duration.backoff(.milliseconds(100), attempts: $0, cap: .seconds(1)) }
        #expect(waits == [.milliseconds(100), .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1)])
        #expect(Duration.backoff(.milliseconds(100), attempts: .max, cap: .seconds(5)) == .seconds(5))
        #expect(Duration.backoff(.milliseconds(100), attempts: -3, cap: .seconds(5)) == .milliseconds(100))
    }
}
