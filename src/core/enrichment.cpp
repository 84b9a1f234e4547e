#include "enrichment.h"

namespace recording {

namespace {

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

void append_escaped_ascii(std::string& out, char c)
{
    static const char hex[] = "0123456789abcdef";
    switch (c) {
    case '"': out += "\\\""; return;
    case '\\': out += "\\\\"; return;
    case '\b': out += "\\b"; return;
    case '\f': out += "\\f"; return;
    case '\n': out += "\\n"; return;
    case '\r': out += "\\r"; return;
    case '\t': out += "\\t"; return;
    default:
        break;
    }
    if (static_cast<unsigned char>(c) < 0x20) {
        out += "\\u00";
        out += hex[(c >> 4) & 0xF];
        out += hex[c & 0xF];
        return;
    }
    out += c;
}

// The length of the well-formed UTF-8 sequence starting at s[i] (Unicode
// Table 3-7), or 0 with `*bad_prefix` set to the length of the ill-formed
// part to replace.
size_t utf8_sequence_length(std::string_view s, size_t i, size_t* bad_prefix) noexcept
{
    unsigned char lead = static_cast<unsigned char>(s[i]);
    size_t trailing;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;

    if (lead >= 0xC2 && lead <= 0xDF) {
        trailing = 1;
    } else if (lead == 0xE0) {
        trailing = 2, low = 0xA0;
    } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
        trailing = 2;
    } else if (lead == 0xED) {
        trailing = 2, high = 0x9F;  // no surrogates
    } else if (lead == 0xF0) {
        trailing = 3, low = 0x90;
    } else if (lead >= 0xF1 && lead <= 0xF3) {
        trailing = 3;
    } else if (lead == 0xF4) {
        trailing = 3, high = 0x8F;  // nothing above U+10FFFF
    } else {
        *bad_prefix = 1;  // continuation byte, overlong lead or F5..FF
        return 0;
    }

    size_t j = i + 1;
    for (size_t k = 0; k < trailing; k++, j++) {
        if (j >= s.size()) {
            *bad_prefix = j - i;
            return 0;
        }
        unsigned char b = static_cast<unsigned char>(s[j]);
        if (b < low || b > high) {
            *bad_prefix = j - i;
            return 0;
        }
        low = 0x80;
        high = 0xBF;
    }
    return j - i;
}

void append_integer(std::string& out, uint64_t value)
{
    char digits[24];
    size_t n = 0;
    do {
        digits[n++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0) {
        out += digits[--n];
    }
}

void append_optional_string(std::string& out, std::optional<std::string_view> value)
{
    if (value) {
        append_json_string(out, *value);
    } else {
        out += "null";
    }
}

}  // namespace

void append_json_string(std::string& out, std::string_view bytes)
{
    out += '"';
    size_t i = 0;
    while (i < bytes.size()) {
        if (static_cast<unsigned char>(bytes[i]) < 0x80) {
            append_escaped_ascii(out, bytes[i]);
            i++;
            continue;
        }
        size_t bad = 0;
        size_t length = utf8_sequence_length(bytes, i, &bad);
        if (length != 0) {
            out.append(bytes.data() + i, length);
            i += length;
        } else {
            out += kReplacementCharacter;
            i += bad;
        }
    }
    out += '"';
}

std::string ingest_member(const IngestFields& fields)
{
    uint64_t site_id = 0;
    for (char digit : fields.site_id) {
        site_id = site_id * 10 + static_cast<uint64_t>(digit - '0');
    }

    std::string out;
    out.reserve(160 + fields.ip.size() + (fields.user_agent ? fields.user_agent->size() : 0));
    out += R"(,"_ingest":{"site_id":)";
    append_integer(out, site_id);
    out += R"(,"received_at":)";
    if (fields.received_at_ms < 0) {
        out += '-';
        append_integer(out, static_cast<uint64_t>(-(fields.received_at_ms + 1)) + 1);
    } else {
        append_integer(out, static_cast<uint64_t>(fields.received_at_ms));
    }
    out += R"(,"ip":)";
    append_json_string(out, fields.ip);
    out += R"(,"user_agent":)";
    append_optional_string(out, fields.user_agent);
    out += R"(,"country":)";
    bool has_country = fields.country && !fields.country->empty();
    append_optional_string(out, has_country ? fields.country : std::nullopt);
    out += R"(,"request_id":)";
    append_json_string(out, fields.request_id);
    out += "}";
    return out;
}

QueueElement::QueueElement(std::string_view document, const ValidatedBatch& batch, std::string_view ingest)
{
    // Copies document[from, to) without the removed range, which lies either
    // wholly inside it or wholly outside.
    auto copy_range = [&](size_t from, size_t to) {
        size_t begin = batch.removed_begin;
        size_t end = batch.removed_end;
        if (begin == end || end <= from || begin >= to) {
            add(document.substr(from, to - from));
            return;
        }
        add(document.substr(from, begin - from));
        add(document.substr(end, to - end));
    };
    copy_range(0, batch.insert_at);
    add(ingest);
    copy_range(batch.insert_at, document.size());
}

void QueueElement::add(std::string_view slice) noexcept
{
    if (slice.empty()) {
        return;
    }
    slices_[count_++] = slice;
    size_ += slice.size();
}

void QueueElement::append_to(std::string& out) const
{
    for (size_t i = 0; i < count_; i++) {
        out.append(slices_[i]);
    }
}

std::string QueueElement::str() const
{
    std::string out;
    out.reserve(size_);
    append_to(out);
    return out;
}

}  // namespace recording
