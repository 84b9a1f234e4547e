// The server side of WebSocket framing (RFC 6455 §5), for ingesting batches
// over one connection: one message is one batch (a text message is JSON, a
// binary one gzip or zlib of it).
//
// WebSocketReader takes the client's bytes in pieces of any size and hands
// out one event at a time: a whole data message, a ping, a pong, a close, or
// the protocol error to close the connection with. It never holds more than
// the message size limit: a frame announcing more is refused from its header,
// before any of its payload is read. No extension is negotiated, so the RSV
// bits must be 0 and payloads are taken as they are.
//
// The handshake's Sec-WebSocket-Accept is the glue's (nginx has SHA-1 and
// base64); only the client's header values are checked here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace recording {

// Close status codes (RFC 6455 §7.4.1) the module sends or reads.
namespace websocket_status {
constexpr uint16_t normal = 1000;
constexpr uint16_t going_away = 1001;
constexpr uint16_t protocol_error = 1002;
constexpr uint16_t unsupported_data = 1003;
// Never on the wire: what a close frame without a code is reported as.
constexpr uint16_t no_status = 1005;
constexpr uint16_t invalid_payload = 1007;
constexpr uint16_t policy_violation = 1008;
constexpr uint16_t message_too_big = 1009;
constexpr uint16_t internal_error = 1011;
}  // namespace websocket_status

enum class WebSocketOpcode : uint8_t {
    continuation = 0x0,
    text = 0x1,
    binary = 0x2,
    close = 0x8,
    ping = 0x9,
    pong = 0xA,
};

struct WebSocketEvent {
    enum class Kind {
        none,    // nothing complete yet: feed more
        text,    // a whole message; its UTF-8 is NOT checked here (see below)
        binary,  // a whole message
        ping,    // answer with a pong of the same payload
        pong,    // unsolicited or not, nothing to do
        close,   // the client closes: answer with a close, then end
        error,   // the client broke the protocol: close with `code`, then end
    };

    Kind kind = Kind::none;
    // close: the client's status code (websocket_status::no_status when its
    // frame had none); error: the code to close the connection with (1002,
    // 1007 or 1009).
    uint16_t code = 0;
    // text, binary: the message, unmasked and reassembled from its fragments;
    // ping, pong: the payload (at most 125 bytes); close: the reason (valid
    // UTF-8). It points into the reader and stays valid until the next
    // feed() or release_memory().
    std::string_view payload;
    // error: what was wrong, for the log (static text); null otherwise.
    const char* error = nullptr;

    explicit operator bool() const noexcept { return kind != Kind::none; }
};

// Reads the frames a client sends. A text message's payload is not checked
// for UTF-8 here: the batch validator checks the JSON it must be, UTF-8
// included, and a second pass over every message would only cost time.
//
// Usage: feed() returns how many bytes it took; it stops after the bytes
// that complete an event and takes nothing more until next() has handed
// that event out, so a caller busy with a message leaves the rest of the
// input where it is (back-pressure):
//
//     while (offset < size) {
//         offset += reader.feed(data + offset, size - offset);
//         while (WebSocketEvent event = reader.next()) { ... }
//     }
//
// After a close or an error has been handed out, next() has nothing more,
// and feed() takes every byte and drops it (RFC 6455 §5.5.1: nothing after
// a close is data).
class WebSocketReader {
public:
    // Messages (the sum of their fragments' payloads) of more than
    // `max_message_size` bytes are refused with 1009.
    explicit WebSocketReader(size_t max_message_size);
    ~WebSocketReader();
    WebSocketReader(const WebSocketReader&) = delete;
    WebSocketReader& operator=(const WebSocketReader&) = delete;

    // Takes bytes of the stream, up to the end of the next event; 0 while an
    // event waits to be taken with next().
    size_t feed(const void* data, size_t size);

    // The waiting event, once; then Kind::none until feed() completes another.
    WebSocketEvent next() noexcept;

    // A close or an error was reached: no more events after it.
    bool finished() const noexcept { return stage_ == Stage::finished; }

    // Payload bytes of the current message held now: while it is assembled,
    // and once delivered until the next message starts.
    size_t buffered() const noexcept { return used_; }
    // Bytes of heap the reader holds (the message buffer, kept from one
    // message to the next): what to count for memory accounting.
    size_t capacity() const noexcept { return capacity_; }

    // Frees the message buffer, e.g. after an unusually large message, so
    // that an idle connection does not keep it. Does nothing while a
    // message is being assembled. The last message's payload is gone.
    void release_memory() noexcept;

private:
    enum class Stage { header, payload, finished };

    size_t read_header(const uint8_t* data, size_t size);
    bool check_first_bytes();
    bool check_length();
    void start_payload();
    size_t read_payload(const uint8_t* data, size_t size);
    void reserve(size_t extra);
    void end_frame();
    void end_close_frame();
    void deliver(WebSocketEvent::Kind kind, std::string_view payload, uint16_t code = 0);
    void fail(uint16_t code, const char* why);

    size_t max_message_size_;
    Stage stage_ = Stage::header;
    WebSocketEvent pending_;

    // The frame header as it comes: 2 bytes, then 0, 2 or 8 of length, then
    // the 4-byte masking key.
    uint8_t header_[14] = {};
    size_t header_used_ = 0;
    size_t header_needed_ = 2;
    size_t length_end_ = 2;  // where the length ends and the key begins

    // The frame being read.
    bool fin_ = false;
    uint8_t opcode_ = 0;
    uint8_t mask_[4] = {};
    uint64_t frame_left_ = 0;  // payload bytes still to come
    size_t mask_index_ = 0;    // where in the masking key the next byte is

    // The data message being assembled, in a buffer kept across messages.
    // Managed by hand, as BodyDecoder's: std::vector may double past the
    // limit when it grows.
    bool message_open_ = false;
    WebSocketEvent::Kind message_kind_ = WebSocketEvent::Kind::none;
    std::unique_ptr<char[]> buffer_;
    size_t capacity_ = 0;
    size_t used_ = 0;

    // A control frame's payload (ping, pong, close): at most 125 bytes, kept
    // apart since it may come between the fragments of a message.
    char control_[125] = {};
    size_t control_used_ = 0;
};

// Server frames: FIN set, never masked (RFC 6455 §5.1), appended to `out`.
// A control frame's payload must be at most 125 bytes: the pong and close
// helpers below cut theirs.
void append_websocket_frame(std::string& out, WebSocketOpcode opcode, std::string_view payload);

// A text frame, e.g. an acknowledgement.
void append_websocket_text(std::string& out, std::string_view text);

// The answer to a ping: its payload echoed (cut to 125 bytes).
void append_websocket_pong(std::string& out, std::string_view payload);

// A close frame. `code` 0 or websocket_status::no_status: an empty payload
// (the answer to a close that had no code); otherwise the code, then as much
// of `reason` as fits in 123 bytes, cut between UTF-8 characters.
void append_websocket_close(std::string& out, uint16_t code, std::string_view reason = {});

// The client's Sec-WebSocket-Key: base64 of 16 bytes, i.e. 22 characters of
// the base64 alphabet and "==" (the last character before them carrying no
// stray bits, as any base64 encoder writes it).
bool valid_websocket_key(std::string_view key) noexcept;

// The client's Sec-WebSocket-Version: "13", the only version RFC 6455 has.
bool valid_websocket_version(std::string_view version) noexcept;

}  // namespace recording
