#include "batch_validator.h"

#include <rapidjson/reader.h>
#include <rapidjson/stream.h>

// libsimdjson-dev is built with threads (its pkg-config Cflags say so), and
// that changes dom::parser's layout: the nginx `config` build, which does not
// read pkg-config, must see the same definition.
#ifndef SIMDJSON_THREADS_ENABLED
#define SIMDJSON_THREADS_ENABLED 1
#endif
#include <simdjson.h>

#include <cassert>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <unordered_set>
#include <vector>

namespace recording {

namespace {

// What key_check_steps() reports: added to once per validation.
thread_local size_t key_check_steps_total = 0;

// RapidJSON's input: the document's bytes and nothing after them. (Its own
// StringStream reads up to a NUL, and 1.1.0's UTF-8 validation takes the
// continuation bytes of a truncated sequence without looking for one.)
class DocumentStream {
public:
    using Ch = char;

    explicit DocumentStream(std::string_view document) noexcept
        : begin_(document.data()), current_(begin_), end_(begin_ + document.size())
    {
    }

    Ch Peek() const noexcept { return current_ < end_ ? *current_ : '\0'; }
    Ch Take() noexcept { return current_ < end_ ? *current_++ : '\0'; }
    size_t Tell() const noexcept { return static_cast<size_t>(current_ - begin_); }

    // Output is never asked of an input stream without kParseInsituFlag.
    Ch* PutBegin() { assert(false); return nullptr; }
    void Put(Ch) { assert(false); }
    void Flush() { assert(false); }
    size_t PutEnd(Ch*) { assert(false); return 0; }

private:
    const char* begin_;
    const char* current_;
    const char* end_;
};

}  // namespace
}  // namespace recording

namespace rapidjson {
// Parse strings and numbers on a copy of the stream, as for StringStream:
// the offsets below rely on where that leaves Tell() during callbacks.
template <>
struct StreamTraits<recording::DocumentStream> {
    enum { copyOptimization = 1 };
};
}  // namespace rapidjson

namespace recording {

namespace {

constexpr size_t kMaxSessionIdLength = 64;
constexpr int kMaxEventType = 6;

bool is_session_id_char(char c) noexcept
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
}

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

// RapidJSON 1.1.0 rejects an unpaired high surrogate escape but turns an
// unpaired low one (\uDC00) into the bytes ED B0 80, which are not UTF-8.
// Input bytes are validated, so such a sequence can only come from an escape.
bool has_lone_surrogate(const char* s, size_t n) noexcept
{
    const char* end = s + n;
    while (const void* hit = std::memchr(s, 0xED, static_cast<size_t>(end - s))) {
        const char* p = static_cast<const char*>(hit);
        if (p + 1 < end && static_cast<unsigned char>(p[1]) >= 0xA0) {
            return true;
        }
        s = p + 1;
    }
    return false;
}

// The keys of one object, to refuse duplicates. Objects are small in
// practice; a large one switches to hashing so that a body of a million keys
// costs linear time. The work it does (keys compared, buckets walked, nodes
// moved) is added to `steps`, so that tests can bound it by counting.
class KeySet {
public:
    explicit KeySet(size_t& steps) noexcept : steps_(steps) {}

    void clear()
    {
        few_.clear();
        // clear() walks every bucket, however few keys are left: after one
        // huge object, each of the next objects would pay for it.
        steps_ += many_.bucket_count();
        if (many_.bucket_count() > kFew * 4) {
            many_ = std::unordered_set<std::string>();
        } else {
            many_.clear();
        }
    }

    // Returns false when the key was there already.
    bool insert(std::string_view key)
    {
        if (!many_.empty()) {
            return insert_hashed(key);
        }
        for (const auto& seen : few_) {
            steps_++;
            if (seen == key) {
                return false;
            }
        }
        if (few_.size() < kFew) {
            few_.emplace_back(key);
            return true;
        }
        steps_ += few_.size();
        many_.insert(few_.begin(), few_.end());
        few_.clear();
        return insert_hashed(key);
    }

private:
    bool insert_hashed(std::string_view key)
    {
        // The keys the lookup compares with, and a rehash's moves.
        std::string owned(key);
        size_t buckets = many_.bucket_count();
        steps_ += 1 + many_.bucket_size(many_.bucket(owned));
        bool inserted = many_.insert(std::move(owned)).second;
        if (many_.bucket_count() != buckets) {
            steps_ += many_.size() + many_.bucket_count();
        }
        return inserted;
    }

