#include <gtest/gtest.h>

#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "body_decoder.h"
#include "test_util.h"

using recording::BodyDecoder;
using recording::classify_content_encoding;
using recording::ContentEncoding;
using recording::DecodeStatus;
using namespace recording_test;

// The size of the largest single allocation through operator new while a
// LargestAllocation is alive: what the decoder's output buffer really takes.
namespace {
std::atomic<bool> g_tracking{false};
std::atomic<size_t> g_largest{0};
}  // namespace

// Not inlined, so that the compiler does not pair a `new` at a call site
// with the free() below (-Wmismatched-new-delete).
__attribute__((noinline)) void* operator new(std::size_t size)
{
    if (g_tracking.load(std::memory_order_relaxed)) {
        size_t seen = g_largest.load(std::memory_order_relaxed);
        while (size > seen && !g_largest.compare_exchange_weak(seen, size)) {
        }
    }
    if (void* p = std::malloc(size != 0 ? size : 1)) {
        return p;
    }
    throw std::bad_alloc();
}

__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }
// The nothrow forms too: a library (simdjson) allocating with them frees
// through the delete above, and under ASan the pair must match.
__attribute__((noinline)) void* operator new(std::size_t size, const std::nothrow_t&) noexcept
{
    try {
        return ::operator new(size);
    } catch (...) {
        return nullptr;
    }
}
__attribute__((noinline)) void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

class LargestAllocation {
public:
    LargestAllocation()
    {
        g_largest = 0;
        g_tracking = true;
    }
    ~LargestAllocation() { g_tracking = false; }
    size_t bytes() const { return g_largest.load(); }
};

constexpr size_t kTwoMiB = 2 * 1024 * 1024;

struct Decoded {
    DecodeStatus status;      // of finish(), or of the first failing feed()
    std::string text;         // decoded() after finish()
};

// Feeds `input` in pieces of `piece` bytes (0: all at once), then finishes.
Decoded decode(ContentEncoding encoding, std::string_view input, size_t limit = kTwoMiB, size_t piece = 0,
               bool announce = false)
{
    BodyDecoder decoder(encoding, limit);
    if (announce) {
        decoder.expect_input(input.size());
    }
    if (piece == 0) {
        piece = input.size();
    }
    for (size_t offset = 0; offset < input.size(); offset += piece) {
        size_t n = std::min(piece, input.size() - offset);
        DecodeStatus status = decoder.feed(input.data() + offset, n);
        if (status != DecodeStatus::ok) {
            EXPECT_EQ(decoder.finish(), status) << "a failure must stick";
            EXPECT_LE(decoder.decoded().size(), limit + 1);
            return {status, std::string(decoder.decoded())};
        }
    }
    DecodeStatus status = decoder.finish();
    std::string_view view = decoder.decoded();
    EXPECT_LE(view.size(), limit + 1);
    return {status, std::string(view)};
}

Decoded decode_compressed(std::string_view input, size_t limit = kTwoMiB, size_t piece = 0)
{
    return decode(ContentEncoding::compressed, input, limit, piece);
}

std::string flip_byte(std::string s, size_t index_from_end)
{
    s[s.size() - 1 - index_from_end] ^= 0x01;
    return s;
}

std::string zlib_with_dictionary(std::string_view data, std::string_view dictionary)
{
    z_stream z{};
    deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kZlib, 8, Z_DEFAULT_STRATEGY);
    deflateSetDictionary(&z, reinterpret_cast<const Bytef*>(dictionary.data()), static_cast<uInt>(dictionary.size()));
    std::string out(deflateBound(&z, data.size()) + 16, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(&out[0]);
    z.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    out.resize(out.size() - z.avail_out);
    deflateEnd(&z);
    return out;
}

const std::string kJson = R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}]})";

}  // namespace

// ---------------------------------------------------------------------------
// classify_content_encoding

