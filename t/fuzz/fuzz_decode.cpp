// libFuzzer target: BodyDecoder on arbitrary bodies.
//
// The input is the body as it comes off the wire. It is decoded as
// `Content-Encoding: gzip` (gzip or zlib, members concatenated) and as
// identity, each time twice: in one piece, and in pieces of pseudo-random
// sizes (empty ones included) drawn from a generator seeded by the input.
//
// Properties:
//   - decoded() never holds more than limit + 1 bytes, and no single
//     allocation made while decoding is larger than the output may be;
//   - after a failing feed() every later call answers the same failure
//     and the decoded bytes stop changing;
//   - finish() gives the same status however the body was cut, the same
//     bytes when ok, and the same answer when called again;
//   - identity: ok with exactly the input when it fits, too_large otherwise;
//   - compressed, against a reference decoder written here directly on zlib
//     with one output buffer of limit + 1 bytes (the module inflates with
//     libdeflate: this is the differential check): whatever zlib decodes
//     decodes to the same bytes; a body zlib finds too large never decodes;
//     which refusal a refused body gets may differ (see check_encoding).

#include <sanitizer/allocator_interface.h>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "body_decoder.h"
#include "fuzz_common.h"

using recording::BodyDecoder;
using recording::ContentEncoding;
using recording::DecodeStatus;

