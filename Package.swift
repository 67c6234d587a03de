// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "botcluster",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "botcluster", targets: ["botcluster"]),
        .executable(name: "botcluster-bench", targets: ["BotClusterBench"]),
        .executable(name: "botcluster-chaos", targets: ["BotClusterChaos"]),
        .library(name: "BotCluster", targets: ["BotCluster"]),
        .library(name: "GatewayEmulator", targets: ["GatewayEmulator"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", "2.101.0"..<"2.102.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        .target(
            name: "ClusterCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(name: "CBotSystem"),
        .target(name: "ClusterProtocol"),
        .systemLibrary(name: "CSQLite3", path: "Sources/CSQLite3"),
        .target(name: "CSQLiteBench", linkerSettings: [.linkedLibrary("sqlite3")]),
        .target(
            name: "ClusterIPC",
            dependencies: [
                "ClusterCore", "ClusterProtocol", "CBotSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "QQGateway",
            dependencies: [
                "ClusterCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        .target(
            name: "RateBudget",
            dependencies: ["ClusterCore"]
        ),
        .target(
            name: "Worker",
            dependencies: [
                "ClusterCore", "ClusterIPC", "ClusterProtocol", "QQGateway", "RateBudget", "UserCache",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Supervisor",
            dependencies: [
                "ClusterCore", "ClusterIPC", "ClusterProtocol", "QQGateway", "RateBudget", "SQLiteSupport", "UserCache", "CBotSystem", "ClusterPostgres",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The supervisor's read-only HTTP endpoint: metrics, probes, status, the status page.
        .target(
            name: "ClusterHTTP",
            dependencies: [
                "ClusterCore", "ClusterProtocol", "Supervisor",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // PostgreSQL as the authority of a cluster that spans hosts: shard leases, sessions, identify slots, claims.
        .target(
            name: "ClusterPostgres",
            dependencies: [
                "ClusterCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .target(
            name: "SQLiteSupport",
            dependencies: [
                "ClusterCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "UserCache",
            dependencies: [
                "ClusterCore", "CSQLite3", "SQLiteSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "GatewayEmulator",
            dependencies: [
                "ClusterCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HummingbirdHTTP2", package: "hummingbird"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "BotCluster",
            dependencies: [
                "ClusterCore", "ClusterIPC", "ClusterProtocol", "QQGateway", "RateBudget", "UserCache", "Worker", "Supervisor", "GatewayEmulator", "CBotSystem", "ClusterHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "botcluster",
            dependencies: ["BotCluster", "Worker"]
        ),
        // What the bench and the chaos check share: the emulator's admin API, child processes, the cluster's status.
        .target(
            name: "BenchSupport",
            dependencies: [
                "ClusterCore", "ClusterIPC", "ClusterProtocol", "QQGateway",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "BotClusterBench",
            dependencies: [
                "BenchSupport", "ClusterCore", "ClusterIPC", "ClusterProtocol", "BotCluster", "Worker", "QQGateway", "UserCache", "Supervisor", "RateBudget", "CSQLiteBench",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "BotClusterChaos",
            dependencies: [
                "BenchSupport", "ClusterCore", "ClusterIPC", "ClusterProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Helpers several test targets share (test certificates); no product links it.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "ClusterCoreTests",
            dependencies: ["ClusterCore"]
        ),
        .testTarget(
            name: "ClusterIPCTests",
            dependencies: [
                "ClusterIPC", "ClusterProtocol", "ClusterCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SupervisorTests",
            dependencies: [
                "Supervisor", "ClusterIPC", "ClusterProtocol", "ClusterCore", "ClusterPostgres", "UserCache", "Worker",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "ClusterPostgresTests",
            dependencies: ["ClusterPostgres", "ClusterCore", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "QQGatewayTests",
            dependencies: ["QQGateway", "ClusterCore"]
        ),
        .testTarget(
            name: "UserCacheTests",
            dependencies: ["UserCache", "ClusterCore", .product(name: "Logging", package: "swift-log"), .product(name: "GRDB", package: "GRDB.swift")]
        ),
        .testTarget(
            name: "RateBudgetTests",
            dependencies: ["RateBudget", "ClusterCore"]
        ),
        .testTarget(
            name: "WorkerTests",
            dependencies: [
                "Worker", "QQGateway", "TestSupport", "RateBudget", "GatewayEmulator", "ClusterCore", "ClusterIPC", "ClusterProtocol",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "ProcessTests",
            dependencies: [
                "ClusterCore", "ClusterIPC", "ClusterProtocol", "TestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .testTarget(
            name: "GatewayEmulatorTests",
            dependencies: [
                "GatewayEmulator", "ClusterCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)

for target in package.targets where target.type != .system && !target.name.hasPrefix("C") {
    target.swiftSettings = (target.swiftSettings ?? []) + swiftSettings
}
