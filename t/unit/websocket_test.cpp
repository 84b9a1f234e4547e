#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "websocket.h"

using recording::append_websocket_close;
using recording::append_websocket_frame;
using recording::append_websocket_pong;
using recording::append_websocket_text;
using recording::valid_websocket_key;
using recording::valid_websocket_version;
using recording::WebSocketEvent;
using recording::WebSocketOpcode;
using recording::WebSocketReader;
using Kind = WebSocketEvent::Kind;

namespace {

constexpr uint8_t kContinuation = 0x0;
constexpr uint8_t kText = 0x1;
constexpr uint8_t kBinary = 0x2;
constexpr uint8_t kClose = 0x8;
constexpr uint8_t kPing = 0x9;
constexpr uint8_t kPong = 0xA;
constexpr uint8_t kFin = 0x80;

constexpr size_t kLimit = 1 << 20;

// How a test frame writes its payload length: the shortest form, or one
// forced (a non-minimal encoding, or a length that is a lie).
enum class LengthForm { minimal, bits16, bits64 };

void put_length(std::string& out, uint8_t mask_bit, uint64_t length, LengthForm form)
{
    if (form == LengthForm::minimal) {
        form = length <= 125 ? LengthForm::minimal : length <= 0xFFFF ? LengthForm::bits16 : LengthForm::bits64;
    }
    switch (form) {
    case LengthForm::minimal:
        out += static_cast<char>(mask_bit | length);
        break;
    case LengthForm::bits16:
        out += static_cast<char>(mask_bit | 126);
        out += static_cast<char>(length >> 8);
        out += static_cast<char>(length & 0xFF);
        break;
    case LengthForm::bits64:
        out += static_cast<char>(mask_bit | 127);
        for (int shift = 56; shift >= 0; shift -= 8) {
            out += static_cast<char>((length >> shift) & 0xFF);
        }
        break;
    }
}

// A client frame, written here independently of the module's encoder:
// `first` is the first byte as sent (FIN, RSV bits, opcode).
std::string client_frame(uint8_t first, std::string_view payload, LengthForm form = LengthForm::minimal,
                         bool masked = true)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};  // RFC 6455 §5.7's example key
    std::string out;
    out += static_cast<char>(first);
    put_length(out, masked ? 0x80 : 0x00, payload.size(), form);
    if (!masked) {
        return out.append(payload);
    }
    out.append(reinterpret_cast<const char*>(key), 4);
    for (size_t i = 0; i < payload.size(); i++) {
        out += static_cast<char>(payload[i] ^ key[i % 4]);
    }
    return out;
}

std::string text(std::string_view payload) { return client_frame(kFin | kText, payload); }
std::string binary(std::string_view payload) { return client_frame(kFin | kBinary, payload); }

// Only the header of a masked frame claiming `length` bytes.
std::string header_claiming(uint8_t first, uint64_t length, LengthForm form)
{
    std::string out;
    out += static_cast<char>(first);
    put_length(out, 0x80, length, form);
    return out.append("\x01\x02\x03\x04", 4);
}

std::string close_payload(uint16_t code, std::string_view reason = {})
{
    std::string out;
    out += static_cast<char>(code >> 8);
    out += static_cast<char>(code & 0xFF);
    return out.append(reason);
}

std::string bytes_of(size_t size, unsigned seed = 1)
{
    std::string out(size, '\0');
    uint32_t x = seed;
    for (char& c : out) {
        x = x * 1103515245u + 12345u;
        c = static_cast<char>(x >> 16);
    }
    return out;
}

struct Got {
    Kind kind;
    uint16_t code = 0;
    std::string payload;

    bool operator==(const Got& other) const
    {
        return kind == other.kind && code == other.code && payload == other.payload;
    }
};

std::ostream& operator<<(std::ostream& os, const Got& got)
{
    static const char* const names[] = {"none", "text", "binary", "ping", "pong", "close", "error"};
    os << names[static_cast<int>(got.kind)] << " code " << got.code << " payload of " << got.payload.size()
       << " bytes";
    if (got.payload.size() <= 32) {
        os << " \"" << got.payload << "\"";
    }
    return os;
}

Got message(Kind kind, std::string payload) { return {kind, 0, std::move(payload)}; }
Got error(uint16_t code) { return {Kind::error, code, {}}; }
Got closed(uint16_t code, std::string reason = {}) { return {Kind::close, code, std::move(reason)}; }