    static constexpr size_t kFew = 16;
    size_t& steps_;
    std::vector<std::string> few_;
    std::unordered_set<std::string> many_;
};

enum class TopKey { other, session_id, seq, events, ingest };
enum class EventKey { other, type, timestamp };
enum class ValueKind { object, array, string, number, other };

TopKey classify_top_key(std::string_view key) noexcept
{
    if (key == "session_id") return TopKey::session_id;
    if (key == "seq") return TopKey::seq;
    if (key == "events") return TopKey::events;
    if (key == "_ingest") return TopKey::ingest;
    return TopKey::other;
}

EventKey classify_event_key(std::string_view key) noexcept
{
    if (key == "type") return EventKey::type;
    if (key == "timestamp") return EventKey::timestamp;
    return EventKey::other;
}

// Nesting levels as the handler counts them: the root object's members are
// at level 1, the events array's elements at level 2, an event's members at
// level 3.
constexpr unsigned kTopLevel = 1;
constexpr unsigned kEventsLevel = 2;
constexpr unsigned kEventLevel = 3;

// Where a member's value ends: at `next` (the next key or the closing brace),
// back over white space and the comma between them.
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

// The SAX handler. Offsets come from the stream's position, which RapidJSON
// 1.1.0 (iterative parser, stream copy optimization) leaves at the first byte of a key
// while calling Key(), and at the bracket while calling EndObject(); values
// are parsed on a copy of the stream, so their ends are found from what
// follows them instead.
class BatchHandler : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, BatchHandler> {
public:
    BatchHandler(std::string_view document, const DocumentStream& stream,
                 const ValidationLimits& limits, ValidatedBatch& result)
        : document_(document), stream_(stream), limits_(limits), result_(result)
    {
    }

    bool Null() { return scalar(ValueKind::other, 0); }
    bool Bool(bool) { return scalar(ValueKind::other, 0); }
    bool Int(int v) { return scalar(ValueKind::number, v); }
    bool Uint(unsigned v) { return scalar(ValueKind::number, v); }
    bool Int64(int64_t v) { return scalar(ValueKind::number, static_cast<double>(v)); }
    bool Uint64(uint64_t v) { return scalar(ValueKind::number, static_cast<double>(v)); }
    // RapidJSON's fast path reads 2e308 as infinity rather than failing as
    // it does for 1e400; neither is a number a storage worker can read.
    bool Double(double v) { return std::isfinite(v) && scalar(ValueKind::number, v); }

    bool String(const char* s, rapidjson::SizeType n, bool)
    {
        if (has_lone_surrogate(s, n)) {
            return false;
        }
        std::string_view text(s, n);
        if (depth_ == kTopLevel && top_key_ == TopKey::session_id && is_valid_session_id(text)) {
            result_.session_id.assign(text);
            session_id_ok_ = true;
        }
        return scalar(ValueKind::string, 0);
    }

    bool Key(const char* s, rapidjson::SizeType n, bool)
    {
        if (has_lone_surrogate(s, n)) {
            return false;
        }
        std::string_view key(s, n);
        if (depth_ == kTopLevel) {
            return top_level_key(key);
        }
        if (depth_ == kEventLevel && in_event_) {
            if (!event_keys_.insert(key)) {
                return false;
            }
            event_key_ = classify_event_key(key);
        }
        return true;
    }

    bool StartObject() { return start_container(ValueKind::object); }
    bool StartArray() { return start_container(ValueKind::array); }
    bool EndObject(rapidjson::SizeType) { return end_container(); }
    bool EndArray(rapidjson::SizeType) { return end_container(); }

    // The verdict on a document RapidJSON accepted as a whole.
    size_t key_steps() const noexcept { return key_steps_; }

    void conclude()
    {
        result_.valid = false;
        if (!session_id_ok_) {
            result_.error = Outcome::invalid_session_id;
        } else if (!seq_ok_) {
            result_.error = Outcome::invalid_seq;
        } else if (!events_seen_ || !events_ok_ || event_count_ == 0) {
            result_.error = Outcome::invalid_events;
        } else {
            result_.valid = true;
            locate_ingest();
        }
    }

private:
    bool top_level_key(std::string_view key)
    {
        if (!top_keys_.insert(key)) {
            return false;
        }
        size_t key_start = stream_.Tell();
        if (ingest_index_ + 1 == member_count_) {
            // The member before this one was `_ingest`.
            ingest_end_ = end_before(document_, key_start);
            after_ingest_key_ = key_start;
        }
        top_key_ = classify_top_key(key);
        if (top_key_ == TopKey::ingest) {
            ingest_index_ = member_count_;
            ingest_key_ = key_start;
            if (member_count_ > 0) {
                before_ingest_end_ = end_before(document_, key_start);
            }
        }
        member_count_++;
        return true;
    }

