// libFuzzer target: WebSocketReader on arbitrary client byte streams.
//
// The input is what a client sends after the handshake. It is read twice:
// in one piece, and in pieces of pseudo-random sizes (empty ones included)
// drawn from a generator seeded by the input, feeding each piece until it
// is taken, as the glue does.
//
// Properties:
//   - feed() never takes more than it is given, and never takes nothing
//     without an event to hand out (a caller's loop would spin);
//   - no message is over the limit, no ping or pong over 125 bytes; a close
//     has a code a client may send (or none) and a UTF-8 reason; an error
//     says why and closes with 1002, 1007 or 1009;
//   - after a close or an error, no event ever again and every byte is
//     dropped;
//   - the buffer never passes the limit, and no allocation made while
//     feeding is larger than the limit (a 2^63-byte claim allocates nothing);
//   - one piece and many pieces give the same events;
//   - the events re-encoded here as masked frames (messages cut into random
//     fragments, control frames between them, random keys and length forms)
//     read back, in random pieces, as the same events;
//   - the module's own server frames (text, binary, pong, close), given a
//     mask bit and a zero key, read back as what they were made from.

#include <sanitizer/allocator_interface.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.h"
#include "websocket.h"

using recording::WebSocketEvent;
using recording::WebSocketOpcode;
using recording::WebSocketReader;
using Kind = WebSocketEvent::Kind;

namespace {

constexpr size_t kLimit = 64 * 1024;

// The largest single heap allocation while `g_tracking` is set.
bool g_tracking = false;
size_t g_largest = 0;

void malloc_hook(const volatile void*, size_t size)
{
    if (g_tracking && size > g_largest) {
        g_largest = size;
    }
}

void free_hook(const volatile void*) {}

struct Event {
    Kind kind;
    uint16_t code;
    std::string payload;
    std::string why;  // an error's

