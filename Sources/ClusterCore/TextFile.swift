#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a file could not be read whole.
public enum ReadFileError: Error, Sendable, Equatable {
    case unreadable(String)
    /// The file holds more than the limit (its size, or the limit + 1 when it kept growing).
    case tooLarge(Int)
}

/// Reads a whole text file of at most `limit` bytes.
public func readTextFile(_ path: String, limit: Int = .max) -> Result<String, ReadFileError> {
    guard let file = fopen(path, "rb") else { return .failure(.unreadable(lastErrorDescription())) }
    defer { fclose(file) }
    var info = stat()
    if fstat(fileno(file), &info) == 0, Int(info.st_size) > limit { return .failure(.tooLarge(Int(info.st_size))) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
        if bytes.count > limit { return .failure(.tooLarge(bytes.count)) }
        if n < chunk.count { break }
    }
    if ferror(file) != 0 { return .failure(.unreadable(lastErrorDescription())) }
    return .success(String(decoding: bytes, as: UTF8.self))
}

/// The text of the current `errno`.
public func lastErrorDescription() -> String {
    String(cString: strerror(errno))
}
