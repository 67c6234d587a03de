import ClusterCore
import Testing

@Suite("webhook signatures: the platform's vectors")
struct WebhookKeyTests {
    @Test func theOp13AnswerOfTheDocsReproducesExactly() throws {
        let key = try #require(WebhookKey(secret: Secret("DG5g3B4j9X2KOErG")))
        #expect(
            key.validationSignature(eventTS: "1725442341", plainToken: "Arq0D5A61EgUu4OxUvOp")
                == "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d01bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706"
        )
    }

    @Test func theKeyOfTheDocsSecretIsDerivedFromTheRepeatedSeed() throws {
        // The secret is repeated to 32 bytes ("naOC0ocQE3shWLAfffVLB1rhYPG7naOC"); the public key begins as sign.md prints.
        let key = try #require(WebhookKey(secret: Secret("naOC0ocQE3shWLAfffVLB1rhYPG7")))
        #expect(Array(key.publicKeyBytes.prefix(8)) == [215, 195, 98, 254, 120, 174, 248, 31])
        #expect(key.publicKeyBytes.count == 32)
        let seeded = try #require(WebhookKey(secret: Secret("naOC0ocQE3shWLAfffVLB1rhYPG7naOC")))
        #expect(seeded.publicKeyBytes == key.publicKeyBytes)
    }

    @Test func aSignatureVerifiesOverTheTimestampAndTheRawBodyOnly() throws {
        let key = try #require(WebhookKey(secret: Secret("emulator-development-secret")))
        let body = Array(#"{"op":0,"id":"e1","t":"AT_MESSAGE_CREATE","d":{}}"#.utf8)
        let signature = key.sign(timestamp: Array("1725442341".utf8), body: body)
        #expect(signature.count == 64)
        #expect(key.verify(signature: signature, timestamp: Array("1725442341".utf8), body: body))
        // Another timestamp, one byte of the body changed, the same JSON with other whitespace: all refused.
        #expect(!key.verify(signature: signature, timestamp: Array("1725442342".utf8), body: body))
        var changed = body
        changed[changed.count - 2] = UInt8(ascii: " ")
        #expect(!key.verify(signature: signature, timestamp: Array("1725442341".utf8), body: changed))
        #expect(!key.verify(signature: signature, timestamp: Array("1725442341".utf8), body: Array(#"{"op": 0,"id":"e1","t":"AT_MESSAGE_CREATE","d":{}}"#.utf8)))
        // Another app's key.
        let other = try #require(WebhookKey(secret: Secret("another-secret")))
        #expect(!other.verify(signature: signature, timestamp: Array("1725442341".utf8), body: body))
    }

    @Test func aSignatureWithTheTopBitsOfItsLastByteSetIsRefusedBeforeTheCurve() throws {
        let key = try #require(WebhookKey(secret: Secret("emulator-development-secret")))
        var signature = key.sign(timestamp: Array("1".utf8), body: Array("x".utf8))
        #expect(key.verify(signature: signature, timestamp: Array("1".utf8), body: Array("x".utf8)))
        signature[63] |= 0x20
        #expect(!key.verify(signature: signature, timestamp: Array("1".utf8), body: Array("x".utf8)))
        #expect(!key.verify(signature: Array(signature.prefix(63)), timestamp: Array("1".utf8), body: Array("x".utf8)))
    }

    @Test func hexRoundTripsAndRefusesWhatIsNotHex() {
        let bytes: [UInt8] = [0, 1, 0xAB, 0xFF]
        #expect(WebhookKey.hex(bytes) == "0001abff")
        #expect(WebhookKey.bytes(hex: "0001ABff") == bytes)
        #expect(WebhookKey.bytes(hex: "abc") == nil)
        #expect(WebhookKey.bytes(hex: "zz") == nil)
        #expect(WebhookKey.bytes(hex: String(repeating: "00", count: 65)) == nil)
        #expect(WebhookKey(secret: Secret("")) == nil)
    }
}