TEST(ClassifyContentEncoding, AbsentEmptyAndIdentityAreIdentity)
{
    // An absent header reaches the decoder as an empty value.
    EXPECT_EQ(classify_content_encoding({}), ContentEncoding::identity);
    EXPECT_EQ(classify_content_encoding(""), ContentEncoding::identity);
    for (std::string_view value : {"identity", "IDENTITY", "Identity", "iDeNtItY"}) {
        EXPECT_EQ(classify_content_encoding(value), ContentEncoding::identity) << value;
    }
}

TEST(ClassifyContentEncoding, GzipAndDeflateInAnyCaseAreCompressed)
{
    for (std::string_view value : {"gzip", "GZIP", "Gzip", "gZiP", "deflate", "DEFLATE", "Deflate", "dEfLaTe"}) {
        EXPECT_EQ(classify_content_encoding(value), ContentEncoding::compressed) << value;
    }
}

TEST(ClassifyContentEncoding, ListsAndOtherCodingsAreUnsupported)
{
    for (std::string_view value : {"gzip, br", "gzip,deflate", "deflate, gzip", "identity, gzip", "gzip, identity",
                                   "br", "x-gzip", "x-deflate", "compress", "zstd", "chunked", "*", "gzi", "gzipp",
                                   "deflat", "identit", "identityy", "gzip;q=1"}) {
        EXPECT_EQ(classify_content_encoding(value), ContentEncoding::unsupported) << value;
    }
}

TEST(ClassifyContentEncoding, SurroundingWhitespaceIsNotStripped)
{
    // nginx strips a header value's surrounding whitespace before we see it;
    // the function compares the value as given, so padding is unsupported.
    for (std::string_view value : {" gzip", "gzip ", "\tgzip", "gzip\t", " identity", "identity ", " ", "\t"}) {
        EXPECT_EQ(classify_content_encoding(value), ContentEncoding::unsupported) << '"' << value << '"';
    }
}

TEST(ClassifyContentEncoding, EmbeddedNulAndNonAsciiAreUnsupported)
{
    EXPECT_EQ(classify_content_encoding(std::string_view("gzip\0", 5)), ContentEncoding::unsupported);
    EXPECT_EQ(classify_content_encoding(std::string_view("\0", 1)), ContentEncoding::unsupported);
    EXPECT_EQ(classify_content_encoding("gz\xC4\xB0p"), ContentEncoding::unsupported);  // "gzİp"
    // Only ASCII letters fold: 'G' ^ 0x80 is not 'g'.
    EXPECT_EQ(classify_content_encoding("\xC7zip"), ContentEncoding::unsupported);
}

// ---------------------------------------------------------------------------
// Decoding what decodes

TEST(BodyDecoder, IdentityPassesBytesThrough)
{
    std::string body = "{\"a\":\"\xFF\x00\"}";
    Decoded d = decode(ContentEncoding::identity, body);
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, body);
}

TEST(BodyDecoder, IdentityEmptyBodyIsOkAndEmpty)
{
    Decoded d = decode(ContentEncoding::identity, "");
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, "");
}

TEST(BodyDecoder, Gzip)
{
    Decoded d = decode_compressed(gzip(kJson));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, kJson);
}

TEST(BodyDecoder, ZlibUnderEitherName)
{
    // Both names classify the same, and the stream is decoded by its header.
    ASSERT_EQ(classify_content_encoding("deflate"), ContentEncoding::compressed);
    ASSERT_EQ(classify_content_encoding("gzip"), ContentEncoding::compressed);
    Decoded d = decode(classify_content_encoding("deflate"), zlib_wrap(kJson));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, kJson);
    d = decode(classify_content_encoding("gzip"), zlib_wrap(kJson));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, kJson);
}

TEST(BodyDecoder, GzipHeaderUnderDeflate)
{
    Decoded d = decode(classify_content_encoding("Deflate"), gzip(kJson));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, kJson);
}

TEST(BodyDecoder, CompressedEmptyDocumentDecodesToEmpty)
{
    // A complete stream of nothing is a valid encoding (the JSON check fails later).
    for (const std::string& input : {gzip(""), zlib_wrap("")}) {
        Decoded d = decode_compressed(input);
        EXPECT_EQ(d.status, DecodeStatus::ok);
        EXPECT_EQ(d.text, "");
    }
}

