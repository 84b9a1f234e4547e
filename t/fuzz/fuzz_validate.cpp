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
//     the answer for a batch valid under both.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "batch_checks.h"
#include "batch_validator.h"
#include "fuzz_common.h"

using recording::Outcome;
using recording::validate_batch;
using recording::ValidatedBatch;
using recording::ValidationLimits;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view document(reinterpret_cast<const char*>(data), size);

    const ValidationLimits defaults;
    ValidatedBatch full = validate_batch(document, defaults);
    fuzz::check_answer(document, full);
    if (full.valid) {
        fuzz::check_valid_batch(document, full, defaults);
    }

    fuzz::Rng rng(data, size);
    ValidationLimits small;
    small.max_events = 1 + rng.upto(3);
    small.max_depth = 3 + static_cast<unsigned>(rng.upto(2));
    ValidatedBatch limited = validate_batch(document, small);
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