    void root_closed(size_t brace)
    {
        last_end_ = end_before(document_, brace);
        if (ingest_index_ + 1 == member_count_) {
            ingest_end_ = last_end_;
        }
    }

    // Where enrichment cuts and inserts; see ValidatedBatch.
    void locate_ingest()
    {
        result_.insert_at = last_end_;
        if (ingest_index_ == kNoIngest) {
            return;
        }
        bool ingest_is_last = ingest_index_ + 1 == member_count_;
        if (ingest_index_ == 0) {
            // Drop it with the comma after it, up to the next key.
            result_.removed_begin = ingest_key_;
            result_.removed_end = ingest_is_last ? ingest_end_ : after_ingest_key_;
        } else {
            // Drop it with the comma before it.
            result_.removed_begin = before_ingest_end_;
            result_.removed_end = ingest_end_;
            if (ingest_is_last) {
                result_.insert_at = before_ingest_end_;
            }
        }
    }

    // Applies the contract's field rules to a value that starts at the
    // current depth.
    bool begin_value(ValueKind kind, double number)
    {
        switch (depth_) {
        case 0:
            return kind == ValueKind::object;
        case kTopLevel:
            if (top_key_ == TopKey::seq) {
                seq_ok_ = kind == ValueKind::number && is_whole(number) && number >= 0;
            } else if (top_key_ == TopKey::events) {
                events_seen_ = true;
                events_ok_ = kind == ValueKind::array;
            }
            return true;
        case kEventsLevel:
            if (in_events_array_) {
                event_count_++;
                if (kind != ValueKind::object || event_count_ > limits_.max_events) {
                    events_ok_ = false;
                }
            }
            return true;
        case kEventLevel:
            if (in_event_) {
                if (event_key_ == EventKey::type) {
                    type_ok_ = kind == ValueKind::number && is_whole(number) && number >= 0 &&
                               number <= kMaxEventType;
                } else if (event_key_ == EventKey::timestamp) {
                    timestamp_ok_ = kind == ValueKind::number;
                }
            }
            return true;
        default:
            return true;
        }
    }

    bool scalar(ValueKind kind, double number)
    {
        return begin_value(kind, number);
    }

    bool start_container(ValueKind kind)
    {
        if (!begin_value(kind, 0)) {
            return false;
        }
        if (depth_ == kTopLevel && top_key_ == TopKey::events && kind == ValueKind::array) {
            in_events_array_ = true;
        } else if (depth_ == kEventsLevel && in_events_array_ && kind == ValueKind::object) {
            in_event_ = true;
            event_keys_.clear();
            event_key_ = EventKey::other;
            type_ok_ = false;
            timestamp_ok_ = false;
        }
        return ++depth_ <= limits_.max_depth;
    }

    bool end_container()
    {
        depth_--;
        if (depth_ == kEventsLevel && in_event_) {
            in_event_ = false;
            if (!type_ok_ || !timestamp_ok_) {
                events_ok_ = false;
            }
        } else if (depth_ == kTopLevel) {
            in_events_array_ = false;
        } else if (depth_ == 0) {
            root_closed(stream_.Tell());
        }
        return true;
    }

    std::string_view document_;
    const DocumentStream& stream_;
    const ValidationLimits& limits_;
    ValidatedBatch& result_;

    unsigned depth_ = 0;

    size_t key_steps_ = 0;  // before the key sets, which count into it
    KeySet top_keys_{key_steps_};
    TopKey top_key_ = TopKey::other;
    static constexpr size_t kNoIngest = static_cast<size_t>(-1);
    size_t member_count_ = 0;
    size_t ingest_index_ = kNoIngest;  // which member is the client's `_ingest`
    size_t ingest_key_ = 0;            // where its key starts
    size_t ingest_end_ = 0;            // where its value ends
    size_t before_ingest_end_ = 0;     // where the member before it ends
    size_t after_ingest_key_ = 0;      // where the member after it starts
    size_t last_end_ = 0;              // where the last member ends

