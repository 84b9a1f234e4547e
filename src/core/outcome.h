// What became of one batch, and the HTTP answer the contract gives for it.
#pragma once

#include <string_view>

namespace recording {

enum class Outcome {
    queued,
    sampled_out,
    method_not_allowed,
    unknown_site,
    site_disabled,
    unsupported_encoding,
    invalid_encoding,
    payload_too_large,
    invalid_json,
    invalid_session_id,
    invalid_seq,
    invalid_events,
    quota_exceeded,
    queue_unavailable,
    internal_error,
};

struct Response {
    int status;
    std::string_view body;  // static JSON text
};

// The status and JSON body of CONTRACT.md's response table.
Response response_for(Outcome outcome) noexcept;

// The short name used in logs ("queued", "invalid_json", ...).
std::string_view outcome_name(Outcome outcome) noexcept;

}  // namespace recording
