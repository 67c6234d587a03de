import Crypto
import Foundation

/// The platform's webhook signatures: an ed25519 key pair derived from the app secret, over the
/// `X-Signature-Timestamp` bytes followed by the raw request body (or, for the op 13 URL validation, `event_ts`
/// followed by `plain_token`).
///
/// The seed is the secret repeated until it is at least 32 bytes, cut to 32 (RFC 8032 key from that seed). Both
/// ends use it: the ingress verifies and answers op 13, the emulator signs as the platform does.
public struct WebhookKey: Sendable {
    let privateKey: Curve25519.Signing.PrivateKey

    /// The key pair of the bot whose app secret is `secret` (empty secrets get no key).
    public init?(secret: Secret) {
        let bytes = Array(secret.reveal().utf8)
        guard !bytes.isEmpty else { return nil }
        var seed = bytes
        while seed.count < 32 { seed += bytes }
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed.prefix(32)) else { return nil }
        privateKey = key
    }

    /// The 32 bytes of the public key (what the platform's console shows, and what a verifier needs).
    public var publicKeyBytes: [UInt8] { Array(privateKey.publicKey.rawRepresentation) }

    /// The signature of `timestamp` followed by `body`, 64 bytes.
    public func sign(timestamp: some Collection<UInt8>, body: some Collection<UInt8>) -> [UInt8] {
        // Ed25519 signing only fails for a malformed key, which `init` cannot make.
        (try? Array(privateKey.signature(for: Self.message(timestamp, body)))) ?? []
    }

    /// What is signed: the timestamp's bytes, then the body's.
    static func message(_ timestamp: some Collection<UInt8>, _ body: some Collection<UInt8>) -> [UInt8] {
        var message = [UInt8]()
        message.reserveCapacity(timestamp.count + body.count)
        message += timestamp
        message += body
        return message
    }

    /// The hex signature of the op 13 answer: over `event_ts` followed by `plain_token`.
    public func validationSignature(eventTS: String, plainToken: String) -> String {
        Self.hex(sign(timestamp: Array(eventTS.utf8), body: Array(plainToken.utf8)))
    }

    /// Whether `signature` (64 bytes) is this key's over `timestamp` followed by `body`. A signature whose last byte
    /// has any of the top three bits set is refused before the curve arithmetic, as the platform's own code does.
    public func verify(signature: [UInt8], timestamp: some Collection<UInt8>, body: some Collection<UInt8>) -> Bool {
        guard signature.count == 64, signature[63] & 0xE0 == 0 else { return false }
        return privateKey.publicKey.isValidSignature(signature, for: Self.message(timestamp, body))
    }

    /// Lower-case hex of `bytes`.
    public static func hex(_ bytes: some Collection<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of a hex string (either case); nil if it is not an even number of hex digits or longer than `limit` bytes.
    public static func bytes(hex text: some StringProtocol, limit: Int = 64) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0, utf8.count / 2 <= limit else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}
