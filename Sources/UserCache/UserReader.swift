import CSQLite3
import ClusterCore
import Synchronization

/// Point reads of the user cache on one read-only SQLite connection with one prepared statement.
///
/// GRDB's pool costs about 20 µs per access (a reader checkout, a serialized dispatch, a schema check) around a
/// 4 µs lookup; a cache miss is hot enough to skip that. Writes, migrations and recovery stay with the GRDB pool.
/// In WAL mode this connection sees every committed write of every process.
final class UserReader: @unchecked Sendable {
    struct Handle {
        var db: OpaquePointer?
        var statement: OpaquePointer?
    }

    let handle: Mutex<Handle>
    let path: String

    init(path: String) throws {
        self.path = path
        var db: OpaquePointer?
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            throw UserReaderError(message: "\(path): \(message)")
        }
        sqlite3_busy_timeout(db, 10_000)
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, "SELECT id, username, avatar, bot, updated_at, shard FROM users WHERE id = ?", -1, &statement, nil) == SQLITE_OK else {
            let message = String(cString: sqlite3_errmsg(db))
            sqlite3_close(db)
            throw UserReaderError(message: "\(path): \(message)")
        }
        handle = Mutex(Handle(db: db, statement: statement))
    }

    deinit {
        handle.withLock { handle in
            sqlite3_finalize(handle.statement)
            sqlite3_close(handle.db)
        }
    }

    func user(_ id: String) throws -> CachedUser? {
        try handle.withLock { handle -> CachedUser? in
            let statement = handle.statement
            defer {
                sqlite3_reset(statement)
                sqlite3_clear_bindings(statement)
            }
            var id = id
            let bound = id.withUTF8 { bytes in
                sqlite3_bind_text(statement, 1, bytes.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, Int32(bytes.count), unsafeBitCast(-1, to: sqlite3_destructor_type.self))
            }
            guard bound == SQLITE_OK else { throw UserReaderError(message: String(cString: sqlite3_errmsg(handle.db))) }
            switch sqlite3_step(statement) {
            case SQLITE_ROW:
                func text(_ column: Int32) -> String? {
                    guard let pointer = sqlite3_column_text(statement, column) else { return nil }
                    return String(cString: pointer)
                }
                return CachedUser(
                    id: text(0) ?? id, username: text(1) ?? "", avatar: text(2), bot: sqlite3_column_int(statement, 3) != 0,
                    updatedAt: sqlite3_column_double(statement, 4), shard: Int(sqlite3_column_int(statement, 5))
                )
            case SQLITE_DONE:
                return nil
            default:
                throw UserReaderError(message: String(cString: sqlite3_errmsg(handle.db)))
            }
        }
    }
}

struct UserReaderError: Error, CustomStringConvertible {
    var message: String
    var description: String { "user cache read: \(message)" }
}
