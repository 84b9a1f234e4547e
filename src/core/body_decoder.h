// Decoding a request body by its Content-Encoding, never holding more than
// the decoded-size limit (plus one byte, to know the limit was passed).
//
// Compressed bodies are inflated with libdeflate, which is about twice as
// fast as zlib on recording batches (BENCHMARKS.md) but works on whole
// buffers: the body is gathered first (it is small: nginx already bounds
// it with client_max_body_size), then inflated member by member into an
// output of at most limit + 1 bytes.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

namespace recording {

enum class ContentEncoding {
    identity,    // absent, empty or "identity"
    compressed,  // "gzip" or "deflate": a gzip or zlib header, either name
    unsupported,
};

// Classifies a Content-Encoding header value (letter case ignored).
// Lists such as "gzip, br" are unsupported.
ContentEncoding classify_content_encoding(std::string_view value) noexcept;

enum class DecodeStatus {
    ok,
    invalid,    // does not decode: 400 invalid_encoding
    too_large,  // decoded size passed the limit: 413 payload_too_large
};

class BodyDecoder {
public:
    BodyDecoder(ContentEncoding encoding, size_t max_decoded_size);
    ~BodyDecoder();
    BodyDecoder(const BodyDecoder&) = delete;
    BodyDecoder& operator=(const BodyDecoder&) = delete;

    // Sizes the output for a body of this many bytes on the wire.
    void expect_input(size_t encoded_size);

    // Feeds the next piece of the body. After a failure every later call
    // returns the same failure without doing any work.
    DecodeStatus feed(const void* data, size_t size);

    // Ends the body: a compressed stream must have ended exactly here.
    DecodeStatus finish();

    // The decoded document; complete once finish() returned ok.
    std::string_view decoded() const noexcept { return {output_.get(), used_}; }

    // Hands the decoded document's buffer over, with its capacity: the
    // document stays where it is for whoever keeps it (an RPUSH until its
    // reply), and the decoder is left with nothing decoded.
    std::unique_ptr<char[]> take_output(size_t* capacity) noexcept;

private:
    DecodeStatus feed_identity(const unsigned char* data, size_t size);
    DecodeStatus feed_compressed(const unsigned char* data, size_t size);
    DecodeStatus inflate_all();
    void resize_output(size_t capacity);
    DecodeStatus fail(DecodeStatus status) noexcept;

    ContentEncoding encoding_;
    size_t max_decoded_size_;
    // used_ bytes are decoded, up to capacity_ is room. Managed by hand:
    // std::string and std::vector may double their allocation when they
    // grow, and this buffer must stay within the limit.
    std::unique_ptr<char[]> output_;
    size_t capacity_ = 0;
    size_t used_ = 0;
    DecodeStatus status_ = DecodeStatus::ok;
    // A compressed body is gathered, then inflated in one call per member.
    std::unique_ptr<unsigned char[]> input_;
    size_t input_capacity_ = 0;
    size_t input_used_ = 0;
    bool inflated_ = false;
};

}  // namespace recording