// Feeds `input` in pieces of `piece` bytes (0: all at once), the way the
// header tells a caller to, and gathers every event.
std::vector<Got> read_all(WebSocketReader& reader, std::string_view input, size_t piece = 0)
{
    if (piece == 0) {
        piece = input.size() > 0 ? input.size() : 1;
    }
    std::vector<Got> events;
    size_t offset = 0;
    while (offset < input.size()) {
        const size_t end = std::min(input.size(), offset + piece);
        while (offset < end) {
            const size_t taken = reader.feed(input.data() + offset, end - offset);
            EXPECT_LE(taken, end - offset);
            offset += taken;
            bool any = false;
            while (WebSocketEvent event = reader.next()) {
                if (event.kind == Kind::error) {
                    EXPECT_NE(event.error, nullptr);
                    EXPECT_TRUE(event.payload.empty());
                }
                events.push_back({event.kind, event.code, std::string(event.payload)});
                any = true;
            }
            if (taken == 0 && !any) {
                ADD_FAILURE() << "feed() took nothing and has no event: the caller would spin";
                return events;
            }
        }
    }
    return events;
}

std::vector<Got> read_all(std::string_view input, size_t piece = 0, size_t limit = kLimit)
{
    WebSocketReader reader(limit);
    return read_all(reader, input, piece);
}

// The same events whether the stream comes whole, a byte at a time, or in
// pieces of a few sizes between.
std::vector<Got> read_every_way(std::string_view input, size_t limit = kLimit)
{
    std::vector<Got> whole = read_all(input, 0, limit);
    for (size_t piece : {1, 2, 3, 5, 7, 13, 64, 1000}) {
        EXPECT_EQ(read_all(input, piece, limit), whole) << "in pieces of " << piece;
    }
    return whole;
}

// The single event that makes the reader fail, for a frame given whole.
void expect_protocol_error(std::string_view input, uint16_t code = 1002)
{
    std::vector<Got> events = read_every_way(input);
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back(), error(code));
}

}  // namespace

// ---------------------------------------------------------------------------
// Data messages

TEST(WebSocketReader, MaskedTextAndBinaryInOneChunk)
{
    EXPECT_EQ(read_all(text("Hello")), std::vector<Got>{message(Kind::text, "Hello")});
    const std::string payload("\x1f\x8b\x08\x00\xff\x00", 6);
    EXPECT_EQ(read_all(binary(payload)), std::vector<Got>{message(Kind::binary, payload)});
}

