import ClusterCore

/// The emulator's simulated community: guilds, their channels, users with names that change over time, groups.
///
/// Ids are derived from indexes by arithmetic, so a reply that names a channel or a message maps back to its
/// record without a lookup table, and `(guild_id >> 22) % total` spreads guilds evenly over any shard count.
struct EmulatorWorld {
    let guilds: Int
    let channelsPerGuild: Int
    let users: Int
    /// How many times each user has been renamed.
    var nameVersions: [UInt32]
    let renamers: [Int]

    static let guildBase: UInt64 = 4_412_000_000
    static let channelBase = 10_000_000
    static let userBase: UInt64 = 144_115_188_075_855_000
    static let syllables = ["ka", "ri", "mo", "ta", "shi", "ne", "yu", "ra", "ko", "mi", "lan", "xi", "bo", "fei", "qing", "zhu"]

    init(traffic: TrafficConfig) {
        guilds = traffic.guilds
        channelsPerGuild = traffic.channelsPerGuild
        users = traffic.users
        nameVersions = [UInt32](repeating: 0, count: traffic.users)
        var rng = SplitMix64(seed: UInt64(traffic.seed) &+ 77)
        let count = Int((Double(traffic.users) * traffic.renameShare).rounded())
        renamers = Array((0..<traffic.users).shuffled(using: &rng).prefix(count)).sorted()
    }

    func guildID(_ index: Int) -> UInt64 {
        (EmulatorWorld.guildBase + UInt64(index)) << 22 | UInt64((index &* 7919) & 0xFFF)
    }

    func guildIndex(_ id: UInt64) -> Int? {
        let index = Int((id >> 22) &- EmulatorWorld.guildBase)
        return (0..<guilds).contains(index) && guildID(index) == id ? index : nil
    }

    func channelID(guild: Int, channel: Int) -> Int { EmulatorWorld.channelBase + guild * channelsPerGuild + channel }

    /// The guild a channel id belongs to, if the channel exists.
    func guildOfChannel(_ id: Int) -> Int? {
        let offset = id - EmulatorWorld.channelBase
        guard offset >= 0, offset < guilds * channelsPerGuild else { return nil }
        return offset / channelsPerGuild
    }

    func userID(_ index: Int) -> UInt64 { EmulatorWorld.userBase + UInt64(index) }

    func userIndex(_ id: UInt64) -> Int? {
        guard id >= EmulatorWorld.userBase else { return nil }
        let index = Int(id - EmulatorWorld.userBase)
        return index < users ? index : nil
    }

    /// A stable, pronounceable name for a user, with a suffix once renamed.
    func username(_ index: Int) -> String {
        var n = index
        var name = ""
        for _ in 0..<3 {
            name += EmulatorWorld.syllables[n % EmulatorWorld.syllables.count]
            n /= EmulatorWorld.syllables.count
        }
        let version = nameVersions[index]
        return version == 0 ? "\(name)\(index)" : "\(name)\(index)-v\(version)"
    }

    func avatar(_ index: Int) -> String { "https://thirdqq.qlogo.cn/emulator/\(index)/0" }

    func groupOpenID(_ index: Int) -> String { "G" + hex(UInt64(index) &* 0x9E37_79B9 &+ 0x1000_0000, width: 16) }
    func memberOpenID(_ index: Int) -> String { "M" + hex(UInt64(index) &* 0x85EB_CA6B &+ 0x2000_0000, width: 16) }
    func userOpenID(_ index: Int) -> String { "U" + hex(UInt64(index) &* 0xC2B2_AE35 &+ 0x3000_0000, width: 16) }

    func groupIndex(_ openID: String) -> Int? { openIDIndex(openID, prefix: "G", multiplier: 0x9E37_79B9, offset: 0x1000_0000, count: guilds) }
    func memberIndex(_ openID: String) -> Int? { openIDIndex(openID, prefix: "M", multiplier: 0x85EB_CA6B, offset: 0x2000_0000, count: users) }
    func userIndex(openID: String) -> Int? { openIDIndex(openID, prefix: "U", multiplier: 0xC2B2_AE35, offset: 0x3000_0000, count: users) }

    private func openIDIndex(_ openID: String, prefix: Character, multiplier: UInt64, offset: UInt64, count: Int) -> Int? {
        guard openID.first == prefix, let value = parseHex(openID.dropFirst()), value >= offset else { return nil }
        let scaled = value - offset
        guard scaled % multiplier == 0 else { return nil }
        let index = Int(scaled / multiplier)
        return index < count ? index : nil
    }

    mutating func rename(_ index: Int) {
        nameVersions[index] &+= 1
    }
}

let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

/// Lower-case hex of `value`, left-padded with zeros to `width` digits.
func hex(_ value: UInt64, width: Int) -> String {
    var bytes = [UInt8](repeating: UInt8(ascii: "0"), count: width)
    var v = value
    var i = width - 1
    while i >= 0 {
        bytes[i] = hexDigits[Int(v & 0xF)]
        v >>= 4
        i -= 1
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Parses lower- or upper-case hex; nil for anything else.
func parseHex(_ text: Substring) -> UInt64? {
    guard !text.isEmpty, text.count <= 16 else { return nil }
    var value: UInt64 = 0
    for byte in text.utf8 {
        let digit: UInt64
        switch byte {
        case 0x30...0x39: digit = UInt64(byte - 0x30)
        case 0x61...0x66: digit = UInt64(byte - 0x61 + 10)
        case 0x41...0x46: digit = UInt64(byte - 0x41 + 10)
        default: return nil
        }
        value = value << 4 | digit
    }
    return value
}

/// Message ids: the emulator instance's random prefix and the message's index in hex, so a reply maps back to
/// the record in O(1), and ids are unique across instances as the platform's are (a restarted emulator never
/// reuses an id a cluster may have recorded as handled).
struct MessageIDs: Sendable {
    /// 16 hex digits, random per instance.
    let instance: String

    init(instance: UInt64) {
        self.instance = hex(instance, width: 16)
    }

    func make(_ index: Int) -> String { "08" + instance + hex(UInt64(index), width: 14) + "e7" }

    func index(of id: String) -> Int? {
        guard id.utf8.count == 34, id.hasPrefix("08" + instance), id.hasSuffix("e7") else { return nil }
        let start = id.index(id.startIndex, offsetBy: 18)
        let end = id.index(id.endIndex, offsetBy: -2)
        return parseHex(id[start..<end]).map { Int($0) }
    }
}
