#include "body_decoder.h"

#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <utility>

namespace recording {

namespace {

bool equals_ignoring_case(std::string_view a, std::string_view b) noexcept
{
    if (a.size() != b.size()) {
        return false;
    }
    for (size_t i = 0; i < a.size(); i++) {
        unsigned char c = static_cast<unsigned char>(a[i]);
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<unsigned char>(c - 'A' + 'a');
        }
        if (c != static_cast<unsigned char>(b[i])) {
            return false;
        }
    }
    return true;
}

constexpr size_t kMinRoom = 16 * 1024;

// A compressed body larger than this cannot be a batch within the limit:
// deflate at its worst (stored blocks) adds a few bytes per 64 KiB, gzip
// 18 bytes per member. Only a flood of empty members gets there.
size_t max_compressed_size(size_t max_decoded_size)
{
    return std::max(max_decoded_size * 2, size_t{64 * 1024});
}

bool is_gzip(const unsigned char* data, size_t size) noexcept
{
    return size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
}

// One decompressor per thread (a worker has one), reused by every body.
libdeflate_decompressor* decompressor()
{
    thread_local std::unique_ptr<libdeflate_decompressor, void (*)(libdeflate_decompressor*)> d(
        libdeflate_alloc_decompressor(), libdeflate_free_decompressor);
    if (!d) {
        throw std::bad_alloc();
    }
    return d.get();
}

}  // namespace

ContentEncoding classify_content_encoding(std::string_view value) noexcept
{
    if (value.empty() || equals_ignoring_case(value, "identity")) {
        return ContentEncoding::identity;
    }
    if (equals_ignoring_case(value, "gzip") || equals_ignoring_case(value, "deflate")) {
        return ContentEncoding::compressed;
    }
    return ContentEncoding::unsupported;
}

BodyDecoder::BodyDecoder(ContentEncoding encoding, size_t max_decoded_size)
    : encoding_(encoding), max_decoded_size_(max_decoded_size)
{
}

BodyDecoder::~BodyDecoder() = default;

void BodyDecoder::expect_input(size_t encoded_size)
{
    if (encoding_ == ContentEncoding::identity) {
        // Exactly the body; one byte more than the limit tells it is over.
        resize_output(std::min(max_decoded_size_ + 1, encoded_size));
        return;
    }
    // The output is sized when the whole body is there (inflate_all); the
    // input may grow past this, up to max_compressed_size().
    size_t input = std::min(encoded_size, max_decoded_size_ + 1);
    if (input > input_capacity_ && input_used_ == 0) {
        input_.reset(new unsigned char[input]);
        input_capacity_ = input;
        input_used_ = 0;
    }
}

void BodyDecoder::resize_output(size_t capacity)
{
    if (capacity <= capacity_) {
        return;
    }
    std::unique_ptr<char[]> bigger(new char[capacity]);  // not zeroed: it is written before read
    if (used_ != 0) {
        std::memcpy(bigger.get(), output_.get(), used_);
    }
    output_ = std::move(bigger);
    capacity_ = capacity;
}

DecodeStatus BodyDecoder::fail(DecodeStatus status) noexcept
{
    status_ = status;
    return status;
}

DecodeStatus BodyDecoder::feed(const void* data, size_t size)
{
    if (status_ != DecodeStatus::ok || size == 0) {
        return status_;
    }
    auto bytes = static_cast<const unsigned char*>(data);
    if (encoding_ == ContentEncoding::compressed) {
        return feed_compressed(bytes, size);
    }
    return feed_identity(bytes, size);
}

DecodeStatus BodyDecoder::feed_identity(const unsigned char* data, size_t size)
{
    if (size > max_decoded_size_ - used_) {
        return fail(DecodeStatus::too_large);
    }
    if (capacity_ < used_ + size) {
        // Geometric growth (a chunked body comes in many pieces), within the limit.
        resize_output(std::max(used_ + size, std::min(max_decoded_size_, std::max(capacity_ * 2, kMinRoom))));
    }
    std::memcpy(output_.get() + used_, data, size);
    used_ += size;
    return status_;
}