TEST(WebSocketReader, RfcExampleFrameIsUnmasked)
{
    // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
    const std::string frame("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
    EXPECT_EQ(read_all(frame), std::vector<Got>{message(Kind::text, "Hello")});
}

TEST(WebSocketReader, ByteByByteAndAnySplit)
{
    const std::string stream = text(R"({"session_id":"a","seq":0})") + binary(bytes_of(300)) + text("");
    const std::vector<Got> expected = {message(Kind::text, R"({"session_id":"a","seq":0})"),
                                       message(Kind::binary, bytes_of(300)), message(Kind::text, "")};
    EXPECT_EQ(read_every_way(stream), expected);
    // Every single cut point, with the unmasking resumed mid-key.
    for (size_t cut = 0; cut <= stream.size(); cut++) {
        WebSocketReader reader(kLimit);
        std::vector<Got> events = read_all(reader, stream.substr(0, cut));
        std::vector<Got> rest = read_all(reader, stream.substr(cut));
        events.insert(events.end(), rest.begin(), rest.end());
        EXPECT_EQ(events, expected) << "cut at " << cut;
    }
}

TEST(WebSocketReader, SixteenBitLengths)
{
    for (size_t size : {126, 127, 1000, 65535}) {
        const std::string payload = bytes_of(size, static_cast<unsigned>(size));
        const std::string frame = binary(payload);
        ASSERT_EQ(static_cast<uint8_t>(frame[1]), 0x80 | 126);
        EXPECT_EQ(read_every_way(frame), std::vector<Got>{message(Kind::binary, payload)}) << size;
    }
}

TEST(WebSocketReader, SixtyFourBitLengths)
{
    for (size_t size : {65536, 70001}) {
        const std::string payload = bytes_of(size, static_cast<unsigned>(size));
        const std::string frame = binary(payload);
        ASSERT_EQ(static_cast<uint8_t>(frame[1]), 0x80 | 127);
        EXPECT_EQ(read_all(frame), std::vector<Got>{message(Kind::binary, payload)}) << size;
        EXPECT_EQ(read_all(frame, 4093), std::vector<Got>{message(Kind::binary, payload)}) << size;
    }
}

TEST(WebSocketReader, NonMinimalLengthsAreAccepted)
{
    // RFC 6455 asks senders for the minimal form; refusing others would
    // protect nothing.
    EXPECT_EQ(read_every_way(client_frame(kFin | kText, "abc", LengthForm::bits16)),
              std::vector<Got>{message(Kind::text, "abc")});
    EXPECT_EQ(read_every_way(client_frame(kFin | kText, "abc", LengthForm::bits64)),
              std::vector<Got>{message(Kind::text, "abc")});
    EXPECT_EQ(read_every_way(client_frame(kFin | kBinary, bytes_of(200), LengthForm::bits64)),
              std::vector<Got>{message(Kind::binary, bytes_of(200))});
    EXPECT_EQ(read_every_way(client_frame(kFin | kPing, "", LengthForm::minimal)),
              std::vector<Got>{message(Kind::ping, "")});
}

TEST(WebSocketReader, FragmentedMessageWithPingAndPongBetween)
{
    // Fragments of odd sizes, so that each starts elsewhere in the key.
    const std::string stream = client_frame(kText, "{\"a\"") + client_frame(kFin | kPing, "are you there?") +
                               client_frame(kContinuation, ":[1,") + client_frame(kFin | kPong, "yes") +
                               client_frame(kContinuation, "") + client_frame(kFin | kContinuation, "2]}");
    const std::vector<Got> expected = {message(Kind::ping, "are you there?"),
                                       message(Kind::pong, "yes"),
                                       message(Kind::text, R"({"a":[1,2]})")};
    EXPECT_EQ(read_every_way(stream), expected);
}

TEST(WebSocketReader, FragmentedBinaryThenAnotherMessage)
{
    const std::string a = bytes_of(5000, 7);
    const std::string stream = client_frame(kBinary, a.substr(0, 1)) + client_frame(kContinuation, a.substr(1, 3000)) +
                               client_frame(kFin | kContinuation, a.substr(3001)) + text("next");
    EXPECT_EQ(read_every_way(stream), (std::vector<Got>{message(Kind::binary, a), message(Kind::text, "next")}));
}

TEST(WebSocketReader, EmptyMessagesArriveWithTheirHeader)
{
    // A zero-length frame is complete with the last byte of its header: no
    // further byte is needed to deliver it.
    WebSocketReader reader(kLimit);
    const std::string frame = text("");
    EXPECT_EQ(reader.feed(frame.data(), frame.size()), frame.size());
    WebSocketEvent event = reader.next();
    EXPECT_EQ(event.kind, Kind::text);
    EXPECT_TRUE(event.payload.empty());
    EXPECT_FALSE(reader.next());
}

// ---------------------------------------------------------------------------
// Back-pressure and what the reader holds

TEST(WebSocketReader, FeedStopsAtEachEventUntilItIsTaken)
{
    const std::string first = text("one");
    const std::string stream = first + client_frame(kFin | kPing, "p") + binary("two");
    WebSocketReader reader(kLimit);
    EXPECT_EQ(reader.feed(stream.data(), stream.size()), first.size());
    // Nothing more is taken while the message waits.
    EXPECT_EQ(reader.feed(stream.data() + first.size(), stream.size() - first.size()), 0u);
    WebSocketEvent event = reader.next();
    EXPECT_EQ(event.kind, Kind::text);
    EXPECT_EQ(event.payload, "one");
    EXPECT_FALSE(reader.next()) << "an event is handed out once";

    size_t offset = first.size();
    offset += reader.feed(stream.data() + offset, stream.size() - offset);
    event = reader.next();
    EXPECT_EQ(event.kind, Kind::ping);
    EXPECT_EQ(event.payload, "p");
    offset += reader.feed(stream.data() + offset, stream.size() - offset);
    EXPECT_EQ(offset, stream.size());
    event = reader.next();
    EXPECT_EQ(event.kind, Kind::binary);
    EXPECT_EQ(event.payload, "two");
    EXPECT_FALSE(reader.finished());
}

TEST(WebSocketReader, PingBetweenFragmentsLeavesTheMessageBuffered)
{
    WebSocketReader reader(kLimit);
    read_all(reader, client_frame(kBinary, "12345"));
    EXPECT_EQ(reader.buffered(), 5u);
    std::vector<Got> events = read_all(reader, client_frame(kFin | kPing, "x"));
    EXPECT_EQ(events, std::vector<Got>{message(Kind::ping, "x")});
    EXPECT_EQ(reader.buffered(), 5u) << "a control frame has a buffer of its own";
    events = read_all(reader, client_frame(kFin | kContinuation, "678"));
    EXPECT_EQ(events, std::vector<Got>{message(Kind::binary, "12345678")});
}

TEST(WebSocketReader, CapacityIsReusedAcrossMessages)
{
    WebSocketReader reader(kLimit);
    EXPECT_EQ(reader.capacity(), 0u);
    const std::string big = bytes_of(300000);
    EXPECT_EQ(read_all(reader, binary(big), 1000), std::vector<Got>{message(Kind::binary, big)});
    const size_t capacity = reader.capacity();
    EXPECT_GE(capacity, big.size());
    EXPECT_LE(capacity, kLimit);
    EXPECT_EQ(reader.buffered(), big.size());

    EXPECT_EQ(read_all(reader, text("small")), std::vector<Got>{message(Kind::text, "small")});
    EXPECT_EQ(reader.buffered(), 5u);
    EXPECT_EQ(reader.capacity(), capacity) << "the buffer is kept, not reallocated";

    reader.release_memory();
    EXPECT_EQ(reader.capacity(), 0u);
    EXPECT_EQ(reader.buffered(), 0u);
    EXPECT_EQ(read_all(reader, text("again")), std::vector<Got>{message(Kind::text, "again")});
}

TEST(WebSocketReader, ReleaseMemoryKeepsAMessageBeingAssembled)
{
    WebSocketReader reader(kLimit);
    read_all(reader, client_frame(kText, "half "));
    const size_t capacity = reader.capacity();
    EXPECT_GT(capacity, 0u);
    reader.release_memory();
    EXPECT_EQ(reader.capacity(), capacity);
    EXPECT_EQ(read_all(reader, client_frame(kFin | kContinuation, "whole")),
              std::vector<Got>{message(Kind::text, "half whole")});
}

TEST(WebSocketReader, BufferGrowsWithWhatArrivesNotWhatIsAnnounced)
{
    WebSocketReader reader(kLimit);
    const std::string frame = binary(bytes_of(kLimit));
    // The header (14 bytes) and 10 bytes of a frame announcing the limit.
    EXPECT_EQ(reader.feed(frame.data(), 24), 24u);
    EXPECT_FALSE(reader.next());
    EXPECT_EQ(reader.buffered(), 10u);
    EXPECT_LE(reader.capacity(), 4096u);
    // The rest in 100 KiB pieces: it grows, never past the limit.
    size_t offset = 24;
    while (offset < frame.size()) {
        offset += reader.feed(frame.data() + offset, std::min<size_t>(100 * 1024, frame.size() - offset));
        EXPECT_LE(reader.capacity(), kLimit);
        EXPECT_LE(reader.capacity(), 2 * std::max<size_t>(reader.buffered(), 4096));
    }
    EXPECT_EQ(reader.next().payload.size(), kLimit);
}

TEST(WebSocketReader, CapacityStaysWithinTheLimitOverManyFragments)
{
    const size_t limit = 10000;
    std::string stream = client_frame(kBinary, "");
    std::string expected;
    for (int i = 0; i < 99; i++) {
        const std::string piece = bytes_of(100, static_cast<unsigned>(i));
        stream += client_frame(kContinuation, piece);
        expected += piece;
    }
    stream += client_frame(kFin | kContinuation, bytes_of(100, 99));
    expected += bytes_of(100, 99);
    ASSERT_EQ(expected.size(), limit);
    WebSocketReader reader(limit);
    EXPECT_EQ(read_all(reader, stream, 37), std::vector<Got>{message(Kind::binary, expected)});
    EXPECT_LE(reader.capacity(), limit);
}

// ---------------------------------------------------------------------------
// Sizes

TEST(WebSocketReader, MessageOfExactlyTheLimitIsTakenOneMoreIs1009)
{
    EXPECT_EQ(read_all(binary(bytes_of(100)), 0, 100), std::vector<Got>{message(Kind::binary, bytes_of(100))});
    EXPECT_EQ(read_all(binary(bytes_of(101)), 0, 100), std::vector<Got>{error(1009)});
    EXPECT_EQ(read_all(text(""), 0, 0), std::vector<Got>{message(Kind::text, "")});
    EXPECT_EQ(read_all(text("a"), 0, 0), std::vector<Got>{error(1009)});
}

TEST(WebSocketReader, HugeLengthIs1009FromTheHeaderWithoutAllocating)
{
    const std::string header = header_claiming(kFin | kBinary, (uint64_t{1} << 63) - 1, LengthForm::bits64);
    WebSocketReader reader(kLimit);
    // Refused once the length is in: the masking key is not even read.
    EXPECT_EQ(reader.feed(header.data(), header.size()), 10u);
    WebSocketEvent event = reader.next();
    EXPECT_EQ(event.kind, Kind::error);
    EXPECT_EQ(event.code, 1009);
    EXPECT_EQ(reader.capacity(), 0u);
    EXPECT_EQ(reader.buffered(), 0u);
    EXPECT_TRUE(reader.finished());

    // Any form and any split, as long as it is over.
    EXPECT_EQ(read_every_way(header_claiming(kFin | kText, kLimit + 1, LengthForm::bits64)),
              std::vector<Got>{error(1009)});
    EXPECT_EQ(read_every_way(header_claiming(kText, 65535, LengthForm::bits16), 65534),
              std::vector<Got>{error(1009)});
}

TEST(WebSocketReader, MessageOverTheLimitAcrossFragmentsIs1009)
{
    const size_t limit = 100;
    const std::string start = client_frame(kText, bytes_of(60));
    // 60 + 40: exactly the limit.
    EXPECT_EQ(read_every_way(start + client_frame(kFin | kContinuation, bytes_of(40, 2)), limit),
              std::vector<Got>{message(Kind::text, bytes_of(60) + bytes_of(40, 2))});
    // 60 + 41: refused from the second header, before its payload.
    const std::string over = start + header_claiming(kFin | kContinuation, 41, LengthForm::minimal);
    EXPECT_EQ(read_every_way(over, limit), std::vector<Got>{error(1009)});
    WebSocketReader reader(limit);
    EXPECT_EQ(reader.feed(over.data(), over.size()), start.size() + 2);
    EXPECT_EQ(reader.next().code, 1009);
    EXPECT_LE(reader.capacity(), limit);
    // A huge continuation after a started message, too.
    EXPECT_EQ(read_every_way(start + header_claiming(kContinuation, (uint64_t{1} << 63) - 1, LengthForm::bits64),
                             limit),
              std::vector<Got>{error(1009)});
}

TEST(WebSocketReader, SixtyFourBitLengthWithItsTopBitSetIs1002)
{
    expect_protocol_error(header_claiming(kFin | kBinary, uint64_t{1} << 63, LengthForm::bits64));
    expect_protocol_error(header_claiming(kFin | kBinary, ~uint64_t{0}, LengthForm::bits64));
}

// ---------------------------------------------------------------------------
// Protocol errors

TEST(WebSocketReader, UnmaskedFramesAre1002)
{
    expect_protocol_error(client_frame(kFin | kText, "Hello", LengthForm::minimal, false));
    expect_protocol_error(client_frame(kFin | kBinary, bytes_of(200), LengthForm::minimal, false));
    expect_protocol_error(client_frame(kFin | kPing, "", LengthForm::minimal, false));
    expect_protocol_error(client_frame(kFin | kClose, close_payload(1000), LengthForm::minimal, false));
    // A masked message, then an unmasked one: the first still arrives.
    EXPECT_EQ(read_every_way(text("ok") + client_frame(kFin | kText, "no", LengthForm::minimal, false)),
              (std::vector<Got>{message(Kind::text, "ok"), error(1002)}));
}

TEST(WebSocketReader, RsvBitsAre1002)
{
    for (uint8_t rsv : {0x40, 0x20, 0x10, 0x70}) {
        expect_protocol_error(client_frame(static_cast<uint8_t>(kFin | rsv | kText), "x"));
        expect_protocol_error(client_frame(static_cast<uint8_t>(kFin | rsv | kPing), "x"));
        // On a continuation too (RSV1 on the first frame only would be
        // permessage-deflate, which is not negotiated).
        expect_protocol_error(client_frame(kText, "x") + client_frame(static_cast<uint8_t>(kFin | rsv), "y"));
    }
}

TEST(WebSocketReader, EachReservedOpcodeIs1002)
{
    for (uint8_t opcode : {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF}) {
        SCOPED_TRACE(opcode);
        expect_protocol_error(client_frame(static_cast<uint8_t>(kFin | opcode), "x"));
        expect_protocol_error(client_frame(static_cast<uint8_t>(kFin | opcode), ""));
        // Between fragments as well.
        expect_protocol_error(client_frame(kText, "x") + client_frame(static_cast<uint8_t>(kFin | opcode), ""));
    }
}

TEST(WebSocketReader, ControlFramesOver125BytesAre1002)
{
    for (uint8_t opcode : {kClose, kPing, kPong}) {
        SCOPED_TRACE(opcode);
        std::string payload = opcode == kClose ? close_payload(1000, std::string(123, 'r')) : bytes_of(125);
        ASSERT_EQ(payload.size(), 125u);
        // 125 bytes is the most.
        std::vector<Got> events = read_every_way(client_frame(kFin | opcode, payload));
        ASSERT_EQ(events.size(), 1u);
        EXPECT_NE(events[0].kind, Kind::error);
        payload += 'x';
        expect_protocol_error(client_frame(kFin | opcode, payload));
        // In the 16-bit form, even claiming fewer than 126 bytes.
        expect_protocol_error(client_frame(kFin | opcode, "ab", LengthForm::bits16));
        expect_protocol_error(client_frame(kFin | opcode, bytes_of(70000)));
    }
}

TEST(WebSocketReader, FragmentedControlFramesAre1002)
{
    for (uint8_t opcode : {kClose, kPing, kPong}) {
        expect_protocol_error(client_frame(opcode, ""));
        expect_protocol_error(client_frame(kBinary, "a") + client_frame(opcode, "b"));
    }
}

TEST(WebSocketReader, ContinuationWithoutAStartedMessageIs1002)
{
    expect_protocol_error(client_frame(kFin | kContinuation, "x"));
    expect_protocol_error(client_frame(kContinuation, "x"));
    // A message that ended does not take a continuation.
    EXPECT_EQ(read_every_way(text("done") + client_frame(kFin | kContinuation, "more")),
              (std::vector<Got>{message(Kind::text, "done"), error(1002)}));
}

TEST(WebSocketReader, NewMessageInsideAFragmentedOneIs1002)
{
    for (uint8_t first : {kText, kBinary}) {
        for (uint8_t second : {kText, kBinary}) {
            expect_protocol_error(client_frame(first, "a") + client_frame(kFin | second, "b"));
            expect_protocol_error(client_frame(first, "a") + client_frame(kContinuation, "b") +
                                  client_frame(second, "c"));
        }
    }
}

// ---------------------------------------------------------------------------
// Close frames

TEST(WebSocketReader, CloseWithValidCodes)
{
    for (uint16_t code : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999}) {
        EXPECT_EQ(read_every_way(client_frame(kFin | kClose, close_payload(code))), std::vector<Got>{closed(code)});
    }
    EXPECT_EQ(read_every_way(client_frame(kFin | kClose, close_payload(1000, "bye"))),
              std::vector<Got>{closed(1000, "bye")});
    const std::string reason = "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80";
    EXPECT_EQ(read_every_way(client_frame(kFin | kClose, close_payload(4321, reason))),
              std::vector<Got>{closed(4321, reason)});
}

