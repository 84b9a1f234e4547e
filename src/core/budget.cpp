#include "budget.h"

#include <cstdio>

#include "redis_protocol.h"

namespace recording {

namespace {

std::optional<uint64_t> parse_whole(std::string_view text) noexcept
{
    if (text.empty() || text.size() > 18) {
        return std::nullopt;
    }
    uint64_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        value = value * 10 + static_cast<uint64_t>(c - '0');
    }
    return value;
}

// The Lua script of format_budget_check. KEYS: decisions, admitted,
// refused; ARGV: session id, sessions allowed now, the keys' TTL.
constexpr std::string_view kBudgetScript =
    "local d = redis.call('HGET', KEYS[1], ARGV[1]) "
    "if d then return tonumber(d) end "
    "local n = tonumber(redis.call('GET', KEYS[2]) or '0') "
    "local counter = KEYS[3] "
    "local admit = 0 "
    "if n < tonumber(ARGV[2]) then admit = 1 counter = KEYS[2] end "
    "redis.call('HSET', KEYS[1], ARGV[1], admit) "
    "redis.call('EXPIRE', KEYS[1], ARGV[3]) "
    "redis.call('INCR', counter) "
    "redis.call('EXPIRE', counter, ARGV[3]) "
    "return admit";

}  // namespace

std::optional<DailyBudget> parse_daily_budget(std::optional<std::string_view> sessions,
                                              std::optional<std::string_view> pace, bool *unreadable)
{
    *unreadable = false;
    if (!sessions) {
        return std::nullopt;
    }
    std::optional<uint64_t> n = parse_whole(*sessions);
    if (!n) {
        *unreadable = true;
        return std::nullopt;
    }
    return DailyBudget{*n, pace && *pace == "even"};
}

int64_t utc_day(int64_t now_ms) noexcept
{
    int64_t day = now_ms / kDayMs;
    return now_ms % kDayMs < 0 ? day - 1 : day;
}

int64_t seconds_to_next_utc_midnight(int64_t now_ms) noexcept
{
    int64_t left_ms = (utc_day(now_ms) + 1) * kDayMs - now_ms;
    int64_t seconds = (left_ms + 999) / 1000;
    return seconds < 1 ? 1 : seconds;
}

uint64_t sessions_allowed_now(const DailyBudget &budget, int64_t now_ms) noexcept
{
    if (!budget.pace_even) {
        return budget.sessions;
    }
    auto into_day = static_cast<uint64_t>(now_ms - utc_day(now_ms) * kDayMs);
    // sessions * into_day / day without the product overflowing: budgets
    // parse up to 10^18, the day is 8.64e7 ms.
    constexpr auto day = static_cast<uint64_t>(kDayMs);
    uint64_t share = budget.sessions / day * into_day + budget.sessions % day * into_day / day;
    uint64_t burst = (budget.sessions * 5 + 99) / 100;
    uint64_t allowed = share + burst;
    return allowed < budget.sessions ? allowed : budget.sessions;
}

std::string civil_date(int64_t day)
{
    // Howard Hinnant's days-to-civil algorithm, in the proleptic Gregorian calendar.
    int64_t z = day + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
    char out[64];  // room for any year the arithmetic can give
    std::snprintf(out, sizeof(out), "%04lld-%02lld-%02lld", static_cast<long long>(y),
                  static_cast<long long>(m), static_cast<long long>(d));
    return out;
}

BudgetKeys budget_keys(std::string_view site_id, int64_t day)
{
    std::string prefix = "recording:budget:{";
    prefix.append(site_id);
    prefix += "}:";
    prefix += civil_date(day);
    return {prefix + ":sessions", prefix + ":admitted", prefix + ":refused"};
}

std::string format_budget_check(const BudgetKeys &keys, std::string_view session_id, uint64_t allowed)
{
    std::string allowed_text = std::to_string(allowed);
    std::string ttl = std::to_string(kBudgetKeyTtlSeconds);
    return format_command({"EVAL", kBudgetScript, "3", keys.decisions, keys.admitted, keys.refused,
                           session_id, allowed_text, ttl});
}

void BudgetDecisions::make_key(std::string &out, std::string_view scope, std::string_view site_id,
                               std::string_view session_id)
{
    out.assign(scope);
    out += '/';
    out.append(site_id);
    out += '/';
    out.append(session_id);
}

void BudgetDecisions::enter_day(int64_t day)
{
    if (day != day_) {
        decisions_.clear();
        day_ = day;
    }
}

std::optional<bool> BudgetDecisions::find(std::string_view scope, std::string_view site_id,
                                          std::string_view session_id, int64_t day)
{
    enter_day(day);
    make_key(scratch_, scope, site_id, session_id);
    auto it = decisions_.find(scratch_);
    if (it == decisions_.end()) {
        return std::nullopt;
    }
    return it->second;
}

void BudgetDecisions::remember(std::string_view scope, std::string_view site_id, std::string_view session_id,
                               int64_t day, bool admitted)
{
    // A reply to a question of yesterday, come after midnight: today's
    // memory stays.
    if (day < day_) {
        return;
    }
    enter_day(day);
    if (decisions_.size() >= capacity_) {
        decisions_.clear();
    }
    make_key(scratch_, scope, site_id, session_id);
    decisions_[scratch_] = admitted;
}

}  // namespace recording
