#include "outcome.h"

namespace recording {

Response response_for(Outcome outcome) noexcept
{
    switch (outcome) {
    case Outcome::queued:
        return {202, R"({"status":"queued"})"};
    case Outcome::sampled_out:
        return {200, R"({"status":"sampled_out"})"};
    case Outcome::method_not_allowed:
        return {405, R"({"error":"method_not_allowed"})"};
    case Outcome::unknown_site:
        return {404, R"({"error":"unknown_site"})"};
    case Outcome::site_disabled:
        return {403, R"({"error":"site_disabled"})"};
    case Outcome::unsupported_encoding:
        return {415, R"({"error":"unsupported_encoding"})"};
    case Outcome::invalid_encoding:
        return {400, R"({"error":"invalid_encoding"})"};
    case Outcome::payload_too_large:
        return {413, R"({"error":"payload_too_large"})"};
    case Outcome::invalid_json:
        return {400, R"({"error":"invalid_json"})"};
    case Outcome::invalid_session_id:
        return {400, R"({"error":"invalid_session_id"})"};
    case Outcome::invalid_seq:
        return {400, R"({"error":"invalid_seq"})"};
    case Outcome::invalid_events:
        return {400, R"({"error":"invalid_events"})"};
    case Outcome::quota_exceeded:
        return {429, R"({"error":"quota_exceeded"})"};
    case Outcome::queue_unavailable:
        return {503, R"({"error":"queue_unavailable"})"};
    case Outcome::internal_error:
        break;
    }
    return {500, R"({"error":"internal"})"};
}

std::string_view outcome_name(Outcome outcome) noexcept
{
    switch (outcome) {
    case Outcome::queued: return "queued";
    case Outcome::sampled_out: return "sampled_out";
    case Outcome::method_not_allowed: return "method_not_allowed";
    case Outcome::unknown_site: return "unknown_site";
    case Outcome::site_disabled: return "site_disabled";
    case Outcome::unsupported_encoding: return "unsupported_encoding";
    case Outcome::invalid_encoding: return "invalid_encoding";
    case Outcome::payload_too_large: return "payload_too_large";
    case Outcome::invalid_json: return "invalid_json";
    case Outcome::invalid_session_id: return "invalid_session_id";
    case Outcome::invalid_seq: return "invalid_seq";
    case Outcome::invalid_events: return "invalid_events";
    case Outcome::quota_exceeded: return "quota_exceeded";
    case Outcome::queue_unavailable: return "queue_unavailable";
    case Outcome::internal_error: break;
    }
    return "internal";
}

}  // namespace recording