TEST(WebSocketReader, EmptyCloseHasNoStatus)
{
    EXPECT_EQ(read_every_way(client_frame(kFin | kClose, "")), std::vector<Got>{closed(1005)});
}

TEST(WebSocketReader, CloseWithReservedOrUnknownCodesIs1002)
{
    for (uint16_t code : {0, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 2000, 2999, 5000, 65535}) {
        SCOPED_TRACE(code);
        expect_protocol_error(client_frame(kFin | kClose, close_payload(code)));
        expect_protocol_error(client_frame(kFin | kClose, close_payload(code, "reason")));
    }
}

TEST(WebSocketReader, OneByteCloseIs1002)
{
    expect_protocol_error(client_frame(kFin | kClose, std::string(1, '\x03')));
    // Not read as a code with a byte left over from an earlier control frame.
    EXPECT_EQ(read_every_way(client_frame(kFin | kPing, "\x03\xe8") + client_frame(kFin | kClose, "\x03")),
              (std::vector<Got>{message(Kind::ping, "\x03\xe8"), error(1002)}));
}

TEST(WebSocketReader, CloseReasonThatIsNotUtf8Is1007)
{
    for (std::string_view bad : {
             std::string_view("\xff"),
             std::string_view("\x80"),
             std::string_view("ok\xc3"),              // cut short
             std::string_view("\xc0\xaf"),            // overlong '/'
             std::string_view("\xe0\x80\xaf"),        // overlong, three bytes
             std::string_view("\xed\xa0\x80"),        // a surrogate, U+D800
             std::string_view("\xf4\x90\x80\x80"),    // above U+10FFFF
             std::string_view("\xf5\x80\x80\x80"),
             std::string_view("\xe2\x82"),            // cut short
             std::string_view("\xe2\x28\xa1"),        // bad continuation
         }) {
        SCOPED_TRACE(testing::PrintToString(std::string(bad)));
        expect_protocol_error(client_frame(kFin | kClose, close_payload(1000, bad)), 1007);
    }
    // The edges that are valid.
    for (std::string_view good : {std::string_view("\x7f"), std::string_view("\xc2\x80"),
                                  std::string_view("\xed\x9f\xbf"), std::string_view("\xee\x80\x80"),
                                  std::string_view("\xf0\x90\x80\x80"), std::string_view("\xf4\x8f\xbf\xbf")}) {
        EXPECT_EQ(read_all(client_frame(kFin | kClose, close_payload(1000, good))),
                  std::vector<Got>{closed(1000, std::string(good))});
    }
}

