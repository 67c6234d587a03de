/// A frame that could not be read: the connection that sent it is closed with this reason.
public struct IPCProtocolError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// An error whose message names what was wrong with the frame.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