TEST(BodyDecoder, MultiMemberGzipIsTheConcatenation)
{
    Decoded d = decode_compressed(gzip("{\"a\":") + gzip("1") + gzip("}"));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, "{\"a\":1}");

    // Empty members count as members.
    d = decode_compressed(gzip("ab") + gzip("") + gzip("cd") + gzip(""));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, "abcd");
}

TEST(BodyDecoder, LargeMultiMemberGzip)
{
    std::string a = sample_text(300000, 1);
    std::string b = sample_text(200000, 2);
    Decoded d = decode_compressed(gzip(a) + gzip(b));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, a + b);
}

TEST(BodyDecoder, ZlibFollowedByGzipMemberDecodes)
{
    // What may follow the end of the first stream is another gzip member,
    // whichever header the first stream had.
    Decoded d = decode_compressed(zlib_wrap("ab") + gzip("cd"));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(d.text, "abcd");
}

// ---------------------------------------------------------------------------
// What does not decode

TEST(BodyDecoder, RawDeflateIsInvalid)
{
    EXPECT_EQ(decode_compressed(raw_deflate(kJson)).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(raw_deflate("")).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, PlainTextUnderGzipIsInvalid)
{
    EXPECT_EQ(decode_compressed(kJson).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, TruncatedStreamsAreInvalid)
{
    std::string gz = gzip(kJson);
    std::string zl = zlib_wrap(kJson);
    for (size_t cut : {size_t{1}, size_t{4}, size_t{8}, size_t{9}, gz.size() - 10, gz.size() - 1}) {
        EXPECT_EQ(decode_compressed(gz.substr(0, gz.size() - cut)).status, DecodeStatus::invalid) << cut;
    }
    for (size_t cut : {size_t{1}, size_t{4}, size_t{5}, zl.size() - 2, zl.size() - 1}) {
        EXPECT_EQ(decode_compressed(zl.substr(0, zl.size() - cut)).status, DecodeStatus::invalid) << cut;
    }
}

TEST(BodyDecoder, TruncatedSecondMemberIsInvalid)
{
    std::string second = gzip("cd");
    for (size_t keep : {size_t{1}, size_t{3}, size_t{10}, second.size() - 1}) {
        EXPECT_EQ(decode_compressed(gzip("ab") + second.substr(0, keep)).status, DecodeStatus::invalid) << keep;
    }
}

TEST(BodyDecoder, BadGzipCrcIsInvalid)
{
    // The gzip trailer: CRC-32 (4 bytes), then ISIZE (4 bytes).
    std::string gz = gzip(kJson);
    EXPECT_EQ(decode_compressed(flip_byte(gz, 7)).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(flip_byte(gz, 4)).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, BadGzipLengthIsInvalid)
{
    EXPECT_EQ(decode_compressed(flip_byte(gzip(kJson), 0)).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(flip_byte(gzip(kJson), 3)).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, BadAdlerIsInvalid)
{
    std::string zl = zlib_wrap(kJson);
    EXPECT_EQ(decode_compressed(flip_byte(zl, 0)).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(flip_byte(zl, 3)).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, BadChecksumInSecondMemberIsInvalid)
{
    EXPECT_EQ(decode_compressed(gzip("ab") + flip_byte(gzip("cd"), 7)).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, BadHeaderIsInvalid)
{
    std::string gz = gzip(kJson);
    gz[2] = 7;  // compression method other than deflate
    EXPECT_EQ(decode_compressed(gz).status, DecodeStatus::invalid);
    std::string zl = zlib_wrap(kJson);
    zl[1] ^= 0x01;  // header check bits
    EXPECT_EQ(decode_compressed(zl).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, PresetDictionaryIsInvalid)
{
    std::string zl = zlib_with_dictionary(kJson, "session_id events timestamp");
    EXPECT_EQ(decode_compressed(zl).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, GarbageAfterGzipIsInvalid)
{
    std::string gz = gzip(kJson);
    EXPECT_EQ(decode_compressed(gz + "x").status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(gz + std::string(1, '\0')).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(gz + std::string(8, '\0')).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(gz + "\n").status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(gz + kJson).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, GarbageAfterZlibIsInvalid)
{
    EXPECT_EQ(decode_compressed(zlib_wrap(kJson) + "x").status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(zlib_wrap(kJson) + std::string(1, '\0')).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, OnlyGzipMembersMayFollow)
{
    EXPECT_EQ(decode_compressed(gzip("ab") + zlib_wrap("cd")).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(zlib_wrap("ab") + zlib_wrap("cd")).status, DecodeStatus::invalid);
    EXPECT_EQ(decode_compressed(gzip("ab") + raw_deflate("cd")).status, DecodeStatus::invalid);
}

TEST(BodyDecoder, EmptyCompressedBodyIsInvalid)
{
    BodyDecoder decoder(ContentEncoding::compressed, kTwoMiB);
    EXPECT_EQ(decoder.finish(), DecodeStatus::invalid);

    BodyDecoder announced(ContentEncoding::compressed, kTwoMiB);
    announced.expect_input(0);
    EXPECT_EQ(announced.feed("", 0), DecodeStatus::ok);
    EXPECT_EQ(announced.finish(), DecodeStatus::invalid);
}

TEST(BodyDecoder, FinishTwiceGivesTheSameDocument)
{
    BodyDecoder decoder(ContentEncoding::compressed, kTwoMiB);
    std::string body = gzip(kJson);
    ASSERT_EQ(decoder.feed(body.data(), body.size()), DecodeStatus::ok);
    ASSERT_EQ(decoder.finish(), DecodeStatus::ok);
    ASSERT_EQ(decoder.finish(), DecodeStatus::ok);
    EXPECT_EQ(decoder.decoded(), kJson);
}

TEST(BodyDecoder, FailureSticks)
{
    BodyDecoder decoder(ContentEncoding::compressed, kTwoMiB);
    std::string bad = "not compressed";
    ASSERT_EQ(decoder.feed(bad.data(), bad.size()), DecodeStatus::invalid);
    std::string good = gzip(kJson);
    EXPECT_EQ(decoder.feed(good.data(), good.size()), DecodeStatus::invalid);
    EXPECT_EQ(decoder.feed("", 0), DecodeStatus::invalid);
    EXPECT_EQ(decoder.finish(), DecodeStatus::invalid);
    EXPECT_EQ(decoder.finish(), DecodeStatus::invalid);

    BodyDecoder small(ContentEncoding::identity, 4);
    ASSERT_EQ(small.feed("12345", 5), DecodeStatus::too_large);
    EXPECT_EQ(small.feed("1", 1), DecodeStatus::too_large);
    EXPECT_EQ(small.finish(), DecodeStatus::too_large);
}

// ---------------------------------------------------------------------------
// The decoded-size limit

TEST(BodyDecoder, IdentityAtTheLimitIsOk)
{
    std::string body = sample_text(kTwoMiB);
    for (bool announce : {false, true}) {
        Decoded d = decode(ContentEncoding::identity, body, kTwoMiB, 0, announce);
        EXPECT_EQ(d.status, DecodeStatus::ok);
        EXPECT_EQ(d.text.size(), kTwoMiB);
        EXPECT_TRUE(d.text == body);
    }
}

TEST(BodyDecoder, IdentityOneOverTheLimitIsTooLarge)
{
    std::string body = sample_text(kTwoMiB + 1);
    for (bool announce : {false, true}) {
        for (size_t piece : {size_t{0}, size_t{4096}, size_t{kTwoMiB}}) {
            EXPECT_EQ(decode(ContentEncoding::identity, body, kTwoMiB, piece, announce).status,
                      DecodeStatus::too_large)
                << piece;
        }
    }
}

TEST(BodyDecoder, IdentitySmallLimits)
{
    EXPECT_EQ(decode(ContentEncoding::identity, "", 0).status, DecodeStatus::ok);
    EXPECT_EQ(decode(ContentEncoding::identity, "x", 0).status, DecodeStatus::too_large);
    EXPECT_EQ(decode(ContentEncoding::identity, "abc", 3, 1).status, DecodeStatus::ok);
    EXPECT_EQ(decode(ContentEncoding::identity, "abcd", 3, 1).status, DecodeStatus::too_large);
}

TEST(BodyDecoder, CompressedAtTheLimitIsOk)
{
    std::string body = sample_text(kTwoMiB);
    for (const std::string& input : {gzip(body), zlib_wrap(body), gzip(body.substr(0, 1000)) + gzip(body.substr(1000))}) {
        Decoded d = decode_compressed(input, kTwoMiB);
        EXPECT_EQ(d.status, DecodeStatus::ok);
        EXPECT_EQ(d.text.size(), kTwoMiB);
        EXPECT_TRUE(d.text == body);
    }
}

TEST(BodyDecoder, CompressedOneOverTheLimitIsTooLarge)
{
    std::string body = sample_text(kTwoMiB + 1);
    EXPECT_EQ(decode_compressed(gzip(body), kTwoMiB).status, DecodeStatus::too_large);
    EXPECT_EQ(decode_compressed(zlib_wrap(body), kTwoMiB).status, DecodeStatus::too_large);
    // The byte over the limit is in a later member.
    EXPECT_EQ(decode_compressed(gzip(body.substr(0, kTwoMiB)) + gzip("x"), kTwoMiB).status,
              DecodeStatus::too_large);
}

TEST(BodyDecoder, SmallLimitsAroundTheBufferSizes)
{
    // Limits that fall on and around the decoder's growth steps.
    for (size_t limit : {size_t{0}, size_t{1}, size_t{16383}, size_t{16384}, size_t{16385}, size_t{32768},
                         size_t{100000}}) {
        std::string at = sample_text(limit, 3);
        std::string over = sample_text(limit + 1, 3);
        for (size_t piece : {size_t{0}, size_t{7}}) {
            Decoded d = decode_compressed(gzip(at), limit, piece);
            EXPECT_EQ(d.status, DecodeStatus::ok) << limit << '/' << piece;
            EXPECT_TRUE(d.text == at) << limit << '/' << piece;
            EXPECT_EQ(decode_compressed(gzip(over), limit, piece).status, DecodeStatus::too_large)
                << limit << '/' << piece;
        }
    }
}

TEST(BodyDecoder, BombStopsAtTheLimit)
{
    // 100 MB of zeros compress to about 100 KB.
    const size_t bomb_size = 100u * 1000 * 1000;
    std::string compressed = gzip(std::string(bomb_size, '\0'));
    ASSERT_LT(compressed.size(), 200u * 1000);

    BodyDecoder decoder(ContentEncoding::compressed, kTwoMiB);
    decoder.expect_input(compressed.size());
    // Fed in nginx-sized buffers: gathered (it is small), then inflated up
    // to the limit + 1 byte, not 100 MB.
    for (size_t fed = 0; fed < compressed.size(); fed += 8192) {
        size_t n = std::min<size_t>(8192, compressed.size() - fed);
        ASSERT_EQ(decoder.feed(compressed.data() + fed, n), DecodeStatus::ok);
    }
    EXPECT_EQ(decoder.finish(), DecodeStatus::too_large);
    EXPECT_LE(decoder.decoded().size(), kTwoMiB + 1);
    EXPECT_EQ(decoder.finish(), DecodeStatus::too_large);
}

TEST(BodyDecoder, CompressedInputBeyondWhatTheLimitCanComeFromIsRefusedAsItComes)
{
    // 40,000 empty gzip members: nearly a megabyte that decodes to nothing.
    // No batch within 100 kB is that large compressed (twice the limit at
    // the most), so it is refused while it comes, not gathered.
    std::string empty = gzip("");
    std::string members;
    for (int i = 0; i < 40000; i++) {
        members += empty;
    }
    BodyDecoder decoder(ContentEncoding::compressed, 100000);
    DecodeStatus status = DecodeStatus::ok;
    size_t fed = 0;
    while (status == DecodeStatus::ok && fed < members.size()) {
        size_t n = std::min<size_t>(8192, members.size() - fed);
        status = decoder.feed(members.data() + fed, n);
        fed += n;
    }
    EXPECT_EQ(status, DecodeStatus::too_large);
    EXPECT_LE(fed, 200000u + 8192);
    EXPECT_EQ(decoder.finish(), DecodeStatus::too_large);

    // Within that bound, empty members are simply nothing.
    BodyDecoder few(ContentEncoding::compressed, 100000);
    std::string three = empty + gzip(kJson) + empty;
    ASSERT_EQ(few.feed(three.data(), three.size()), DecodeStatus::ok);
    EXPECT_EQ(few.finish(), DecodeStatus::ok);
    EXPECT_EQ(few.decoded(), kJson);
}

TEST(BodyDecoder, BombInOnePieceStopsAtTheLimit)
{
    std::string compressed = gzip(std::string(100u * 1000 * 1000, '\0'));
    for (bool announce : {false, true}) {
        Decoded d = decode(ContentEncoding::compressed, compressed, kTwoMiB, 0, announce);
        EXPECT_EQ(d.status, DecodeStatus::too_large);
        EXPECT_LE(d.text.size(), kTwoMiB + 1);
    }
}

TEST(BodyDecoder, BombNeverAllocatesMoreThanTheLimitPlusOne)
{
    // The header's promise: the output never takes more than limit + 1
    // bytes (+1 for std::string's own terminator).
    std::string compressed = gzip(std::string(100u * 1000 * 1000, '\0'));
    for (size_t limit : {kTwoMiB, size_t{100000}}) {
        LargestAllocation largest;
        {
            BodyDecoder decoder(ContentEncoding::compressed, limit);
            decoder.expect_input(compressed.size());
            EXPECT_EQ(decoder.feed(compressed.data(), compressed.size()), DecodeStatus::ok);
            EXPECT_EQ(decoder.finish(), DecodeStatus::too_large);
        }
        EXPECT_LE(largest.bytes(), limit + 2) << "limit " << limit;
    }
}

TEST(BodyDecoder, IdentityAtTheLimitNeverAllocatesMoreThanTheLimitPlusOne)
{
    std::string body = sample_text(kTwoMiB);
    LargestAllocation largest;
    {
        BodyDecoder decoder(ContentEncoding::identity, kTwoMiB);
        decoder.expect_input(body.size());
        ASSERT_EQ(decoder.feed(body.data(), body.size()), DecodeStatus::ok);
        ASSERT_EQ(decoder.finish(), DecodeStatus::ok);
        EXPECT_EQ(decoder.decoded().size(), kTwoMiB);
    }
    EXPECT_LE(largest.bytes(), kTwoMiB + 2);
}

TEST(BodyDecoder, ExpectInputNeverSizesBeyondTheLimit)
{
    LargestAllocation largest;
    {
        BodyDecoder decoder(ContentEncoding::compressed, 100000);
        decoder.expect_input(size_t{1} << 40);  // a huge Content-Length
        BodyDecoder identity(ContentEncoding::identity, 100000);
        identity.expect_input(size_t{1} << 40);
    }
    EXPECT_LE(largest.bytes(), 100000u + 2);
}

// ---------------------------------------------------------------------------
// Pieces

TEST(BodyDecoder, OneByteAtATimeGivesTheSameResult)
{
    std::string a = sample_text(40000, 4);
    std::string b = sample_text(20000, 5);
    struct Case {
        const char* name;
        std::string input;
    };
    std::vector<Case> cases = {
        {"gzip", gzip(a)},
        {"zlib", zlib_wrap(a)},
        {"two members", gzip(a) + gzip(b)},
        {"empty member between", gzip("x") + gzip("") + gzip("y")},
        {"zlib then gzip", zlib_wrap(a) + gzip(b)},
        {"garbage after", gzip(a) + "x"},
        {"zlib after gzip", gzip(a) + zlib_wrap(b)},
        {"bad crc", flip_byte(gzip(a), 6)},
        {"truncated", gzip(a).substr(0, 100)},
        {"truncated second member", gzip(a) + gzip(b).substr(0, 12)},
        {"raw deflate", raw_deflate(a)},
        {"identity-looking", a},
    };
    for (const Case& c : cases) {
        Decoded whole = decode_compressed(c.input);
        for (size_t piece : {size_t{1}, size_t{2}, size_t{3}, size_t{10}, size_t{4096}}) {
            Decoded pieces = decode_compressed(c.input, kTwoMiB, piece);
            EXPECT_EQ(pieces.status, whole.status) << c.name << " piece " << piece;
            if (whole.status == DecodeStatus::ok) {
                EXPECT_TRUE(pieces.text == whole.text) << c.name << " piece " << piece;
            }
        }
    }
    EXPECT_EQ(decode_compressed(gzip(a) + gzip(b), kTwoMiB, 1).text, a + b);
}

TEST(BodyDecoder, OneByteAtATimeRespectsTheLimit)
{
    std::string body = sample_text(50000, 6);
    EXPECT_EQ(decode_compressed(gzip(body), 50000, 1).status, DecodeStatus::ok);
    EXPECT_EQ(decode_compressed(gzip(body), 49999, 1).status, DecodeStatus::too_large);
    EXPECT_EQ(decode_compressed(gzip(body.substr(0, 25000)) + gzip(body.substr(25000)), 49999, 1).status,
              DecodeStatus::too_large);
    EXPECT_EQ(decode(ContentEncoding::identity, body, 50000, 1).status, DecodeStatus::ok);
    EXPECT_EQ(decode(ContentEncoding::identity, body, 49999, 1).status, DecodeStatus::too_large);
}

TEST(BodyDecoder, SplitAtEveryPositionOfATwoMemberBody)
{
    std::string input = gzip("{\"a\":") + gzip("[1,2,3]}");
    for (size_t split = 0; split <= input.size(); split++) {
        BodyDecoder decoder(ContentEncoding::compressed, 1000);
        ASSERT_EQ(decoder.feed(input.data(), split), DecodeStatus::ok) << split;
        ASSERT_EQ(decoder.feed(input.data() + split, input.size() - split), DecodeStatus::ok) << split;
        ASSERT_EQ(decoder.finish(), DecodeStatus::ok) << split;
        EXPECT_EQ(decoder.decoded(), "{\"a\":[1,2,3]}") << split;
    }
}

TEST(BodyDecoder, PendingOutputAtTheEndOfInputIsNotLost)
{
    // Highly compressible data: the last input bytes inflate to much more
    // than the room left, so zlib still holds output when input runs out.
    for (size_t size : {size_t{16383}, size_t{16384}, size_t{16385}, size_t{32767}, size_t{32768}, size_t{32769},
                        size_t{65536}, size_t{100000}, size_t{1000000}}) {
        std::string zeros(size, '0');
        std::string mixed = sample_text(size, 7);
        for (const std::string* body : {&zeros, &mixed}) {
            std::string input = gzip(*body);
            for (bool announce : {false, true}) {
                for (size_t piece : {size_t{0}, size_t{1}, size_t{input.size() > 1 ? input.size() - 1 : 1}}) {
                    Decoded d = decode(ContentEncoding::compressed, input, kTwoMiB, piece, announce);
                    ASSERT_EQ(d.status, DecodeStatus::ok) << size << '/' << piece << '/' << announce;
                    EXPECT_EQ(d.text.size(), body->size()) << size << '/' << piece << '/' << announce;
                    EXPECT_TRUE(d.text == *body) << size << '/' << piece << '/' << announce;
                }
            }
        }
    }
}

TEST(BodyDecoder, PendingOutputAcrossMembers)
{
    // A member ends while output is pending, and another follows in the same piece.
    std::string a(70000, 'a');
    std::string b(70000, 'b');
    Decoded d = decode_compressed(gzip(a) + gzip(b));
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_TRUE(d.text == a + b);
    d = decode_compressed(gzip(a) + gzip(b), 140000);
    EXPECT_EQ(d.status, DecodeStatus::ok);
    EXPECT_EQ(decode_compressed(gzip(a) + gzip(b), 139999).status, DecodeStatus::too_large);
}
