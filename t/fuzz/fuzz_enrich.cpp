// libFuzzer target: the queue element built from a valid batch.
//
// Input: the document, then optionally a NUL byte and the request's
// headers as arbitrary bytes:
//
//   document \0 flags ua_length user_agent[ua_length] country[...]
//
// (A document holding a NUL is never valid, so nothing is lost by cutting
// there; fuzz_validate covers such documents.) `flags` says whether each
// header is present and picks the site id, received_at and ip among edge
// values; ua_length is cut to what is left.
//
// When the document is valid, the element is built as the handler does and
// must be:
//   - strict JSON (RapidJSON, kParseValidateEncodingFlag), a root object,
//     valid UTF-8 as a whole and in every string, without a NUL byte;
//   - with exactly one top-level `_ingest`, the last member, an object of
//     exactly site_id, received_at, ip, user_agent, country, request_id in
//     that order, holding the values given (headers that are not UTF-8
//     with U+FFFD in place of what is ill-formed, the rest unchanged);
//   - the client's bytes intact: the element minus the inserted text is
//     the document minus the removed range, and that is the document
//     the validator accepts with nothing to remove and the same insertion
//     point; the removed range holds exactly the client's `_ingest` member.

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "batch_checks.h"
#include "batch_validator.h"
#include "enrichment.h"
#include "fuzz_common.h"

using recording::IngestFields;
using recording::QueueElement;
using recording::validate_batch;
using recording::ValidatedBatch;

