// What the two batch validators share (batch_validator_reference.cpp, the
// RapidJSON SAX pass; batch_validator_fast.cpp, the simdjson pass): the
// contract's rules on a member's value, the members they tell apart, the
// levels they sit at, and where a member's value ends. Internal to the
// validators: callers use batch_validator.h.
#pragma once

#include <cstddef>
#include <string_view>

namespace recording::batch_rules {

// An event's `type`: an integer 0..kMaxEventType.
constexpr int kMaxEventType = 6;

// `session_id`: 1..64 characters of [A-Za-z0-9_-].
bool is_valid_session_id(std::string_view id) noexcept;

// A finite number without a fraction (`seq`, an event's `type`).
bool is_whole(double value) noexcept;

// The top-level members the contract names.
enum class TopKey { other, session_id, seq, events, ingest };
TopKey classify_top_key(std::string_view key) noexcept;

// Nesting levels as the handler counts them: the root object's members are
// at level 1, the events array's elements at level 2, an event's members at
// level 3.
constexpr unsigned kTopLevel = 1;
constexpr unsigned kEventsLevel = 2;
constexpr unsigned kEventLevel = 3;

// Where a member's value ends: at `next` (the next key or the closing brace),
// back over white space and the comma between them.
size_t end_before(std::string_view document, size_t next) noexcept;

// Adds one validation's work against duplicate keys to key_check_steps().
void count_key_check_steps(size_t steps) noexcept;

}  // namespace recording::batch_rules