TEST(WebSocketReader, TextMessagesAreNotCheckedForUtf8)
{
    // The batch validator checks the JSON, UTF-8 included.
    EXPECT_EQ(read_all(text("\xff\xfe")), std::vector<Got>{message(Kind::text, "\xff\xfe")});
}

// ---------------------------------------------------------------------------
// The end

TEST(WebSocketReader, NothingAfterAClose)
{
    const std::string close = client_frame(kFin | kClose, close_payload(1000));
    const std::string after = text("late") + client_frame(kFin | kPing, "") + std::string("\xff\xff\xff", 3);
    EXPECT_EQ(read_every_way(close + after), std::vector<Got>{closed(1000)});
    // Inside a fragmented message too: it is never delivered.
    EXPECT_EQ(read_every_way(client_frame(kText, "half") + close + client_frame(kFin | kContinuation, "rest")),
              std::vector<Got>{closed(1000)});

    WebSocketReader reader(kLimit);
    EXPECT_EQ(reader.feed(close.data(), close.size()), close.size());
    EXPECT_TRUE(reader.finished());
    EXPECT_EQ(reader.next().kind, Kind::close);
    // Later bytes are taken and dropped, so a caller's loop ends.
    EXPECT_EQ(reader.feed(after.data(), after.size()), after.size());
    EXPECT_FALSE(reader.next());
}

