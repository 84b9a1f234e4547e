#include "websocket.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace recording {

namespace {

using Kind = WebSocketEvent::Kind;

// The smallest message buffer: below this, growing by doubling would
// reallocate for nothing on small messages.
constexpr size_t kMinCapacity = 4096;

constexpr size_t kMaxControlPayload = 125;

bool is_control(uint8_t opcode) noexcept { return (opcode & 0x08) != 0; }

// RFC 6455 §7.4: the codes a peer may send. 1004-1006 and 1015 are never
// sent, the rest below 3000 is kept for the protocol itself (IANA's
// registrations there are not taken, as no extension is negotiated), and
// 5000 and above do not exist.
bool valid_close_code(uint16_t code) noexcept
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
}

// Well-formed UTF-8 (Unicode's Table 3-7): the lead byte fixes the length
// and the range of the second byte, which rules out overlong forms,
// surrogates and anything above U+10FFFF.
bool is_utf8(std::string_view s) noexcept
{
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t length;
        unsigned char low = 0x80;
        unsigned char high = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            length = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            length = 3;
            low = c == 0xE0 ? 0xA0 : low;
            high = c == 0xED ? 0x9F : high;
        } else if (c >= 0xF0 && c <= 0xF4) {
            length = 4;
            low = c == 0xF0 ? 0x90 : low;
            high = c == 0xF4 ? 0x8F : high;
        } else {
            return false;
        }
        if (n - i < length) {
            return false;
        }
        const unsigned char second = static_cast<unsigned char>(s[i + 1]);
        if (second < low || second > high) {
            return false;
        }
        for (size_t k = 2; k < length; k++) {
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) {
                return false;
            }
        }
        i += length;
    }
    return true;
}

// XORs `size` bytes with the masking key, starting `index` bytes into it.
// Eight bytes at a time: a message may be megabytes, and a byte loop with
// a rotating index does not vectorise.
void unmask(char* out, const uint8_t* in, size_t size, const uint8_t key[4], size_t index) noexcept
{
    uint8_t rotated[8];
    for (size_t k = 0; k < 8; k++) {
        rotated[k] = key[(index + k) & 3];
    }
    uint64_t word_key;
    std::memcpy(&word_key, rotated, sizeof(word_key));
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        std::memcpy(&word, in + i, sizeof(word));
        word ^= word_key;
        std::memcpy(out + i, &word, sizeof(word));
    }
    for (; i < size; i++) {
        out[i] = static_cast<char>(in[i] ^ rotated[i & 7]);
    }
}

void append_frame_header(std::string& out, WebSocketOpcode opcode, size_t size)
{
    out += static_cast<char>(0x80 | static_cast<uint8_t>(opcode));  // FIN, no RSV bits
    if (size <= 125) {
        out += static_cast<char>(size);
    } else if (size <= 0xFFFF) {
        out += static_cast<char>(126);
        out += static_cast<char>(size >> 8);
        out += static_cast<char>(size & 0xFF);
    } else {
        out += static_cast<char>(127);
        const uint64_t length = size;
        for (int shift = 56; shift >= 0; shift -= 8) {
            out += static_cast<char>((length >> shift) & 0xFF);
        }
    }
}

int base64_value(char c) noexcept
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

}  // namespace

WebSocketReader::WebSocketReader(size_t max_message_size) : max_message_size_(max_message_size) {}

WebSocketReader::~WebSocketReader() = default;

size_t WebSocketReader::feed(const void* data, size_t size)
{
    if (pending_) {
        return 0;  // back-pressure: the caller takes the event first
    }
    if (stage_ == Stage::finished) {
        return size;  // after a close or an error, bytes are dropped
    }
    const auto* in = static_cast<const uint8_t*>(data);
    size_t taken = 0;
    while (taken < size && !pending_) {
        if (stage_ == Stage::header) {
            taken += read_header(in + taken, size - taken);
        } else {
            taken += read_payload(in + taken, size - taken);
        }
    }
    return taken;
}

WebSocketEvent WebSocketReader::next() noexcept { return std::exchange(pending_, WebSocketEvent{}); }

void WebSocketReader::release_memory() noexcept
{
    if (message_open_) {
        return;  // its bytes are still needed
    }
    buffer_.reset();
    capacity_ = 0;
    used_ = 0;
}

// Gathers the header a byte at a time (it is 6 to 14 bytes). Its first two
// bytes are judged as soon as they are there, and the length as soon as it
// is, so a bad frame is refused before the rest of its header.
size_t WebSocketReader::read_header(const uint8_t* data, size_t size)
{
    size_t taken = 0;
    while (taken < size && header_used_ < header_needed_) {
        header_[header_used_++] = data[taken++];
        if (header_used_ == 2 && !check_first_bytes()) {
            return taken;
        }
        if (header_used_ == length_end_ && !check_length()) {
            return taken;
        }
    }
    if (header_used_ == header_needed_) {
        start_payload();
    }
    return taken;
}

