// Per-site daily session budgets (the site hash's `daily_sessions` and
// `daily_sessions_pace`): the arithmetic of the UTC day and of pacing, the
// Redis keys and script that decide and count in one atomic step, and the
// worker's memory of decisions, so that an admitted session's later batches
// cost no Redis round trip.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace recording {

struct DailyBudget {
    uint64_t sessions = 0;
    bool pace_even = false;  // admit no faster than the day's share, plus a burst
};

// `daily_sessions`: a whole decimal number >= 0. Nullopt when absent or when
// it does not parse (then `*unreadable` is set: no budget, and a warning).
std::optional<DailyBudget> parse_daily_budget(std::optional<std::string_view> sessions,
                                              std::optional<std::string_view> pace, bool *unreadable);

constexpr int64_t kDayMs = 86400000;

// Days since 1970-01-01, UTC, of a time in milliseconds since the epoch.
int64_t utc_day(int64_t now_ms) noexcept;

// Whole seconds until the next UTC midnight, at least 1: Retry-After.
int64_t seconds_to_next_utc_midnight(int64_t now_ms) noexcept;

// How many sessions the day may have admitted by now: the whole budget, or
// with even pacing the day's elapsed share of it plus a burst of 5% (rounded
// up), never more than the budget.
uint64_t sessions_allowed_now(const DailyBudget &budget, int64_t now_ms) noexcept;

// "YYYY-MM-DD" of a day number.
std::string civil_date(int64_t day);

// The day's keys of a site. The site is their hash tag: in a cluster every
// day's keys of a site share a slot, so the script may touch them all and a
// session's questions around midnight go to one master, in order.
struct BudgetKeys {
    std::string decisions;  // hash: session id -> 1 admitted, 0 refused
    std::string admitted;   // the day's count of admitted sessions
    std::string refused;    // the day's count of refused sessions
};
BudgetKeys budget_keys(std::string_view site_id, int64_t day);

// Keys live for two days: the day, and the next for who reads yesterday's.
constexpr int64_t kBudgetKeyTtlSeconds = 48 * 3600;

// EVAL of the script that answers 1 (admitted) or 0 (refused) for a session:
// its decision of the day if it has one, else admitted while the admitted
// count is below `allowed`, and the decision kept and counted.
std::string format_budget_check(const BudgetKeys &keys, std::string_view session_id, uint64_t allowed);

// What this worker knows of the day's decisions. Forgotten when the day
// changes, and all at once when it grows past `capacity` (Redis still
// knows: a forgotten session costs one round trip, not a wrong answer).
class BudgetDecisions {
public:
    explicit BudgetDecisions(size_t capacity = 100000) : capacity_(capacity) {}

    // `scope` tells apart sites of the same id in two Redis (or databases).
    std::optional<bool> find(std::string_view scope, std::string_view site_id, std::string_view session_id,
                             int64_t day);
    void remember(std::string_view scope, std::string_view site_id, std::string_view session_id, int64_t day,
                  bool admitted);
    size_t size() const noexcept { return decisions_.size(); }

private:
    static void make_key(std::string &out, std::string_view scope, std::string_view site_id,
                         std::string_view session_id);
    void enter_day(int64_t day);

    size_t capacity_;
    int64_t day_ = -1;
    std::unordered_map<std::string, bool> decisions_;
    std::string scratch_;  // the lookup key, reused: no allocation per batch
};

}  // namespace recording