TEST(WebSocketReader, NothingAfterAnError)
{
    const std::string bad = client_frame(kFin | 0x3, "");
    const std::string after = text("late") + client_frame(kFin | kClose, "");
    EXPECT_EQ(read_every_way(bad + after), std::vector<Got>{error(1002)});

    WebSocketReader reader(kLimit);
    // The error is known from the first two bytes.
    EXPECT_EQ(reader.feed(bad.data(), bad.size()), 2u);
    EXPECT_EQ(reader.feed(bad.data() + 2, bad.size() - 2), 0u) << "the error waits to be taken";
    WebSocketEvent event = reader.next();
    EXPECT_EQ(event.kind, Kind::error);
    EXPECT_EQ(event.code, 1002);
    EXPECT_STREQ(event.error, "reserved opcode");
    EXPECT_TRUE(reader.finished());
    EXPECT_EQ(reader.feed(after.data(), after.size()), after.size());
    EXPECT_FALSE(reader.next());
    EXPECT_FALSE(reader.next());
}

// ---------------------------------------------------------------------------
// Server frames

namespace {

std::string frame_of(void (*append)(std::string&, std::string_view), std::string_view payload)
{
    std::string out;
    append(out, payload);
    return out;
}

std::string close_of(uint16_t code, std::string_view reason = {})
{
    std::string out;
    append_websocket_close(out, code, reason);
    return out;
}

}  // namespace