namespace {

// What a compressed body must start with: the gzip magic, or a zlib header
// (deflate, and a check value over its two bytes). Anything else is
// refused as soon as it comes.
bool plausible_start(const unsigned char* data, size_t size)
{
    if (data[0] == 0x1f) {
        return size < 2 || data[1] == 0x8b;
    }
    if ((data[0] & 0x0f) != 8 || (data[0] >> 4) > 7) {
        return false;
    }
    return size < 2 || (data[0] * 256 + data[1]) % 31 == 0;
}

}  // namespace

DecodeStatus BodyDecoder::feed_compressed(const unsigned char* data, size_t size)
{
    if (input_used_ == 0 && !plausible_start(data, size)) {
        return fail(DecodeStatus::invalid);
    }
    if (size > max_compressed_size(max_decoded_size_) - input_used_) {
        return fail(DecodeStatus::too_large);
    }
    if (input_capacity_ < input_used_ + size) {
        size_t capacity = std::max(input_used_ + size, std::max(input_capacity_ * 2, size_t{4096}));
        capacity = std::min(capacity, max_compressed_size(max_decoded_size_));
        std::unique_ptr<unsigned char[]> bigger(new unsigned char[capacity]);
        if (input_used_ != 0) {
            std::memcpy(bigger.get(), input_.get(), input_used_);
        }
        input_ = std::move(bigger);
        input_capacity_ = capacity;
    }
    std::memcpy(input_.get() + input_used_, data, size);
    input_used_ += size;
    return status_;
}

// Inflates the gathered body: a gzip or zlib stream, then only gzip
// members, each decoded whole into the room left. When the room is too
// small it grows once to the limit and that member is decoded again; if it
// still does not fit, the body is too large, whatever follows (so a bomb
// that is also corrupt further on is 413, as when inflating as it came).
DecodeStatus BodyDecoder::inflate_all()
{
    const unsigned char* in = input_.get();
    size_t left = input_used_;
    if (left == 0) {
        return fail(DecodeStatus::invalid);
    }
    // A single gzip member tells its size in its last four bytes (modulo
    // 2^32, and a client may lie: it is only where to start). The output
    // never grows past the limit: a member that does not fit is too large,
    // whatever its checksum says (as when inflating as it comes, where the
    // limit is passed before the checksum is read).
    size_t cap = max_decoded_size_;
    if (is_gzip(in, left) && left >= 18) {
        const unsigned char* t = in + left - 4;
        size_t isize = t[0] | (t[1] << 8) | (t[2] << 16) | (static_cast<size_t>(t[3]) << 24);
        resize_output(std::min(cap, std::max(isize, size_t{1})));
    } else {
        resize_output(std::min(cap, std::max(left * 8, kMinRoom)));
    }

    bool first = true;
    while (left > 0) {
        bool gzip = is_gzip(in, left);
        if (!first && !gzip) {
            return fail(DecodeStatus::invalid);  // after a stream, only gzip members
        }
        for (;;) {
            size_t in_bytes = 0;
            size_t out_bytes = 0;
            char* out = output_.get() + used_;
            size_t room = capacity_ - used_;
            libdeflate_result rc =
                gzip ? libdeflate_gzip_decompress_ex(decompressor(), in, left, out, room, &in_bytes, &out_bytes)
                     : libdeflate_zlib_decompress_ex(decompressor(), in, left, out, room, &in_bytes, &out_bytes);
            if (rc == LIBDEFLATE_SUCCESS) {
                used_ += out_bytes;
                in += in_bytes;
                left -= in_bytes;
                break;
            }
            if (rc == LIBDEFLATE_INSUFFICIENT_SPACE && capacity_ < cap) {
                resize_output(cap);
                continue;
            }
            return fail(rc == LIBDEFLATE_INSUFFICIENT_SPACE ? DecodeStatus::too_large : DecodeStatus::invalid);
        }
        if (used_ > max_decoded_size_) {
            return fail(DecodeStatus::too_large);
        }
        first = false;
    }
    return status_;
}

DecodeStatus BodyDecoder::finish()
{
    if (status_ != DecodeStatus::ok) {
        return status_;
    }
    // Inflating is done once; finish() may be asked again.
    if (encoding_ == ContentEncoding::compressed && !inflated_) {
        inflated_ = true;
        return inflate_all();
    }
    return status_;
}

std::unique_ptr<char[]> BodyDecoder::take_output(size_t* capacity) noexcept
{
    *capacity = capacity_;
    capacity_ = 0;
    used_ = 0;
    return std::move(output_);
}

}  // namespace recording