    bool operator==(const Event& other) const
    {
        return kind == other.kind && code == other.code && payload == other.payload && why == other.why;
    }
    bool operator!=(const Event& other) const { return !(*this == other); }
};

bool ends(Kind kind) { return kind == Kind::close || kind == Kind::error; }

// RFC 6455 §7.4, written out again here to check the reader's own table.
bool sendable_close_code(uint16_t code)
{
    if (code >= 3000 && code <= 4999) {
        return true;
    }
    switch (code) {
    case 1000: case 1001: case 1002: case 1003:
    case 1007: case 1008: case 1009: case 1010: case 1011:
        return true;
    default:
        return false;
    }
}

void check_event(const WebSocketEvent& event, size_t limit)
{
    switch (event.kind) {
    case Kind::text:
    case Kind::binary:
        FUZZ_CHECK(event.payload.size() <= limit, "a message over the limit");
        break;
    case Kind::ping:
    case Kind::pong:
        FUZZ_CHECK(event.payload.size() <= 125, "a control payload over 125 bytes");
        break;
    case Kind::close:
        if (event.code == recording::websocket_status::no_status) {
            FUZZ_CHECK(event.payload.empty(), "a reason without a close code");
        } else {
            FUZZ_CHECK(sendable_close_code(event.code), "a close with a code no client may send");
        }
        FUZZ_CHECK(event.payload.size() <= 123, "a close reason over 123 bytes");
        FUZZ_CHECK(fuzz::is_valid_utf8(event.payload), "a close reason that is not UTF-8");
        break;
    case Kind::error:
        FUZZ_CHECK(event.code == 1002 || event.code == 1007 || event.code == 1009, "an error with another code");
        FUZZ_CHECK(event.error != nullptr, "an error that does not say why");
        FUZZ_CHECK(event.payload.empty(), "an error with a payload");
        break;
    case Kind::none:
        FUZZ_CHECK(false, "next() returned Kind::none as an event");
    }
}

size_t piece_size(fuzz::Rng* rng, size_t left)
{
    if (rng == nullptr) {
        return left;
    }
    size_t piece;
    switch (rng->upto(3)) {
    case 0: piece = rng->upto(2); break;  // empty, one or two bytes
    case 1: piece = rng->upto(16); break;
    case 2: piece = rng->upto(512); break;
    default: piece = rng->upto(left); break;
    }
    return piece < left ? piece : left;
}

// Reads a stream as the glue does and checks every step. `rng` null: in
// one piece. `track`: the reader's allocations are measured.
std::vector<Event> read(size_t limit, std::string_view input, fuzz::Rng* rng, bool track)
{
    WebSocketReader reader(limit);
    std::vector<Event> events;
    bool ended = false;
    size_t offset = 0;
    while (offset < input.size()) {
        const size_t end = offset + piece_size(rng, input.size() - offset);
        do {
            const size_t given = end - offset;
            g_tracking = track;
            const size_t taken = reader.feed(input.data() + offset, given);
            g_tracking = false;
            FUZZ_CHECK(taken <= given, "feed() took more than it was given");
            FUZZ_CHECK(!ended || taken == given, "feed() after the end kept bytes");
            offset += taken;

            bool any = false;
            while (WebSocketEvent event = reader.next()) {
                FUZZ_CHECK(!ended, "an event after a close or an error");
                check_event(event, limit);
                events.push_back({event.kind, event.code, std::string(event.payload), event.error ? event.error : ""});
                ended = ends(event.kind);
                FUZZ_CHECK(reader.finished() == ended, "finished() disagrees with the events");
                any = true;
            }
            FUZZ_CHECK(taken > 0 || any || given == 0, "feed() took nothing and had no event");
            FUZZ_CHECK(reader.capacity() <= limit, "the message buffer passed the limit");
            FUZZ_CHECK(reader.buffered() <= reader.capacity(), "more buffered than the buffer holds");
        } while (offset < end);
    }
    return events;
}

// A masked client frame with a random key and, where the frame allows it,
// a random (non-minimal) length form.
void append_masked(std::string& out, uint8_t first, std::string_view payload, fuzz::Rng& rng)
{
    const uint64_t size = payload.size();
    out += static_cast<char>(first);
    size_t form = size <= 125 ? 0 : size <= 0xFFFF ? 1 : 2;
    if ((first & 0x08) == 0) {
        form += rng.upto(2 - form);  // data frames: any longer form too
    }
    if (form == 0) {
        out += static_cast<char>(0x80 | size);
    } else if (form == 1) {
        out += static_cast<char>(0x80 | 126);
        out += static_cast<char>(size >> 8);
        out += static_cast<char>(size & 0xFF);
    } else {
        out += static_cast<char>(0x80 | 127);
        for (int shift = 56; shift >= 0; shift -= 8) {
            out += static_cast<char>((size >> shift) & 0xFF);
        }
    }
    uint8_t key[4];
    for (uint8_t& k : key) {
        k = static_cast<uint8_t>(rng.next());
    }
    out.append(reinterpret_cast<const char*>(key), 4);
    for (size_t i = 0; i < payload.size(); i++) {
        out += static_cast<char>(payload[i] ^ key[i % 4]);
    }
}

std::string close_payload(const Event& close)
{
    if (close.code == recording::websocket_status::no_status) {
        return {};
    }
    std::string out;
    out += static_cast<char>(close.code >> 8);
    out += static_cast<char>(close.code & 0xFF);
    return out + close.payload;
}

// The events (up to an error, which has no frame) as a client would send
// them, messages cut into fragments with pings and pongs between; the
// events that stream must give are appended to `expected`.
std::string reencode(const std::vector<Event>& events, fuzz::Rng& rng, std::vector<Event>& expected)
{
    std::string out;
    for (const Event& event : events) {
        switch (event.kind) {
        case Kind::text:
        case Kind::binary: {
            const std::string_view payload = event.payload;
            uint8_t opcode = event.kind == Kind::text ? 0x1 : 0x2;
            size_t at = 0;
            for (;;) {
                const size_t left = payload.size() - at;
                const size_t n = rng.upto(3) == 0 ? left : rng.upto(left);
                const bool fin = n == left;
                append_masked(out, static_cast<uint8_t>((fin ? 0x80 : 0) | opcode), payload.substr(at, n), rng);
                at += n;
                opcode = 0x0;
                if (fin) {
                    break;
                }
                if (rng.upto(3) == 0) {
                    const std::string between(rng.upto(125), 'c');
                    const bool ping = rng.upto(1) == 0;
                    append_masked(out, ping ? 0x89 : 0x8A, between, rng);
                    expected.push_back({ping ? Kind::ping : Kind::pong, 0, between, ""});
                }
            }
            break;
        }
        case Kind::ping: append_masked(out, 0x89, event.payload, rng); break;
        case Kind::pong: append_masked(out, 0x8A, event.payload, rng); break;
        case Kind::close: append_masked(out, 0x88, close_payload(event), rng); break;
        case Kind::error:
        case Kind::none: return out;
        }
        expected.push_back(event);
    }
    return out;
}

void check_reencoded(size_t limit, const std::vector<Event>& events, const uint8_t* data, size_t size)
{
    fuzz::Rng rng(data, size, 2);
    std::vector<Event> expected;
    const std::string stream = reencode(events, rng, expected);
    FUZZ_CHECK(read(limit, stream, &rng, false) == expected, "re-encoded events read back differently");
}

// A server frame as a client frame: the mask bit set and a zero key put in,
// so that the payload stays as it is.
std::string masked_with_zero_key(const std::string& frame)
{
    const uint8_t length7 = static_cast<uint8_t>(frame[1]) & 0x7F;
    const size_t header = 2 + (length7 == 126 ? 2 : length7 == 127 ? 8 : 0);
    std::string out = frame.substr(0, header);
    out[1] = static_cast<char>(out[1] | 0x80);
    out.append(4, '\0');
    return out.append(frame, header, std::string::npos);
}

void check_server_frame(size_t limit, const std::string& frame, const Event& expected)
{
    FUZZ_CHECK((static_cast<uint8_t>(frame[1]) & 0x80) == 0, "a server frame is masked");
    const std::vector<Event> got = read(limit, masked_with_zero_key(frame), nullptr, false);
    FUZZ_CHECK(got.size() == 1 && got[0] == expected, "a server frame reads back differently");
}

// What the glue answers with: the messages echoed as text or binary, each
// ping's pong, the close (or the error's close) echoed.
void check_writers(size_t limit, const std::vector<Event>& events)
{
    for (const Event& event : events) {
        std::string frame;
        switch (event.kind) {
        case Kind::text:
            recording::append_websocket_text(frame, event.payload);
            check_server_frame(limit, frame, event);
            break;
        case Kind::binary:
            recording::append_websocket_frame(frame, WebSocketOpcode::binary, event.payload);
            check_server_frame(limit, frame, event);
            break;
        case Kind::ping:
            recording::append_websocket_pong(frame, event.payload);
            check_server_frame(limit, frame, Event{Kind::pong, 0, event.payload, ""});
            break;
        case Kind::pong:
            break;
        case Kind::close:
            recording::append_websocket_close(frame, event.code, event.payload);
            check_server_frame(limit, frame, event);
            break;
        case Kind::error:
            recording::append_websocket_close(frame, event.code, event.why);
            check_server_frame(limit, frame, Event{Kind::close, event.code, event.why, ""});
            break;
        case Kind::none:
            break;
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    __sanitizer_install_malloc_and_free_hooks(malloc_hook, free_hook);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    // Mostly a 64 KiB limit; now and then a tiny one (0 included), to test
    // its edges. (A generator of its own, so that the pieces do not depend
    // on this.)
    size_t limit = kLimit;
    fuzz::Rng pick(data, size, 1);
    if (pick.next() % 8 == 0) {
        limit = pick.upto(300);
    }
    const std::string_view input(reinterpret_cast<const char*>(data), size);

    g_largest = 0;
    const std::vector<Event> whole = read(limit, input, nullptr, true);
    fuzz::Rng rng(data, size);
    const std::vector<Event> pieces = read(limit, input, &rng, true);
    FUZZ_CHECK(g_largest <= limit, "an allocation larger than the limit while feeding");
    FUZZ_CHECK(whole == pieces, "one piece and many pieces disagree");

    check_reencoded(limit, whole, data, size);
    check_writers(limit, whole);
    return 0;
}