TEST(WebSocketWriter, SmallTextFrame)
{
    // RFC 6455 §5.7: a single-frame unmasked text message containing "Hello".
    EXPECT_EQ(frame_of(append_websocket_text, "Hello"), std::string("\x81\x05Hello", 7));
    EXPECT_EQ(frame_of(append_websocket_text, ""), std::string("\x81\x00", 2));
    EXPECT_EQ(frame_of(append_websocket_text, std::string(125, 'a')), std::string("\x81\x7d", 2) + std::string(125, 'a'));
}

TEST(WebSocketWriter, SixteenBitLength)
{
    EXPECT_EQ(frame_of(append_websocket_text, std::string(126, 'a')),
              std::string("\x81\x7e\x00\x7e", 4) + std::string(126, 'a'));
    EXPECT_EQ(frame_of(append_websocket_text, std::string(256, 'b')),
              std::string("\x81\x7e\x01\x00", 4) + std::string(256, 'b'));
    EXPECT_EQ(frame_of(append_websocket_text, std::string(65535, 'c')),
              std::string("\x81\x7e\xff\xff", 4) + std::string(65535, 'c'));
}

TEST(WebSocketWriter, SixtyFourBitLength)
{
    EXPECT_EQ(frame_of(append_websocket_text, std::string(65536, 'd')),
              std::string("\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10) + std::string(65536, 'd'));
    EXPECT_EQ(frame_of(append_websocket_text, std::string(0x123456, 'e')),
              std::string("\x81\x7f\x00\x00\x00\x00\x00\x12\x34\x56", 10) + std::string(0x123456, 'e'));
}

TEST(WebSocketWriter, AppendsToWhatIsThere)
{
    std::string out = "x";
    append_websocket_text(out, "a");
    append_websocket_frame(out, WebSocketOpcode::binary, std::string_view("\0", 1));
    EXPECT_EQ(out, std::string("x\x81\x01" "a\x82\x01\x00", 7));
}

TEST(WebSocketWriter, PongEchoesThePing)
{
    EXPECT_EQ(frame_of(append_websocket_pong, "Hello"), std::string("\x8a\x05Hello", 7));
    EXPECT_EQ(frame_of(append_websocket_pong, ""), std::string("\x8a\x00", 2));
    // Never an invalid control frame.
    EXPECT_EQ(frame_of(append_websocket_pong, std::string(200, 'p')), std::string("\x8a\x7d", 2) + std::string(125, 'p'));
}

TEST(WebSocketWriter, CloseFrames)
{
    EXPECT_EQ(close_of(1000), std::string("\x88\x02\x03\xe8", 4));
    EXPECT_EQ(close_of(1009, "too big"), std::string("\x88\x09\x03\xf1too big", 11));
    EXPECT_EQ(close_of(1002, "x"), std::string("\x88\x03\x03\xea" "x", 5));
    // No code: an empty payload, the answer to a close that had none.
    EXPECT_EQ(close_of(0), std::string("\x88\x00", 2));
    EXPECT_EQ(close_of(1005, "ignored"), std::string("\x88\x00", 2));
}

TEST(WebSocketWriter, CloseReasonIsCutBetweenCharacters)
{
    const std::string ascii(200, 'r');
    EXPECT_EQ(close_of(1000, ascii), std::string("\x88\x7d\x03\xe8", 4) + std::string(123, 'r'));
    // 122 bytes, then a 2-byte character that would end at 124: cut before it.
    const std::string split = std::string(122, 'r') + "\xc3\xa9";
    EXPECT_EQ(close_of(1000, split), std::string("\x88\x7c\x03\xe8", 4) + std::string(122, 'r'));
    // Exactly 123 bytes ending in a whole character: kept.
    const std::string whole = std::string(121, 'r') + "\xc3\xa9";
    EXPECT_EQ(close_of(1000, whole), std::string("\x88\x7d\x03\xe8", 4) + whole);
}

TEST(WebSocketWriter, ServerFramesAreUnmasked)
{
    // The reader refuses them (they are not client frames): the mask bit is clear.
    for (const std::string& frame : {frame_of(append_websocket_text, "a"), frame_of(append_websocket_pong, "b"),
                                     close_of(1000, "c")}) {
        EXPECT_EQ(static_cast<uint8_t>(frame[1]) & 0x80, 0);
        EXPECT_EQ(read_all(frame), std::vector<Got>{error(1002)});
    }
}

// ---------------------------------------------------------------------------
// Handshake header values

TEST(WebSocketKey, ValidKeys)
{
    EXPECT_TRUE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));  // RFC 6455 §1.3
    EXPECT_TRUE(valid_websocket_key("AAAAAAAAAAAAAAAAAAAAAA=="));
    EXPECT_TRUE(valid_websocket_key("/+/+/+/+/+/+/+/+/+/+/w=="));
    EXPECT_TRUE(valid_websocket_key("x3JJHMbDL1EzLkh9GBhXDw=="));
    EXPECT_TRUE(valid_websocket_key("zzzzzzzzzzzzzzzzzzzzzg=="));
}

