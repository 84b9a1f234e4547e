// libFuzzer target: validate_batch() on arbitrary documents.
//
// The input is the decoded body. It is validated with the default limits
// and with small ones (1 to 4 events, 3 to 5 levels: the directives' low
// end), the buffer being exactly the input so that AddressSanitizer sees
// any read outside the string_view.
//
// Properties:
//   - an invalid batch carries one of the body errors;
//   - a valid one has a session_id of [A-Za-z0-9_-]{1,64}, and offsets
//     within the document: removed_begin <= removed_end <= size,
//     insert_at < size and not strictly inside the removed range;
//   - a valid batch is strict JSON in valid UTF-8 that RapidJSON's DOM
//     parser accepts, and meets the contract (session_id, seq, events,
//     unique keys, depth, event count), checked on that DOM;
//   - the removed range is empty exactly when the client sent `_ingest`;
//   - lowering the limits never turns an invalid batch valid, nor changes
//     the answer for a batch valid under both;
//   - differential: under both sets of limits, validate_batch gives exactly
//     the RapidJSON reference's answer (validate_batch_reference), and when
//     the simdjson fast path answers on its own (validate_batch_fast), its
//     answer is the reference's, field by field.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "batch_checks.h"
#include "batch_validator.h"
#include "fuzz_common.h"

using recording::Outcome;
using recording::validate_batch;
using recording::validate_batch_fast;
using recording::validate_batch_reference;
using recording::ValidatedBatch;
using recording::ValidationLimits;

namespace {

bool same(const ValidatedBatch& a, const ValidatedBatch& b)
{
    return a.valid == b.valid && a.error == b.error && a.session_id == b.session_id &&
           a.removed_begin == b.removed_begin && a.removed_end == b.removed_end && a.insert_at == b.insert_at;
}

void check_differential(std::string_view document, const ValidationLimits& limits, const ValidatedBatch& answer)
{
    ValidatedBatch reference = validate_batch_reference(document, limits);
    FUZZ_CHECK(same(answer, reference), "validate_batch differs from the RapidJSON reference");
    ValidatedBatch fast;
    if (validate_batch_fast(document, limits, fast)) {
        FUZZ_CHECK(reference.valid, "the simdjson path accepts what the reference refuses");
        FUZZ_CHECK(same(fast, reference), "the simdjson path's answer differs from the reference's");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view document(reinterpret_cast<const char*>(data), size);

    const ValidationLimits defaults;
    ValidatedBatch full = validate_batch(document, defaults);
    check_differential(document, defaults, full);
    fuzz::check_answer(document, full);
    if (full.valid) {
        fuzz::check_valid_batch(document, full, defaults);
    }

    fuzz::Rng rng(data, size);
    ValidationLimits small;
    small.max_events = 1 + rng.upto(3);
    small.max_depth = 3 + static_cast<unsigned>(rng.upto(2));
    ValidatedBatch limited = validate_batch(document, small);
    check_differential(document, small, limited);
    fuzz::check_answer(document, limited);
    if (limited.valid) {
        fuzz::check_valid_batch(document, limited, small);
        FUZZ_CHECK(full.valid, "valid under small limits but not under the defaults");
        FUZZ_CHECK(limited.session_id == full.session_id && limited.removed_begin == full.removed_begin &&
                       limited.removed_end == full.removed_end && limited.insert_at == full.insert_at,
                   "the limits changed the answer for a batch valid under both");
    }
    if (!full.valid && full.error == Outcome::invalid_json) {
        FUZZ_CHECK(!limited.valid && limited.error == Outcome::invalid_json,
                   "not JSON under the defaults, but JSON under small limits");
    }
    return 0;
}
