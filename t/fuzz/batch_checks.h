// Properties of validate_batch()'s answer, shared by fuzz_validate and
// fuzz_enrich. RapidJSON's DOM parser is the independent referee: what the
// validator accepts must be strict JSON that meets the contract.
#pragma once

#include <rapidjson/document.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "batch_validator.h"
#include "fuzz_common.h"

namespace fuzz {

constexpr unsigned kStrict = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag;

inline std::string_view text_of(const rapidjson::Value& string_value)
{
    return {string_value.GetString(), string_value.GetStringLength()};
}

// Parses `text` as RFC 8259 JSON in valid UTF-8. RapidJSON takes a NUL byte
// for the end of its input, so a text holding one is refused here.
inline bool parse_strict(std::string_view text, rapidjson::Document& dom)
{
    if (text.find('\0') != std::string_view::npos) {
        return false;
    }
    dom.Parse<kStrict>(text.data(), text.size());
    return !dom.HasParseError();
}

inline bool is_session_id(std::string_view id)
{
    if (id.empty() || id.size() > 64) {
        return false;
    }
    for (char c : id) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

inline bool is_whole(const rapidjson::Value& v)
{
    if (!v.IsNumber()) {
        return false;
    }
    double d = v.GetDouble();
    return std::isfinite(d) && std::floor(d) == d;
}

// Every string and key decodes to valid UTF-8 (RapidJSON 1.1.0 lets a lone
// low surrogate escape such as \uDC00 through as the bytes ED B0 80), and
// containers nest at most `max_depth` levels, the root being level 1.
inline void check_tree(const rapidjson::Value& root, unsigned max_depth)
{
    std::vector<std::pair<const rapidjson::Value*, unsigned>> stack{{&root, 0}};
    while (!stack.empty()) {
        auto [value, depth] = stack.back();
        stack.pop_back();
        if (value->IsString()) {
            FUZZ_CHECK(is_valid_utf8(text_of(*value)), "a string of a valid batch is not UTF-8");
        } else if (value->IsObject()) {
            FUZZ_CHECK(depth + 1 <= max_depth, "a valid batch nests deeper than max_depth");
            for (auto& m : value->GetObject()) {
                FUZZ_CHECK(is_valid_utf8(text_of(m.name)), "a key of a valid batch is not UTF-8");
                stack.emplace_back(&m.value, depth + 1);
            }
        } else if (value->IsArray()) {
            FUZZ_CHECK(depth + 1 <= max_depth, "a valid batch nests deeper than max_depth");
            for (auto& e : value->GetArray()) {
                stack.emplace_back(&e, depth + 1);
            }
        } else if (value->IsNumber()) {
            FUZZ_CHECK(std::isfinite(value->GetDouble()), "a valid batch holds a non-finite number");
        }
    }
}

// Checks the answer for `document` whatever it is.
inline void check_answer(std::string_view document, const recording::ValidatedBatch& batch)
{
    using recording::Outcome;
    const size_t size = document.size();
    if (!batch.valid) {
        FUZZ_CHECK(batch.error == Outcome::invalid_json || batch.error == Outcome::invalid_session_id ||
                       batch.error == Outcome::invalid_seq || batch.error == Outcome::invalid_events,
                   "an invalid batch with an error that is not a body error");
        return;
    }
    FUZZ_CHECK(is_session_id(batch.session_id), "session_id is not [A-Za-z0-9_-]{1,64}");
    FUZZ_CHECK(batch.removed_begin <= batch.removed_end, "removed range ends before it begins");
    FUZZ_CHECK(batch.removed_end <= size, "removed range ends past the document");
    FUZZ_CHECK(batch.insert_at <= size, "insert_at is past the document");
    FUZZ_CHECK(!(batch.removed_begin < batch.insert_at && batch.insert_at < batch.removed_end),
               "insert_at is inside the removed range");
    // The new member goes before the closing brace, never after it.
    FUZZ_CHECK(batch.insert_at < size, "insert_at is at the end of the document");
}

// The contract's body rules, checked on the DOM of a batch the validator
// accepted under `limits`.
inline void check_valid_batch(std::string_view document, const recording::ValidatedBatch& batch,
                              const recording::ValidationLimits& limits)
{
    rapidjson::Document dom;
    if (!parse_strict(document, dom)) {
        std::fprintf(stderr, "RapidJSON: error %d at offset %zu\n", static_cast<int>(dom.GetParseError()),
                     dom.GetErrorOffset());
    }
    FUZZ_CHECK(!dom.HasParseError() && document.find('\0') == std::string_view::npos,
               "a valid batch is not strict JSON");
    FUZZ_CHECK(is_valid_utf8(document), "a valid batch is not UTF-8");
    FUZZ_CHECK(dom.IsObject(), "a valid batch is not an object");
    check_tree(dom, limits.max_depth);

    std::set<std::string_view> keys;
    bool has_ingest = false;
    for (auto& m : dom.GetObject()) {
        FUZZ_CHECK(keys.insert(text_of(m.name)).second, "a valid batch has a duplicate top-level key");
        has_ingest = has_ingest || text_of(m.name) == "_ingest";
    }
    FUZZ_CHECK(has_ingest == (batch.removed_begin != batch.removed_end),
               "removed range is not empty exactly when the client sent `_ingest`");

    auto session_id = dom.FindMember("session_id");
    FUZZ_CHECK(session_id != dom.MemberEnd() && session_id->value.IsString() &&
                   text_of(session_id->value) == batch.session_id,
               "session_id is not the document's");

    auto seq = dom.FindMember("seq");
    FUZZ_CHECK(seq != dom.MemberEnd() && is_whole(seq->value) && seq->value.GetDouble() >= 0,
               "seq of a valid batch is not a whole number >= 0");

    auto events = dom.FindMember("events");
    FUZZ_CHECK(events != dom.MemberEnd() && events->value.IsArray(), "events of a valid batch is not an array");
    size_t count = events->value.Size();
    FUZZ_CHECK(count >= 1 && count <= limits.max_events, "a valid batch with too few or too many events");
    for (auto& event : events->value.GetArray()) {
        FUZZ_CHECK(event.IsObject(), "an event is not an object");
        std::set<std::string_view> event_keys;
        for (auto& m : event.GetObject()) {
            FUZZ_CHECK(event_keys.insert(text_of(m.name)).second, "an event has a duplicate key");
        }
        auto type = event.FindMember("type");
        FUZZ_CHECK(type != event.MemberEnd() && is_whole(type->value) && type->value.GetDouble() >= 0 &&
                       type->value.GetDouble() <= 6,
                   "an event type is not 0 to 6");
        auto timestamp = event.FindMember("timestamp");
        FUZZ_CHECK(timestamp != event.MemberEnd() && timestamp->value.IsNumber(), "an event timestamp is not a number");
    }
}

}  // namespace fuzz