TEST(WebSocketKey, InvalidKeys)
{
    for (std::string_view key : {
             "",
             "dGhlIHNhbXBsZSBub25jZQ=",     // 23 characters
             "dGhlIHNhbXBsZSBub25jZQ===",   // 25
             "dGhlIHNhbXBsZSBub25jZQAA",    // no padding: 18 bytes
             "dGhlIHNhbXBsZSBub25jZQ=A",
             "dGhlIHNhbXBsZSBub25jZ===",    // 15 bytes and more padding
             "dGhlIHNhbXBs=SBub25jZQ==",    // padding inside
             "dGhlIHNhbXBsZSBub25jZR==",    // stray bits in the last character
             "dGhlIHNhbXBsZSBub25jZf==",
             "dGhlIHNhbXBsZSBub25-ZQ==",    // base64url's alphabet
             "dGhlIHNhbXBsZSBub25_ZQ==",
             "dGhlIHNhbXBsZSBub25 ZQ==",
             " dGhlIHNhbXBsZSBub25jZQ==",
             "dGhlIHNhbXBsZSBub25jZQ== ",
             "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==",
         }) {
        EXPECT_FALSE(valid_websocket_key(key)) << key;
    }
    EXPECT_FALSE(valid_websocket_key(std::string_view("dGhlIHNhbXBsZSBub25j\0Q==", 24)));
}

TEST(WebSocketKey, VersionIsThirteen)
{
    EXPECT_TRUE(valid_websocket_version("13"));
    for (std::string_view version : {"", "8", "12", "14", "013", "13 ", " 13", "13, 8", "1", "3"}) {
        EXPECT_FALSE(valid_websocket_version(version)) << version;
    }
}