namespace {

constexpr size_t kLimit = 64 * 1024;

// The gathered compressed body may take up to twice the limit, or 64 KiB
// (BodyDecoder refuses more, as no batch within the limit is that large).
size_t max_compressed_size(size_t limit)
{
    return limit * 2 > 64 * 1024 ? limit * 2 : 64 * 1024;
}

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

struct Result {
    DecodeStatus status;
    std::string bytes;  // decoded() after finish(), when status is ok
    size_t progress = 0;  // reference only: bytes decoded before it stopped
};

const char* name(DecodeStatus status)
{
    switch (status) {
    case DecodeStatus::ok: return "ok";
    case DecodeStatus::invalid: return "invalid";
    case DecodeStatus::too_large: return "too_large";
    }
    return "?";
}

void report(const char* what, DecodeStatus expected, DecodeStatus got)
{
    std::fprintf(stderr, "%s: expected %s, got %s\n", what, name(expected), name(got));
}

// What the module does: expect_input() with Content-Length when there is
// one, then feed() each buffer, then finish(). `rng` null: one piece.
Result decode(ContentEncoding encoding, size_t limit, const uint8_t* data, size_t size, fuzz::Rng* rng)
{
    BodyDecoder decoder(encoding, limit);
    if (rng == nullptr) {
        decoder.expect_input(size);
    } else {
        switch (rng->upto(3)) {
        case 0: break;  // chunked: no Content-Length
        case 1: decoder.expect_input(size); break;
        case 2: decoder.expect_input(rng->upto(64)); break;  // too small a hint
        default: decoder.expect_input(size * 1000 + rng->upto(1 << 20)); break;
        }
    }

    DecodeStatus failed = DecodeStatus::ok;
    size_t failed_size = 0;
    size_t offset = 0;
    while (offset < size) {
        size_t left = size - offset;
        size_t piece;
        if (rng == nullptr) {
            piece = left;
        } else {
            switch (rng->upto(3)) {
            case 0: piece = rng->upto(2); break;  // empty, one or two bytes
            case 1: piece = rng->upto(64); break;
            case 2: piece = rng->upto(1024); break;
            default: piece = rng->upto(left); break;
            }
            piece = piece < left ? piece : left;
        }
        DecodeStatus status = decoder.feed(data + offset, piece);
        offset += piece;

        FUZZ_CHECK(decoder.decoded().size() <= limit + 1, "decoded more than limit + 1 bytes");
        if (failed != DecodeStatus::ok) {
            if (status != failed) {
                report("feed() after a failure", failed, status);
            }
            FUZZ_CHECK(status == failed, "feed() after a failure changed its answer");
            FUZZ_CHECK(decoder.decoded().size() == failed_size, "feed() after a failure changed the output");
        } else if (status != DecodeStatus::ok) {
            failed = status;
            failed_size = decoder.decoded().size();
        }
    }

    DecodeStatus status = decoder.finish();
    if (failed != DecodeStatus::ok) {
        FUZZ_CHECK(status == failed, "finish() after a failed feed() changed the answer");
    }
    FUZZ_CHECK(decoder.finish() == status, "finish() called twice answered differently");
    FUZZ_CHECK(decoder.decoded().size() <= limit + 1, "decoded more than limit + 1 bytes");
    if (status == DecodeStatus::ok) {
        FUZZ_CHECK(decoder.decoded().size() <= limit, "finish() ok with more than limit bytes");
        return {status, std::string(decoder.decoded())};
    }
    return {status, {}};
}

// The contract on zlib directly: the first stream may have a zlib or a gzip
// header, anything after its end must be further gzip members, and the
// body must end exactly where a stream ends.
Result reference_inflate(size_t limit, const uint8_t* data, size_t size)
{
    if (size == 0) {
        return {DecodeStatus::invalid, {}};
    }
    // Too much compressed input for any batch within the limit.
    bool oversized = size > max_compressed_size(limit);
    std::string out(limit + 1, '\0');
    z_stream z{};
    FUZZ_CHECK(inflateInit2(&z, MAX_WBITS + 32) == Z_OK, "reference: inflateInit2");
    z.next_in = const_cast<Bytef*>(data);
    z.avail_in = static_cast<uInt>(size);
    z.next_out = reinterpret_cast<Bytef*>(&out[0]);
    z.avail_out = static_cast<uInt>(out.size());

    DecodeStatus status;
    for (;;) {
        int rc = inflate(&z, Z_NO_FLUSH);
        if (z.avail_out == 0) {
            status = DecodeStatus::too_large;  // limit + 1 bytes decoded
            break;
        }
        if (rc == Z_STREAM_END) {
            if (z.avail_in == 0) {
                status = DecodeStatus::ok;
                break;
            }
            FUZZ_CHECK(inflateReset2(&z, MAX_WBITS + 16) == Z_OK, "reference: inflateReset2");
            continue;
        }
        if (rc == Z_OK && z.avail_in > 0) {
            continue;
        }
        // Input used up inside a stream (truncated), or an error.
        status = DecodeStatus::invalid;
        break;
    }
    size_t used = out.size() - z.avail_out;
    inflateEnd(&z);
    // Refused while it comes: as invalid if its first bytes are no gzip or
    // zlib header, else as too large.
    if (oversized) {
        bool gzip = data[0] == 0x1f && data[1] == 0x8b;
        bool zlib = (data[0] & 0x0f) == 8 && (data[0] >> 4) <= 7 && (data[0] * 256 + data[1]) % 31 == 0;
        status = gzip || zlib ? DecodeStatus::too_large : DecodeStatus::invalid;
    }
    if (status != DecodeStatus::ok) {
        return {status, {}, used};
    }
    out.resize(used);
    return {status, out, used};
}

void check_same(const char* what, const Result& expected, const Result& got)
{
    if (got.status != expected.status) {
        report(what, expected.status, got.status);
    }
    FUZZ_CHECK(got.status == expected.status, what);
    if (got.bytes != expected.bytes) {
        std::fprintf(stderr, "%s: %zu bytes expected, %zu decoded\n", what, expected.bytes.size(), got.bytes.size());
    }
    FUZZ_CHECK(got.bytes == expected.bytes, what);
}

void check_encoding(ContentEncoding encoding, size_t limit, const uint8_t* data, size_t size)
{
    g_largest = 0;
    g_tracking = true;
    Result whole = decode(encoding, limit, data, size, nullptr);
    fuzz::Rng rng(data, size);
    Result pieces = decode(encoding, limit, data, size, &rng);
    g_tracking = false;

    size_t allowed = limit + 1 > max_compressed_size(limit) ? limit + 1 : max_compressed_size(limit);
    if (g_largest > allowed) {
        std::fprintf(stderr, "allocation of %zu bytes, limit %zu\n", g_largest, limit);
    }
    FUZZ_CHECK(g_largest <= allowed, "an allocation larger than the output may be");

    check_same("one piece and many pieces disagree", whole, pieces);

    if (encoding == ContentEncoding::identity) {
        if (size <= limit) {
            Result expected{DecodeStatus::ok, std::string(reinterpret_cast<const char*>(data), size)};
            check_same("identity: not the input", expected, whole);
        } else {
            check_same("identity: over the limit", Result{DecodeStatus::too_large, {}}, whole);
        }
    } else {
        Result expected = reference_inflate(limit, data, size);
        // Which refusal a body gets may differ from zlib's: libdeflate, not
        // streaming, may find a truncated or corrupt body invalid before
        // its output passes the limit (zlib: too large), or check the room
        // for a symbol's output before the symbol (zlib: invalid). And it
        // is more lenient on degenerate Huffman code sets, so a body zlib
        // refuses as invalid may decode. What may not differ: a body zlib
        // decodes decodes to the same bytes.
        if (expected.status != DecodeStatus::ok) {
            FUZZ_CHECK(whole.status != DecodeStatus::ok || expected.status == DecodeStatus::invalid,
                       "compressed: decoded what zlib finds too large");
            return;
        }
        check_same("compressed: differs from zlib", expected, whole);
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
    // Mostly the 64 KiB limit; now and then a tiny one, to test its edges.
    // (A generator of its own, so that the pieces do not depend on this.)
    size_t limit = kLimit;
    fuzz::Rng pick(data, size, 1);
    if (pick.next() % 8 == 0) {
        limit = 1 + pick.upto(511);
    }
    check_encoding(ContentEncoding::compressed, limit, data, size);
    check_encoding(ContentEncoding::identity, limit, data, size);
    return 0;
}
