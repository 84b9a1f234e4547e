// The public entry, validate_batch, which asks the fast validator
// (batch_validator_fast.cpp) and then the reference
// (batch_validator_reference.cpp), and the rules both share
// (batch_validator_rules.h).

#include "batch_validator.h"

#include <cmath>

#include "batch_validator_rules.h"

namespace recording {

namespace batch_rules {

namespace {

// What key_check_steps() reports: added to once per validation.
thread_local size_t key_check_steps_total = 0;

constexpr size_t kMaxSessionIdLength = 64;

bool is_session_id_char(char c) noexcept
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

}  // namespace

bool is_valid_session_id(std::string_view id) noexcept
{
    if (id.empty() || id.size() > kMaxSessionIdLength) {
        return false;
    }
    for (char c : id) {
        if (!is_session_id_char(c)) {
            return false;
        }
    }
    return true;
}

bool is_whole(double value) noexcept
{
    return std::isfinite(value) && std::floor(value) == value;
}

TopKey classify_top_key(std::string_view key) noexcept
{
    if (key == "session_id") return TopKey::session_id;
    if (key == "seq") return TopKey::seq;
    if (key == "events") return TopKey::events;
    if (key == "_ingest") return TopKey::ingest;
    return TopKey::other;
}

size_t end_before(std::string_view document, size_t next) noexcept
{
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    size_t pos = next;
    while (pos > 0 && is_space(document[pos - 1])) {
        pos--;
    }
    if (pos > 0 && document[pos - 1] == ',') {
        pos--;
        while (pos > 0 && is_space(document[pos - 1])) {
            pos--;
        }
    }
    return pos;
}

void count_key_check_steps(size_t steps) noexcept
{
    key_check_steps_total += steps;
}

}  // namespace batch_rules

size_t key_check_steps() noexcept
{
    return batch_rules::key_check_steps_total;
}

ValidatedBatch validate_batch(std::string_view document, const ValidationLimits& limits)
{
    ValidatedBatch result;
    if (validate_batch_fast(document, limits, result)) {
        return result;
    }
    return validate_batch_reference(document, limits);
}

}  // namespace recording
