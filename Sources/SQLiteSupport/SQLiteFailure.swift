import GRDB

/// How an SQLite failure is handled, by what the disk or another process did.
public enum SQLiteFailure: Sendable, Equatable {
    /// The file is damaged or not a database (SQLITE_CORRUPT, SQLITE_NOTADB), or a newer botcluster's schema:
    /// moved aside (kept for a person to look at) and made anew.
    case damaged
    /// Another connection holds the lock past the busy timeout (SQLITE_BUSY, SQLITE_LOCKED): the file is healthy;
    /// wait, or say who holds it. Never moved aside.
    case busy
    /// The disk (or a file-size limit) is full (SQLITE_FULL): keep what is pending and try again.
    case full
    /// Anything else (an I/O error, a read-only file, a permission): keep what is pending and try again.
    case other

    /// The kind of failure an error from GRDB is (`other` for an error that is not a database error).
    public init(_ error: any Error) {
        if error is SchemaSuperseded {
            self = .damaged
            return
        }
        guard let error = error as? DatabaseError else {
            self = .other
            return
        }
        switch error.resultCode {
        case .SQLITE_CORRUPT, .SQLITE_NOTADB: self = .damaged
        case .SQLITE_BUSY, .SQLITE_LOCKED: self = .busy
        case .SQLITE_FULL: self = .full
        default: self = .other
        }
    }
}

/// A file written by a newer botcluster (migrations this one does not know).
public struct SchemaSuperseded: Error, CustomStringConvertible {
    public var path: String
    public var description: String { "\(path) was written by a newer botcluster (unknown migrations)" }
}

/// Why a database could not be opened, naming the file and what to do.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// An error with its message, which names the file and what to do.
    public init(_ description: String) { self.description = description }
}