    bool session_id_ok_ = false;
    bool seq_ok_ = false;
    bool events_seen_ = false;
    bool events_ok_ = false;
    bool in_events_array_ = false;
    size_t event_count_ = 0;

    bool in_event_ = false;
    KeySet event_keys_{key_steps_};
    EventKey event_key_ = EventKey::other;
    bool type_ok_ = false;
    bool timestamp_ok_ = false;
};

}  // namespace

ValidatedBatch validate_batch_reference(std::string_view document, const ValidationLimits& limits)
{
    ValidatedBatch result;
    DocumentStream stream(document);
    BatchHandler handler(document, stream, limits, result);
    rapidjson::Reader reader;

    constexpr unsigned kFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;
    bool parsed = !reader.Parse<kFlags>(stream, handler).IsError();
    key_check_steps_total += handler.key_steps();

    // RapidJSON takes a NUL byte for the end; anything after one is not JSON.
    if (!parsed || stream.Tell() != document.size()) {
        result.valid = false;
        result.error = Outcome::invalid_json;
        return result;
    }
    handler.conclude();
    return result;
}

// ---------------------------------------------------------------------------
// The simdjson fast path.
//
// simdjson's DOM parse checks what the SAX pass above checks of the JSON
// itself (strict RFC 8259, valid UTF-8, lone surrogate escapes, no trailing
// bytes, no NUL) several times faster: 17.8 against 56.5 us on a 9.6 KB batch
// in BENCHMARKS.md. It answers only when it is sure to give the reference's
// answer, and otherwise hands the document to the reference:
//   - anything simdjson refuses, including integers beyond 64 bits (which
//     RapidJSON reads as doubles) and 1e400;
//   - a number simdjson holds as a double that is zero or beyond 1e300:
//     RapidJSON refuses "0e400" (a written exponent above 308) and may round
//     a value close to DBL_MAX up to infinity, which it refuses, where
//     simdjson reads 0 and DBL_MAX;
//   - seq or an event's type written as a double (1.0, 1e0, 6.0): RapidJSON
//     without kParseFullPrecisionFlag is not always correctly rounded (it
//     reads 5e-324 as 0, a whole number), simdjson is;
//   - a container nested deeper than the limit: simdjson counts a scalar in
//     the deepest container as a level, so its own limit is set one higher
//     and the walk below applies the reference's count;
//   - a client `_ingest` (rare), whose removal offsets only the SAX pass
//     tracks;
//   - every contract failure, so that the error is the reference's.
// Integers are exact in both parsers, and compared as the reference does.

namespace {

// The walk below recurses once per level; deeper limits (the directive
// allows 100000) would risk the worker's stack, so they go to the reference,
// which is iterative.
constexpr unsigned kMaxFastDepth = 1000;

// Doubles that both parsers read as the same finite number, or near enough
// for the contract: no rule looks at a double's value except finiteness.
bool is_sure_double(double value) noexcept
{
    return value != 0 && std::fabs(value) < 1e300;
}

bool is_json_space(char c) noexcept
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// One parser and one padded buffer per thread (per nginx worker), reused:
// both grow to the largest document seen, so that a request allocates
// nothing once the worker has seen one as large. Together they take about 15
// bytes per byte of document (simdjson's tape is 8, its structural index 4),
// so the memory of a document beyond kRetainedDocumentSize is given back
// after it rather than kept for the worker's lifetime.
constexpr size_t kRetainedDocumentSize = 2 * 1024 * 1024;

class FastState {
public:
    simdjson::dom::parser parser;

    void release()
    {
        parser = simdjson::dom::parser();
        buffer_.reset();
        capacity_ = 0;
    }

    // simdjson reads up to SIMDJSON_PADDING bytes past the document; the
    // caller's buffer may end right after it, so the document is copied
    // (a memcpy costs about 0.2 us per 10 KB, against the parse's 15 us).
    const char* padded_copy(std::string_view document)
    {
        size_t needed = document.size() + simdjson::SIMDJSON_PADDING;
        if (needed > capacity_) {
            size_t capacity = std::max(needed, capacity_ * 2);
            buffer_.reset(new char[capacity]);
            capacity_ = capacity;
        }
        std::memcpy(buffer_.get(), document.data(), document.size());
        std::memset(buffer_.get() + document.size(), 0, simdjson::SIMDJSON_PADDING);
        return buffer_.get();
    }

private:
    std::unique_ptr<char[]> buffer_;
    size_t capacity_ = 0;
};

FastState& fast_state()
{
    thread_local FastState state;
    return state;
}

// The keys of one object, as views into the parser's string buffer (already
// unescaped). An array for the usual handful; beyond that an open-addressing
// hash table of views, which (unlike a node-based set) allocates nothing per
// key: a body of a million distinct keys is checked in about a tenth of the
// time std::unordered_set takes.
//
// Like KeySet, it adds its work (keys compared, slots probed or cleared) to
// `steps`.
class KeyViews {
public:
    explicit KeyViews(size_t& steps) noexcept : steps_(steps) {}

