// A site's settings, read from the Redis hash recording:site:<id>.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "budget.h"

namespace recording {

enum class SiteStatus : uint8_t { unknown, disabled, enabled };

struct SiteSettings {
    SiteStatus status = SiteStatus::unknown;
    double sample_rate = 1.0;  // in [0, 1]; meaningful when enabled
    std::optional<DailyBudget> budget;  // `daily_sessions`: none, no limit
    bool budget_unreadable = false;     // `daily_sessions` did not parse (warned once)
};

// A site id as the contract's URI carries it: 1 to 10 decimal digits.
bool is_valid_site_id(std::string_view site_id) noexcept;

// The hash fields `enabled` and `sample_rate` (nullopt: missing), read as
// CONTRACT.md says: neither field means unknown, enabled only for "1"; and
// the budget's `daily_sessions` and `daily_sessions_pace`.
SiteSettings site_settings_from_fields(std::optional<std::string_view> enabled,
                                       std::optional<std::string_view> sample_rate,
                                       std::optional<std::string_view> daily_sessions = std::nullopt,
                                       std::optional<std::string_view> daily_sessions_pace = std::nullopt);

// The rate the legacy layer would sample with: Lua's tonumber() (1 when
// missing or unparseable), clamped into [0, 1], then passed through
// tostring(), which keeps 14 significant digits.
double parse_sample_rate(std::optional<std::string_view> text);

}  // namespace recording