// FIN, RSV1-3, the opcode, MASK and the 7-bit length: what can be refused
// from them is, and the header's full size follows from them.
bool WebSocketReader::check_first_bytes()
{
    const uint8_t first = header_[0];
    const uint8_t second = header_[1];
    fin_ = (first & 0x80) != 0;
    opcode_ = first & 0x0F;
    const uint8_t length7 = second & 0x7F;

    if ((first & 0x70) != 0) {
        fail(websocket_status::protocol_error, "RSV bits set, but no extension was negotiated");
        return false;
    }
    switch (static_cast<WebSocketOpcode>(opcode_)) {
    case WebSocketOpcode::continuation:
        if (!message_open_) {
            fail(websocket_status::protocol_error, "continuation frame without a message to continue");
            return false;
        }
        break;
    case WebSocketOpcode::text:
    case WebSocketOpcode::binary:
        if (message_open_) {
            fail(websocket_status::protocol_error, "new message while a fragmented one is unfinished");
            return false;
        }
        break;
    case WebSocketOpcode::close:
    case WebSocketOpcode::ping:
    case WebSocketOpcode::pong:
        if (!fin_) {
            fail(websocket_status::protocol_error, "fragmented control frame");
            return false;
        }
        if (length7 > kMaxControlPayload) {
            fail(websocket_status::protocol_error, "control frame payload over 125 bytes");
            return false;
        }
        break;
    default:
        fail(websocket_status::protocol_error, "reserved opcode");
        return false;
    }
    // RFC 6455 §5.1: a server must close the connection on an unmasked frame.
    if ((second & 0x80) == 0) {
        fail(websocket_status::protocol_error, "unmasked client frame");
        return false;
    }
    const size_t extended = length7 == 126 ? 2 : length7 == 127 ? 8 : 0;
    length_end_ = 2 + extended;
    header_needed_ = length_end_ + 4;
    return true;
}

// The payload length is there: it is checked against the limit before
// anything more is read, so a claim of 2^63 bytes costs nothing.
bool WebSocketReader::check_length()
{
    uint64_t length = header_[1] & 0x7F;
    // Non-minimal lengths (a 16-bit length under 126, ...) are taken: they
    // waste the sender's bytes, not ours.
    if (length == 126) {
        length = (uint64_t{header_[2]} << 8) | header_[3];
    } else if (length == 127) {
        length = 0;
        for (size_t k = 2; k < 10; k++) {
            length = (length << 8) | header_[k];
        }
        if ((length >> 63) != 0) {
            fail(websocket_status::protocol_error, "64-bit payload length with its most significant bit set");
            return false;
        }
    }
    if (!is_control(opcode_)) {
        const size_t before = opcode_ == static_cast<uint8_t>(WebSocketOpcode::continuation) ? used_ : 0;
        if (length > max_message_size_ - before) {
            fail(websocket_status::message_too_big, "message over the size limit");
            return false;
        }
    }
    frame_left_ = length;
    return true;
}

// The header is whole: the frame's payload begins.
void WebSocketReader::start_payload()
{
    std::memcpy(mask_, header_ + length_end_, sizeof(mask_));
    header_used_ = 0;
    header_needed_ = 2;
    mask_index_ = 0;
    control_used_ = 0;

    if (!is_control(opcode_)) {
        if (opcode_ != static_cast<uint8_t>(WebSocketOpcode::continuation)) {
            // A new message: the previous one's bytes (and view) end here.
            message_open_ = true;
            message_kind_ = opcode_ == static_cast<uint8_t>(WebSocketOpcode::text) ? Kind::text : Kind::binary;
            used_ = 0;
        }
    }
    stage_ = Stage::payload;
    if (frame_left_ == 0) {
        end_frame();
    }
}

size_t WebSocketReader::read_payload(const uint8_t* data, size_t size)
{
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, frame_left_));
    char* out;
    if (is_control(opcode_)) {
        out = control_ + control_used_;  // frame_left_ <= 125 - control_used_
        control_used_ += n;
    } else {
        reserve(n);
        out = buffer_.get() + used_;
        used_ += n;
    }
    unmask(out, data, n, mask_, mask_index_);
    mask_index_ = (mask_index_ + n) & 3;
    frame_left_ -= n;
    if (frame_left_ == 0) {
        end_frame();
    }
    return n;
}

