#include "body_decoder.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <new>

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

// zlib's window bits: 15 with +32 detects a zlib or a gzip header; +16
// accepts only gzip, which is what may follow the end of a stream.
constexpr int kAnyHeader = MAX_WBITS + 32;
constexpr int kGzipOnly = MAX_WBITS + 16;

constexpr size_t kMinRoom = 16 * 1024;

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

struct BodyDecoder::Inflater {
    z_stream stream{};
    bool initialized = false;
    bool in_member = false;       // inside a stream that has not ended yet
    bool output_pending = false;  // the last inflate filled the room
    bool any_member_ended = false;

    ~Inflater()
    {
        if (initialized) {
            inflateEnd(&stream);
        }
    }
};

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
    // Compressed recordings typically inflate five- to tenfold.
    size_t guess = std::max(encoded_size, kMinRoom / 8) * 8;
    resize_output(std::min(max_decoded_size_ + 1, guess));
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

// Grows the output geometrically, but never beyond limit + 1 bytes: one
// byte past the limit is enough to know the body is too large.
bool BodyDecoder::make_room()
{
    size_t cap = max_decoded_size_ + 1;
    if (used_ >= cap) {
        return false;
    }
    if (capacity_ > used_) {
        return true;
    }
    resize_output(std::min(cap, std::max(capacity_ * 2, kMinRoom)));
    return true;
}

DecodeStatus BodyDecoder::feed_compressed(const unsigned char* data, size_t size)
{
    if (!inflater_) {
        inflater_ = std::make_unique<Inflater>();
    }
    inflater_->stream.next_in = const_cast<unsigned char*>(data);
    inflater_->stream.avail_in = static_cast<uInt>(size);
    return inflate_available();
}

// Inflates what the stream holds: the input given, and output zlib still
// keeps when the last call filled the room exactly.
DecodeStatus BodyDecoder::inflate_available()
{
    Inflater& z = *inflater_;
    while (z.stream.avail_in > 0 || z.output_pending) {
        if (!z.in_member) {
            // The first stream may carry either header; what follows the
            // end of a stream must be another gzip member.
            int rc;
            if (!z.initialized) {
                rc = inflateInit2(&z.stream, kAnyHeader);
                z.initialized = rc == Z_OK;
            } else {
                rc = inflateReset2(&z.stream, kGzipOnly);
            }
            if (rc == Z_MEM_ERROR) {
                throw std::bad_alloc();
            }
            if (rc != Z_OK) {
                return fail(DecodeStatus::invalid);
            }
            z.in_member = true;
        }
        if (!make_room()) {
            return fail(DecodeStatus::too_large);
        }
        size_t room = capacity_ - used_;
        z.stream.next_out = reinterpret_cast<unsigned char*>(output_.get() + used_);
        z.stream.avail_out = static_cast<uInt>(room);

        int rc = inflate(&z.stream, Z_NO_FLUSH);
        used_ += room - z.stream.avail_out;
        z.output_pending = z.stream.avail_out == 0;

        if (used_ > max_decoded_size_) {
            return fail(DecodeStatus::too_large);
        }
        switch (rc) {
        case Z_STREAM_END:
            z.in_member = false;
            z.output_pending = false;
            z.any_member_ended = true;
            break;
        case Z_OK:
            break;
        case Z_BUF_ERROR:
            // No progress: with room left, zlib wants input we do not have.
            if (!z.output_pending) {
                return status_;
            }
            break;
        case Z_MEM_ERROR:
            throw std::bad_alloc();
        default:  // Z_DATA_ERROR (bad header, data or checksum), Z_NEED_DICT
            return fail(DecodeStatus::invalid);
        }
    }
    return status_;
}

DecodeStatus BodyDecoder::finish()
{
    if (status_ != DecodeStatus::ok) {
        return status_;
    }
    if (encoding_ == ContentEncoding::compressed) {
        // Output zlib still holds means the stream has not ended: truncated.
        bool complete = inflater_ && inflater_->any_member_ended && !inflater_->in_member;
        if (!complete) {
            return fail(DecodeStatus::invalid);  // empty or truncated
        }
    }
    return status_;
}

}  // namespace recording