    // Returns false when the key was there already.
    bool insert(std::string_view key)
    {
        if (!table_.empty()) {
            return insert_hashed(key);
        }
        for (size_t i = 0; i < count_; i++) {
            steps_++;
            if (few_[i] == key) {
                return false;
            }
        }
        if (count_ < few_.size()) {
            few_[count_++] = key;
            return true;
        }
        grow();
        return insert_hashed(key);
    }

private:
    struct Slot {
        const char* data = nullptr;  // null: empty (a key's view never is)
        size_t size = 0;
    };

    bool insert_hashed(std::string_view key)
    {
        if ((count_ + 1) * 2 > table_.size()) {
            grow();
        }
        size_t mask = table_.size() - 1;
        for (size_t i = std::hash<std::string_view>()(key) & mask;; i = (i + 1) & mask) {
            steps_++;
            Slot& slot = table_[i];
            if (slot.data == nullptr) {
                slot = Slot{key.data(), key.size()};
                count_++;
                return true;
            }
            if (std::string_view(slot.data, slot.size) == key) {
                return false;
            }
        }
    }

    // Doubles the table (or starts it from the array), keeping the load
    // factor at most one half.
    void grow()
    {
        std::vector<Slot> old;
        old.swap(table_);
        table_.assign(old.empty() ? 64 : old.size() * 2, Slot());
        steps_ += table_.size();
        size_t mask = table_.size() - 1;
        auto place = [&](std::string_view key) {
            size_t i = std::hash<std::string_view>()(key) & mask;
            steps_++;
            while (table_[i].data != nullptr) {
                i = (i + 1) & mask;
                steps_++;
            }
            table_[i] = Slot{key.data(), key.size()};
        };
        if (old.empty()) {
            for (size_t i = 0; i < count_; i++) {
                place(few_[i]);
            }
        } else {
            for (const Slot& slot : old) {
                if (slot.data != nullptr) {
                    place(std::string_view(slot.data, slot.size));
                }
            }
        }
    }

    size_t& steps_;
    std::array<std::string_view, 16> few_;
    size_t count_ = 0;
    std::vector<Slot> table_;
};

using simdjson::dom::element;
using simdjson::dom::element_type;

// True when nothing in `value` could be judged differently by the reference:
// containers no deeper than the limit (`level` is the level `value` has if
// it is a container; the root is level 1), doubles that are sure.
bool is_plain(element value, unsigned level, unsigned max_depth)
{
    switch (value.type()) {
    case element_type::ARRAY: {
        if (level > max_depth) {
            return false;
        }
        // A copy: value_unsafe() returns a reference into the temporary
        // result, which a range-for would keep past its end.
        simdjson::dom::array children = value.get_array().value_unsafe();
        for (element child : children) {
            if (!is_plain(child, level + 1, max_depth)) {
                return false;
            }
        }
        return true;
    }
    case element_type::OBJECT: {
        if (level > max_depth) {
            return false;
        }
        simdjson::dom::object fields = value.get_object().value_unsafe();
        for (simdjson::dom::key_value_pair field : fields) {
            if (!is_plain(field.value, level + 1, max_depth)) {
                return false;
            }
        }
        return true;
    }
    case element_type::DOUBLE:
        return is_sure_double(value.get_double().value_unsafe());
    default:
        return true;
    }
}

// seq: an integer >= 0. Integers written as doubles go to the reference.
bool is_sure_seq(element value)
{
    switch (value.type()) {
    case element_type::INT64:
        return value.get_int64().value_unsafe() >= 0;
    case element_type::UINT64:  // only used above INT64_MAX
        return true;
    default:
        return false;
    }
}

bool is_sure_type(element value)
{
    if (value.type() != element_type::INT64) {
        return false;
    }
    int64_t type = value.get_int64().value_unsafe();
    return type >= 0 && type <= kMaxEventType;
}

bool is_sure_timestamp(element value)
{
    switch (value.type()) {
    case element_type::INT64:
    case element_type::UINT64:
        return true;
    case element_type::DOUBLE:
        return is_sure_double(value.get_double().value_unsafe());
    default:
        return false;
    }
}

// The events array, a top-level member's value (level 2): 1..max_events
// objects (level 3), each with one integer type 0..6 and one numeric
// timestamp, no duplicate keys, and plain members (level 4).
bool are_sure_events(element value, const ValidationLimits& limits, size_t& key_steps)
{
    simdjson::dom::array events;
    if (value.get_array().get(events) != simdjson::SUCCESS || limits.max_depth < kEventsLevel) {
        return false;
    }
    size_t count = 0;
    for (element item : events) {
        simdjson::dom::object event;
        if (++count > limits.max_events || item.get_object().get(event) != simdjson::SUCCESS ||
            limits.max_depth < kEventLevel) {
            return false;
        }
        KeyViews keys(key_steps);
        bool type_ok = false;
        bool timestamp_ok = false;
        for (simdjson::dom::key_value_pair field : event) {
            if (!keys.insert(field.key)) {
                return false;
            }
            if (field.key == "type") {
                type_ok = is_sure_type(field.value);
            } else if (field.key == "timestamp") {
                timestamp_ok = is_sure_timestamp(field.value);
            } else if (!is_plain(field.value, kEventLevel + 1, limits.max_depth)) {
                return false;
            }
        }
        if (!type_ok || !timestamp_ok) {
            return false;
        }
    }
    return count > 0;
}

}  // namespace