// Room for `extra` more bytes of the message. The buffer grows with what
// arrives, not with what a header announces, and geometrically (a message
// may come in many small pieces); it never grows past what the message can
// still become: the limit, or for a final frame exactly its end.
void WebSocketReader::reserve(size_t extra)
{
    const size_t needed = used_ + extra;
    if (needed <= capacity_) {
        return;
    }
    const size_t most = fin_ ? used_ + static_cast<size_t>(frame_left_) : max_message_size_;
    const size_t grown = std::min(most, std::max({needed, capacity_ * 2, kMinCapacity}));
    std::unique_ptr<char[]> bigger(new char[grown]);  // not zeroed: written before read
    if (used_ != 0) {
        std::memcpy(bigger.get(), buffer_.get(), used_);
    }
    buffer_ = std::move(bigger);
    capacity_ = grown;
}

void WebSocketReader::end_frame()
{
    stage_ = Stage::header;
    switch (static_cast<WebSocketOpcode>(opcode_)) {
    case WebSocketOpcode::ping:
        deliver(Kind::ping, {control_, control_used_});
        break;
    case WebSocketOpcode::pong:
        deliver(Kind::pong, {control_, control_used_});
        break;
    case WebSocketOpcode::close:
        end_close_frame();
        break;
    default:  // text, binary, continuation
        if (fin_) {
            message_open_ = false;
            deliver(message_kind_, {buffer_.get(), used_});
        }
        break;
    }
}

// A close frame's payload is empty, or a status code and a UTF-8 reason
// (RFC 6455 §5.5.1, §7.1.6): the one case where this reader checks UTF-8,
// since nothing later reads the reason.
void WebSocketReader::end_close_frame()
{
    if (control_used_ == 0) {
        deliver(Kind::close, {}, websocket_status::no_status);
    } else if (control_used_ == 1) {
        fail(websocket_status::protocol_error, "close frame with a 1-byte payload");
        return;
    } else {
        const uint16_t code = static_cast<uint16_t>((static_cast<unsigned char>(control_[0]) << 8) |
                                                    static_cast<unsigned char>(control_[1]));
        const std::string_view reason(control_ + 2, control_used_ - 2);
        if (!valid_close_code(code)) {
            fail(websocket_status::protocol_error, "close frame with an invalid status code");
            return;
        }
        if (!is_utf8(reason)) {
            fail(websocket_status::invalid_payload, "close reason is not UTF-8");
            return;
        }
        deliver(Kind::close, reason, code);
    }
    stage_ = Stage::finished;
}

void WebSocketReader::deliver(Kind kind, std::string_view payload, uint16_t code)
{
    pending_ = WebSocketEvent{kind, code, payload, nullptr};
}

void WebSocketReader::fail(uint16_t code, const char* why)
{
    pending_ = WebSocketEvent{Kind::error, code, {}, why};
    stage_ = Stage::finished;
}

void append_websocket_frame(std::string& out, WebSocketOpcode opcode, std::string_view payload)
{
    append_frame_header(out, opcode, payload.size());
    out.append(payload);
}

void append_websocket_text(std::string& out, std::string_view text)
{
    append_websocket_frame(out, WebSocketOpcode::text, text);
}

void append_websocket_pong(std::string& out, std::string_view payload)
{
    append_websocket_frame(out, WebSocketOpcode::pong, payload.substr(0, kMaxControlPayload));
}

void append_websocket_close(std::string& out, uint16_t code, std::string_view reason)
{
    if (code == 0 || code == websocket_status::no_status) {
        append_websocket_frame(out, WebSocketOpcode::close, {});
        return;
    }
    // Cut at 123 bytes, then back to the start of a character cut in two.
    size_t cut = std::min(reason.size(), kMaxControlPayload - 2);
    while (cut > 0 && cut < reason.size() && (static_cast<unsigned char>(reason[cut]) & 0xC0) == 0x80) {
        cut--;
    }
    append_frame_header(out, WebSocketOpcode::close, 2 + cut);
    out += static_cast<char>(code >> 8);
    out += static_cast<char>(code & 0xFF);
    out.append(reason.substr(0, cut));
}

bool valid_websocket_key(std::string_view key) noexcept
{
    if (key.size() != 24 || key[22] != '=' || key[23] != '=') {
        return false;
    }
    for (size_t i = 0; i < 22; i++) {
        if (base64_value(key[i]) < 0) {
            return false;
        }
    }
    // 22 characters carry 132 bits: 16 bytes are 128 of them, so the low
    // 4 bits of the last character are 0.
    return (base64_value(key[21]) & 0x0F) == 0;
}

bool valid_websocket_version(std::string_view version) noexcept { return version == "13"; }

}  // namespace recording
