// Helpers shared by the unit tests: building compressed bodies with zlib and
// JSON batches with overrides.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace recording_test {

// zlib's window bits for the three wrappings.
constexpr int kGzip = 15 + 16;
constexpr int kZlib = 15;
constexpr int kRawDeflate = -15;

// Compresses `data` in one stream with the given wrapping.
inline std::string compress(std::string_view data, int window_bits, int level = Z_DEFAULT_COMPRESSION)
{
    z_stream z{};
    if (deflateInit2(&z, level, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        throw std::runtime_error("deflateInit2 failed");
    }
    std::string out;
    unsigned char chunk[64 * 1024];
    size_t offset = 0;
    int rc;
    do {
        // Feed at most 1 GiB at a time (avail_in is 32 bits).
        size_t piece = std::min<size_t>(data.size() - offset, size_t{1} << 30);
        z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data() + offset));
        z.avail_in = static_cast<uInt>(piece);
        int flush = offset + piece == data.size() ? Z_FINISH : Z_NO_FLUSH;
        do {
            z.next_out = chunk;
            z.avail_out = sizeof(chunk);
            rc = deflate(&z, flush);
            if (rc == Z_STREAM_ERROR) {
                deflateEnd(&z);
                throw std::runtime_error("deflate failed");
            }
            out.append(reinterpret_cast<char*>(chunk), sizeof(chunk) - z.avail_out);
        } while (z.avail_out == 0);
        offset += piece;
    } while (rc != Z_STREAM_END);
    deflateEnd(&z);
    return out;
}

inline std::string gzip(std::string_view data) { return compress(data, kGzip); }
inline std::string zlib_wrap(std::string_view data) { return compress(data, kZlib); }
inline std::string raw_deflate(std::string_view data) { return compress(data, kRawDeflate); }

// Text that compresses but not to nothing: a deterministic pseudo-random
// mix of a small alphabet.
inline std::string sample_text(size_t size, unsigned seed = 1)
{
    std::string out;
    out.reserve(size);
    uint32_t x = seed * 2654435761u + 1;
    static const char alphabet[] = "{}[]\":,abcdefghij0123456789 ";
    while (out.size() < size) {
        x = x * 1103515245u + 12345u;
        out += alphabet[(x >> 16) % (sizeof(alphabet) - 1)];
    }
    return out;
}

// A valid batch, as compact JSON, whose parts can be overridden. Each
// `std::string` is the raw JSON text of a member's value; an empty
// `members` entry leaves the member out.
struct Batch {
    std::string session_id = R"("abc")";
    std::string seq = "0";
    std::string events = R"([{"type":2,"timestamp":1700000000000}])";
    std::string extra;  // raw members appended after the others, with their leading comma

    bool has_session_id = true;
    bool has_seq = true;
    bool has_events = true;

    std::string json() const
    {
        std::string out = "{";
        auto member = [&](std::string_view key, const std::string& value) {
            if (out.size() > 1) {
                out += ',';
            }
            out += '"';
            out += key;
            out += "\":";
            out += value;
        };
        if (has_session_id) member("session_id", session_id);
        if (has_seq) member("seq", seq);
        if (has_events) member("events", events);
        out += extra;
        out += '}';
        return out;
    }
};

// A batch whose single event has the given raw `type` and `timestamp` values.
inline std::string event(std::string_view type, std::string_view timestamp)
{
    return std::string(R"({"type":)") + std::string(type) + R"(,"timestamp":)" + std::string(timestamp) + "}";
}

inline std::string events_array(size_t count)
{
    std::string out = "[";
    for (size_t i = 0; i < count; i++) {
        if (i != 0) {
            out += ',';
        }
        out += R"({"type":3,"timestamp":1})";
    }
    out += ']';
    return out;
}

}  // namespace recording_test
