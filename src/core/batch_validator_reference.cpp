// The reference validator: one RapidJSON SAX pass over the document, which
// gives the contract's answer for every document and the offsets enrichment
// needs around a client's `_ingest`. batch_validator_fast.cpp answers first
// for the common case; see batch_validator.h.

#include "batch_validator.h"

#include <rapidjson/reader.h>
#include <rapidjson/stream.h>

#include <cassert>

#include <cmath>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "batch_validator_rules.h"

namespace recording {

namespace {

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

// The rules both validators apply (batch_validator_rules.h).
using namespace batch_rules;

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

enum class EventKey { other, type, timestamp };
enum class ValueKind { object, array, string, number, other };

EventKey classify_event_key(std::string_view key) noexcept
{
    if (key == "type") return EventKey::type;
    if (key == "timestamp") return EventKey::timestamp;
    return EventKey::other;
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
    count_key_check_steps(handler.key_steps());

    // RapidJSON takes a NUL byte for the end; anything after one is not JSON.
    if (!parsed || stream.Tell() != document.size()) {
        result.valid = false;
        result.error = Outcome::invalid_json;
        return result;
    }
    handler.conclude();
    return result;
}

}  // namespace recording
