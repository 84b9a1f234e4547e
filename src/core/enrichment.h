// Adding `_ingest` to the client's JSON text without re-serializing it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "batch_validator.h"

namespace recording {

struct IngestFields {
    std::string_view site_id;  // 1 to 10 digits, as in the URI
    int64_t received_at_ms = 0;
    std::string_view ip;
    std::optional<std::string_view> user_agent;  // nullopt: header absent
    std::optional<std::string_view> country;     // nullopt or empty: null
    std::string_view request_id;
};

// Appends `bytes` as a JSON string (quotes included). Bytes that are not
// UTF-8 become U+FFFD, one per maximal ill-formed subsequence (Unicode's
// recommended practice), so the output is always valid UTF-8.
void append_json_string(std::string& out, std::string_view bytes);

// `,"_ingest":{...}` with the contract's six fields, in its order.
std::string ingest_member(const IngestFields& fields);

// The queue element as up to four slices of the client's document and the
// new member, in order; nothing is copied until append_to().
class QueueElement {
public:
    QueueElement(std::string_view document, const ValidatedBatch& batch, std::string_view ingest);

    size_t size() const noexcept { return size_; }
    // The element's bytes, in order: slices of the document and the ingest member.
    size_t slice_count() const noexcept { return count_; }
    std::string_view slice(size_t i) const noexcept { return slices_[i]; }
    void append_to(std::string& out) const;
    std::string str() const;

private:
    void add(std::string_view slice) noexcept;

    std::string_view slices_[5];  // four at most; one spare
    size_t count_ = 0;
    size_t size_ = 0;
};

}  // namespace recording
