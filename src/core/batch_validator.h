// Validating a decoded batch in one pass, and learning the byte offsets that
// enrichment needs to add `_ingest` without re-serializing the document.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "outcome.h"

namespace recording {

struct ValidationLimits {
    size_t max_events = 10000;
    unsigned max_depth = 128;  // nesting levels; the root object is level 1
};

struct ValidatedBatch {
    bool valid = false;
    Outcome error = Outcome::invalid_json;  // meaningful when !valid

    std::string session_id;  // unescaped

    // Enrichment: the client's `_ingest` member (with one separating comma)
    // occupies [removed_begin, removed_end), empty when there is none; the
    // new member goes at insert_at, just after the last member kept.
    size_t removed_begin = 0;
    size_t removed_end = 0;
    size_t insert_at = 0;
};

// Checks the document against CONTRACT.md's body rules, in the contract's
// order: JSON (strict RFC 8259, valid UTF-8, an object, no duplicate keys at
// the top level or in an event, depth), session_id, seq, events. Nothing
// outside `document` is read.
//
// Two validators give that answer. A simdjson DOM pass answers for the
// common case, a valid batch without a client `_ingest`; every other
// document (refused, carrying `_ingest`, or anything the simdjson pass is
// not sure about) gets the RapidJSON validator's answer. Both are exposed
// below for the differential tests; validate_batch is what callers use.
ValidatedBatch validate_batch(std::string_view document, const ValidationLimits& limits);

// The RapidJSON SAX validator: the reference answer for every document.
ValidatedBatch validate_batch_reference(std::string_view document, const ValidationLimits& limits);

// The simdjson pass alone. Returns true, with `out` set, only for a valid
// batch whose answer it is sure matches validate_batch_reference's; returns
// false ("ask the reference") otherwise, leaving `out` unspecified.
bool validate_batch_fast(std::string_view document, const ValidationLimits& limits, ValidatedBatch& out);

// The work this thread's validations have done so far to refuse duplicate
// keys: keys compared, hash slots probed, buckets walked, entries moved by a
// rehash. A count, not a time, so that a test can bound the validators'
// growth on any machine (linear in the keys, not quadratic).
size_t key_check_steps() noexcept;

}  // namespace recording