namespace {

constexpr std::string_view kFffd = "\xEF\xBF\xBD";

struct Input {
    std::string_view document;
    IngestFields fields;
};

Input split(const uint8_t* data, size_t size)
{
    std::string_view all(reinterpret_cast<const char*>(data), size);
    Input in;
    in.fields.site_id = "7";
    in.fields.received_at_ms = 1700000000123;
    in.fields.ip = "203.0.113.7";
    in.fields.request_id = "0123456789abcdef0123456789abcdef";

    size_t nul = all.find('\0');
    in.document = all.substr(0, nul);
    if (nul == std::string_view::npos) {
        return in;
    }
    std::string_view rest = all.substr(nul + 1);
    unsigned flags = rest.empty() ? 0 : static_cast<unsigned char>(rest[0]);
    size_t ua_length = rest.size() < 2 ? 0 : static_cast<unsigned char>(rest[1]);
    rest = rest.substr(rest.size() < 2 ? rest.size() : 2);
    ua_length = ua_length < rest.size() ? ua_length : rest.size();

    if (flags & 1) {
        in.fields.user_agent = rest.substr(0, ua_length);
    }
    if (flags & 2) {
        in.fields.country = rest.substr(ua_length);
    }
    static const std::string_view site_ids[] = {"7", "0", "4294967306", "9999999999"};
    in.fields.site_id = site_ids[(flags >> 2) & 3];
    static const int64_t times[] = {1700000000123, 0, -1, std::numeric_limits<int64_t>::min()};
    in.fields.received_at_ms = times[(flags >> 4) & 3];
    if (flags & 64) {
        in.fields.ip = "2001:db8::1";
    }
    return in;
}

uint64_t site_id_value(std::string_view digits)
{
    uint64_t v = 0;
    for (char c : digits) {
        v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    return v;
}

// The characters of `bytes` that are well-formed UTF-8, in order, found by
// trying each length at each position (no continuation byte can start a
// character, so dropping one byte at a time keeps the same ones as
// replacing maximal subparts does).
std::string well_formed_characters(std::string_view bytes)
{
    std::string out;
    size_t i = 0;
    while (i < bytes.size()) {
        size_t length = 0;
        for (size_t n = 1; n <= 4 && i + n <= bytes.size(); n++) {
            if (fuzz::is_valid_utf8(bytes.substr(i, n))) {
                length = n;
                break;
            }
        }
        if (length == 0) {
            i++;
            continue;
        }
        out.append(bytes.substr(i, length));
        i += length;
    }
    return out;
}

std::string without_fffd(std::string_view s)
{
    std::string out;
    for (size_t i = 0; i < s.size();) {
        if (s.substr(i, 3) == kFffd) {
            i += 3;
        } else {
            out += s[i++];
        }
    }
    return out;
}

size_t count_fffd(std::string_view s)
{
    size_t n = 0;
    for (size_t at = s.find(kFffd); at != std::string_view::npos; at = s.find(kFffd, at + 3)) {
        n++;
    }
    return n;
}

// A header value in the element: exactly the bytes when they are UTF-8,
// otherwise the same well-formed characters with U+FFFD for the rest.
void check_header(const rapidjson::Value& value, std::string_view sent, const char* what)
{
    FUZZ_CHECK(value.IsString(), what);
    std::string_view got = fuzz::text_of(value);
    if (fuzz::is_valid_utf8(sent)) {
        FUZZ_CHECK(got == sent, what);
        return;
    }
    FUZZ_CHECK(without_fffd(got) == without_fffd(well_formed_characters(sent)), what);
    FUZZ_CHECK(count_fffd(got) > count_fffd(sent), what);
}

std::string compact(const rapidjson::Value& value)
{
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    value.Accept(writer);
    return std::string(buffer.GetString(), buffer.GetSize());
}

bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// The removed range is one member and its separating comma: with the comma
// and the white space around it trimmed, it is the client's `_ingest`.
void check_removed(std::string_view document, const ValidatedBatch& batch, const rapidjson::Document& dom)
{
    auto ingest = dom.FindMember("_ingest");
    if (batch.removed_begin == batch.removed_end) {
        FUZZ_CHECK(ingest == dom.MemberEnd(), "the client's `_ingest` was not removed");
        return;
    }
    FUZZ_CHECK(ingest != dom.MemberEnd(), "something was removed but the client sent no `_ingest`");

    std::string_view member = document.substr(batch.removed_begin, batch.removed_end - batch.removed_begin);
    auto trim = [&member](bool front) {
        auto at_edge = [&] { return front ? member.front() : member.back(); };
        auto drop = [&] { front ? member.remove_prefix(1) : member.remove_suffix(1); };
        while (!member.empty() && is_json_space(at_edge())) drop();
        if (!member.empty() && at_edge() == ',') drop();
        while (!member.empty() && is_json_space(at_edge())) drop();
    };
    trim(true);
    trim(false);

    std::string wrapped = "{" + std::string(member) + "}";
    rapidjson::Document removed;
    FUZZ_CHECK(fuzz::parse_strict(wrapped, removed) && removed.IsObject() && removed.MemberCount() == 1,
               "the removed range is not one member");
    auto& m = *removed.MemberBegin();
    FUZZ_CHECK(fuzz::text_of(m.name) == "_ingest", "the removed member is not `_ingest`");
    FUZZ_CHECK(compact(m.value) == compact(ingest->value), "the removed member is not the client's `_ingest`");
}

void check_ingest(const rapidjson::Value& ingest, const IngestFields& fields)
{
    static const char* const names[] = {"site_id", "received_at", "ip", "user_agent", "country", "request_id"};
    FUZZ_CHECK(ingest.IsObject() && ingest.MemberCount() == 6, "`_ingest` is not an object of six members");
    size_t i = 0;
    for (auto& m : ingest.GetObject()) {
        FUZZ_CHECK(fuzz::text_of(m.name) == names[i], "`_ingest` members are not the six in order");
        i++;
    }
    const rapidjson::Value& site_id = ingest["site_id"];
    FUZZ_CHECK(site_id.IsUint64() && site_id.GetUint64() == site_id_value(fields.site_id), "site_id");
    const rapidjson::Value& received_at = ingest["received_at"];
    FUZZ_CHECK(received_at.IsInt64() && received_at.GetInt64() == fields.received_at_ms, "received_at");
    FUZZ_CHECK(ingest["ip"].IsString() && fuzz::text_of(ingest["ip"]) == fields.ip, "ip");
    FUZZ_CHECK(ingest["request_id"].IsString() && fuzz::text_of(ingest["request_id"]) == fields.request_id,
               "request_id");

    const rapidjson::Value& user_agent = ingest["user_agent"];
    if (fields.user_agent) {
        check_header(user_agent, *fields.user_agent, "user_agent is not the header's");
    } else {
        FUZZ_CHECK(user_agent.IsNull(), "user_agent is not null without the header");
    }
    const rapidjson::Value& country = ingest["country"];
    if (fields.country && !fields.country->empty()) {
        check_header(country, *fields.country, "country is not the header's");
    } else {
        FUZZ_CHECK(country.IsNull(), "country is not null without a value");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    Input in = split(data, size);
    const std::string_view document = in.document;
    const recording::ValidationLimits limits;
    ValidatedBatch batch = validate_batch(document, limits);
    fuzz::check_answer(document, batch);
    if (!batch.valid) {
        return 0;
    }
    fuzz::check_valid_batch(document, batch, limits);

    std::string ingest = recording::ingest_member(in.fields);
    FUZZ_CHECK(ingest.rfind(",\"_ingest\":{", 0) == 0 && ingest.back() == '}',
               "ingest_member() is not `,\"_ingest\":{...}`");
    QueueElement queue_element(document, batch, ingest);
    std::string element = queue_element.str();
    FUZZ_CHECK(queue_element.size() == element.size(), "size() is not the length of str()");
    std::string appended = "prefix";
    queue_element.append_to(appended);
    FUZZ_CHECK(appended == "prefix" + element, "append_to() does not append str()");

    // Valid JSON, valid UTF-8, exactly one `_ingest`, the last member.
    FUZZ_CHECK(element.find('\0') == std::string::npos, "the element holds a NUL byte");
    FUZZ_CHECK(fuzz::is_valid_utf8(element), "the element is not UTF-8");
    rapidjson::Document dom;
    if (!fuzz::parse_strict(element, dom)) {
        std::fprintf(stderr, "RapidJSON: error %d at offset %zu of the element\n",
                     static_cast<int>(dom.GetParseError()), dom.GetErrorOffset());
    }
    FUZZ_CHECK(!dom.HasParseError() && dom.IsObject(), "the element is not a strict JSON object");
    fuzz::check_tree(dom, limits.max_depth);
    size_t ingests = 0;
    for (auto& m : dom.GetObject()) {
        ingests += fuzz::text_of(m.name) == "_ingest";
    }
    FUZZ_CHECK(ingests == 1, "the element has not exactly one `_ingest`");
    FUZZ_CHECK(fuzz::text_of((dom.MemberEnd() - 1)->name) == "_ingest", "`_ingest` is not the last member");
    check_ingest((dom.MemberEnd() - 1)->value, in.fields);

    // The client's bytes intact: element = kept[0, p) + ingest + kept[p, end).
    const size_t removed = batch.removed_end - batch.removed_begin;
    std::string kept = std::string(document.substr(0, batch.removed_begin)) +
                       std::string(document.substr(batch.removed_end));
    size_t p = batch.insert_at >= batch.removed_end ? batch.insert_at - removed : batch.insert_at;
    FUZZ_CHECK(element == kept.substr(0, p) + ingest + kept.substr(p),
               "the element minus `_ingest` is not the document minus the removed range");

    // What was removed is the client's `_ingest`, and only that: what is
    // kept is a valid batch without one, enriched at the same place.
    rapidjson::Document client;
    FUZZ_CHECK(fuzz::parse_strict(document, client), "a valid batch is not strict JSON");
    check_removed(document, batch, client);
    ValidatedBatch again = validate_batch(kept, limits);
    FUZZ_CHECK(again.valid && again.session_id == batch.session_id, "the document minus `_ingest` is not valid");
    FUZZ_CHECK(again.removed_begin == again.removed_end, "the document minus `_ingest` still has one");
    FUZZ_CHECK(again.insert_at == p, "the document minus `_ingest` is enriched elsewhere");
    return 0;
}
