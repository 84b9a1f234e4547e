// The simdjson fast path: the validator that answers for the common case, a
// valid batch without a client `_ingest` (see batch_validator.h).
//
// simdjson's DOM parse checks what the reference's SAX pass
// (batch_validator_reference.cpp) checks of the JSON itself (strict RFC 8259,
// valid UTF-8, lone surrogate escapes, no trailing bytes, no NUL) several
// times faster: 17.8 against 56.5 us on a 9.6 KB batch
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

#include "batch_validator.h"

// Both builds take SIMDJSON_THREADS_ENABLED from simdjson's pkg-config
// Cflags (CMake's pkg_check_modules, nginx's `config`): it changes
// dom::parser's layout, so it must match the library.
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "batch_validator_rules.h"

namespace recording {

namespace {

// The rules both validators apply (batch_validator_rules.h).
using namespace batch_rules;

// simdjson's parser keeps state per level of its limit, which never shrinks
// (below): deeper limits (the directive allows 100000) go to the reference,
// so that one location's odd limit does not grow every worker's parser.
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
// Like the reference's KeySet, it adds its work (keys compared, slots probed
// or cleared) to `steps`.
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

// True when nothing in the parsed document could be judged differently by
// the reference: containers no deeper than the limit (the root is level 1)
// and doubles that are sure. One pass over simdjson's tape, the flat form of
// the document it builds (a word per value, in document order; a number's
// value in the word after it). A recursive walk of the DOM was 10% of a
// snapshot's CPU in the worker (`scripts/bench --profile-only`); with this
// pass, validating beyond the parse takes 95 us instead of 139 on the 721 KB
// snapshot (bench_parts).
// The tape is a public member marked private (dom::document::tape); its
// layout is simdjson's tape format, fixed since 0.3 and documented in its
// doc/tape.md, and the unit tests and fuzz_validate check this answer
// against the reference's on every document they have.
bool is_plain_document(const simdjson::dom::document& doc, unsigned max_depth)
{
    constexpr uint64_t kPayload = (uint64_t{1} << 56) - 1;
    const uint64_t* tape = doc.tape.get();
    size_t root_end = static_cast<size_t>(tape[0] & kPayload);  // the closing root word
    unsigned depth = 0;
    for (size_t i = 1; i < root_end; i++) {
        switch (static_cast<char>(tape[i] >> 56)) {
        case '{':
        case '[':
            if (++depth > max_depth) {
                return false;
            }
            break;
        case '}':
        case ']':
            depth--;
            break;
        case 'l':
        case 'u':
            i++;  // the integer's word
            break;
        case 'd': {
            double value;
            std::memcpy(&value, &tape[++i], sizeof value);
            if (!is_sure_double(value)) {
                return false;
            }
            break;
        }
        default:  // strings, true, false, null: one word
            break;
        }
    }
    return true;
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
// timestamp, no duplicate keys (the rest of each event is is_plain_document's).
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
    // The parser's own limit only needs to be high enough: is_plain_document applies
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
        root.get_object().get(members) != simdjson::SUCCESS ||
        !is_plain_document(state.parser.doc, limits.max_depth)) {
        return false;
    }

    // Counted on every way out, refusals included.
    struct CountKeySteps {
        size_t steps = 0;
        ~CountKeySteps() { count_key_check_steps(steps); }
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

}  // namespace recording
