import QQGateway
import Testing

@Suite("proxies from the environment")
struct ProxyEnvironmentTests {
    @Test func httpsAndHTTPProxiesAreReadWithTheirCredentials() throws {
        let proxies = try ProxyEnvironment(environment: [
            "HTTPS_PROXY": "http://bot:p%40ss@proxy.internal:3128", "http_proxy": "socks5://socks.internal",
        ])
        #expect(proxies.https == ProxyRoute(kind: .http, host: "proxy.internal", port: 3128, credentials: "bot:p@ss"))
        #expect(proxies.http == ProxyRoute(kind: .socks, host: "socks.internal", port: 1080, credentials: nil))
        #expect(proxies.route(scheme: "https", host: "api.sgroup.qq.com") == proxies.https)
        #expect(proxies.route(scheme: "wss", host: "api.sgroup.qq.com") == proxies.https)
        #expect(proxies.route(scheme: "ws", host: "gateway.example") == proxies.http)
        // The uppercase name wins over the lowercase one, as in curl.
        let both = try ProxyEnvironment(environment: ["HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"])
        #expect(both.https?.host == "a")
    }

    @Test func noProxyAndLoopbackGoDirect() throws {
        let proxies = try ProxyEnvironment(environment: ["HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "internal.example, .qq.com:443,10.0.0.5"])
        #expect(proxies.route(scheme: "https", host: "api.sgroup.qq.com") == nil)
        #expect(proxies.route(scheme: "https", host: "qq.com") == nil)
        #expect(proxies.route(scheme: "https", host: "svc.internal.example") == nil)
        #expect(proxies.route(scheme: "https", host: "10.0.0.5") == nil)
        #expect(proxies.route(scheme: "https", host: "bots.example") != nil)
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            #expect(proxies.route(scheme: "https", host: host) == nil, "\(host)")
        }
        let none = try ProxyEnvironment(environment: ["HTTPS_PROXY": "http://proxy:3128", "no_proxy": "*"])
        #expect(none.route(scheme: "https", host: "api.sgroup.qq.com") == nil)
    }

    @Test func aProxyThatCannotBeUsedIsAClearError() {
        #expect(throws: ProxyEnvironmentError.self) { try ProxyEnvironment(environment: ["HTTPS_PROXY": "https://proxy:443"]) }
        #expect(throws: ProxyEnvironmentError.self) { try ProxyEnvironment(environment: ["HTTPS_PROXY": "http://proxy:notaport"]) }
        #expect(throws: ProxyEnvironmentError.self) { try ProxyEnvironment(environment: ["HTTP_PROXY": "socks5://u:p@proxy"]) }
        let error = #expect(throws: ProxyEnvironmentError.self) { try ProxyEnvironment(environment: ["HTTPS_PROXY": "ftp://proxy"]) }
        #expect(error?.description == "HTTPS_PROXY: a ftp:// proxy is not supported; use http:// or socks5://")
    }
}
