/// A frame that could not be read: the connection that sent it is closed with this reason.
public struct IPCProtocolError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
