import ClusterCore
import Foundation
import GRDB
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Opens an SQLite file (WAL) and brings its schema up to date; fails on a file that is not a database or that a
/// newer botcluster wrote (migrations this one does not know).
public func openMigrated(path: String, configuration: Configuration, migrator: DatabaseMigrator) throws -> DatabasePool {
    let pool = try DatabasePool(path: path, configuration: configuration)
    try pool.read { db in
        // Reading the schema fails on a file that is not a database.
        _ = try db.tableExists("sqlite_master")
        if try migrator.hasBeenSuperseded(db) { throw SchemaSuperseded(path: path) }
    }
    try migrator.migrate(pool)
    restrictToOwner(path)
    return pool
}

/// Makes a database and its WAL and shared-memory files readable by their owner only (they hold sessions and ids
/// that another local user must not read or plant).
public func restrictToOwner(_ path: String) {
    for suffix in ["", "-wal", "-shm"] { chmod(path + suffix, 0o600) }
}

/// Opens an SQLite file with `open`. Only a damaged file (or one of a newer schema) is moved aside, logged and
/// kept for a person to look at, and made anew; a file another process holds locked is healthy and is never
/// touched: that is an error naming the file and the way out. For files that can be rebuilt (a cache, the
/// supervisor's record): never a crash loop over a bad file, never a healthy file thrown away.
public func openRecovering<T>(path: String, what: String, logger: Logger, open: (String) throws -> T) throws -> T {
    do {
        return try open(path)
    } catch {
        switch SQLiteFailure(error) {
        case .damaged:
            moveAside(path: path, what: what, logger: logger, reason: "\(error)")
            return try open(path)
        case .busy:
            throw StoreError("\(what) \(path) is locked by another process (\(error)); a second supervisor or a tool holding a write transaction on it must let go first — or use another supervisor.runDirectory")
        case .full:
            throw StoreError("\(what) \(path): the disk is full (\(error))")
        case .other:
            throw StoreError("\(what) \(path): \(error)")
        }
    }
}

/// Moves a damaged database and its WAL aside (`<path>.corrupt-<time>`), logged with where it went.
public func moveAside(path: String, what: String, logger: Logger, reason: String) {
    let aside = path + ".corrupt-\(Int(Date().timeIntervalSince1970))"
    logger.error("\(what) is damaged: moved aside and made anew", metadata: ["path": "\(path)", "movedTo": "\(aside)", "error": "\(reason)"])
    for suffix in ["", "-wal", "-shm"] {
        try? FileManager.default.removeItem(atPath: aside + suffix)
        try? FileManager.default.moveItem(atPath: path + suffix, toPath: aside + suffix)
    }
}
