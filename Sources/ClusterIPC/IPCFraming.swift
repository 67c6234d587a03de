import ClusterProtocol
import NIOCore

/// Splits the stream into length-prefixed frames and decodes each into an `IPCMessage`. A frame over the size
/// limit or a frame that does not decode is a protocol error: the pipeline closes the connection.
final class IPCFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = IPCMessage
    /// The largest frame taken now. The server starts small (a hello is a few bytes) and raises it once it knows
    /// the peer's role: what a peer can make the server buffer is bounded by what its role needs.
    var maxFrameSize: Int

    init(maxFrameSize: Int) { self.maxFrameSize = maxFrameSize }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= maxFrameSize else {
            throw IPCProtocolError("frame of \(length) bytes is over the \(maxFrameSize)-byte limit")
        }
        guard length > 0 else { throw IPCProtocolError("empty frame") }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        var frame = buffer.readSlice(length: Int(length))!
        do {
            context.fireChannelRead(wrapInboundOut(try IPCMessage.decode(&frame)))
        } catch {
            throw error
        }
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Writes messages as length-prefixed frames.
final class IPCFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = IPCMessage

    func encode(data: IPCMessage, out: inout ByteBuffer) throws {
        let lengthIndex = out.writerIndex
        out.writeInteger(UInt32(0))
        data.encode(into: &out)
        out.setInteger(UInt32(out.writerIndex - lengthIndex - 4), at: lengthIndex)
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// Adds the IPC frame codec: length-prefixed frames in and out, decoded into `IPCMessage`s.
    public func addIPCCodec(maxFrameSize: Int = 1 << 20) throws {
        try addHandler(ByteToMessageHandler(IPCFrameDecoder(maxFrameSize: maxFrameSize)))
        try addHandler(MessageToByteHandler(IPCFrameEncoder()))
    }

    /// Adds the codec and returns its decoder, whose frame limit the caller changes as it learns who the peer is.
    func addIPCCodecReturningDecoder(maxFrameSize: Int) throws -> IPCFrameDecoder {
        let decoder = IPCFrameDecoder(maxFrameSize: maxFrameSize)
        try addHandler(ByteToMessageHandler(decoder))
        try addHandler(MessageToByteHandler(IPCFrameEncoder()))
        return decoder
    }
}