bool validate_batch_fast(std::string_view document, const ValidationLimits& limits, ValidatedBatch& out)
{
    if (document.empty() || limits.max_depth < kTopLevel || limits.max_depth > kMaxFastDepth) {
        return false;
    }
    FastState& state = fast_state();
    struct Release {
        FastState& state;
        bool large;
        ~Release()
        {
            if (large) {
                state.release();
            }
        }
    } release{state, document.size() > kRetainedDocumentSize};
    // The parser's own limit only needs to be high enough: is_plain applies
    // the reference's. It never shrinks, so locations with different limits
    // do not reallocate it in turn.
    size_t parser_depth = size_t{limits.max_depth} + 1;
    if (state.parser.max_depth() < parser_depth &&
        state.parser.allocate(std::max(document.size(), state.parser.capacity()), parser_depth) !=
            simdjson::SUCCESS) {
        return false;
    }
    const char* padded = state.padded_copy(document);

    element root;
    simdjson::dom::object members;
    if (state.parser.parse(padded, document.size(), false).get(root) != simdjson::SUCCESS ||
        root.get_object().get(members) != simdjson::SUCCESS) {
        return false;
    }

    // Counted on every way out, refusals included.
    struct CountKeySteps {
        size_t steps = 0;
        ~CountKeySteps() { key_check_steps_total += steps; }
    } counted;
    KeyViews keys(counted.steps);
    std::string_view session_id;
    bool session_id_ok = false;
    bool seq_ok = false;
    bool events_ok = false;
    for (simdjson::dom::key_value_pair field : members) {
        if (!keys.insert(field.key)) {
            return false;
        }
        switch (classify_top_key(field.key)) {
        case TopKey::session_id:
            session_id_ok = field.value.get_string().get(session_id) == simdjson::SUCCESS &&
                            is_valid_session_id(session_id);
            break;
        case TopKey::seq:
            seq_ok = is_sure_seq(field.value);
            break;
        case TopKey::events:
            events_ok = are_sure_events(field.value, limits, counted.steps);
            break;
        case TopKey::ingest:
            return false;
        case TopKey::other:
            if (!is_plain(field.value, kTopLevel + 1, limits.max_depth)) {
                return false;
            }
            break;
        }
    }
    if (!session_id_ok || !seq_ok || !events_ok) {
        return false;
    }

    // simdjson accepted an object followed by nothing but white space, so
    // the last other byte is the root's closing brace; the new member goes
    // after the last one, as the reference places it.
    size_t brace = document.size();
    while (is_json_space(document[brace - 1])) {
        brace--;
    }
    brace--;

    out = ValidatedBatch();
    out.valid = true;
    out.session_id.assign(session_id);
    out.insert_at = end_before(document, brace);
    return true;
}

size_t key_check_steps() noexcept
{
    return key_check_steps_total;
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
