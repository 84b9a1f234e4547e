#include "site_settings.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace recording {

namespace {

bool is_lua_space(char c) noexcept
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// Lua's tonumber() on a string: a whole decimal or hexadecimal number,
// optionally surrounded by white space.
std::optional<double> lua_tonumber(std::string_view text)
{
    std::string copy(text);  // strtod needs a terminated string
    const char* begin = copy.c_str();
    char* end = nullptr;
    double value = std::strtod(begin, &end);
    if (end == begin) {
        return std::nullopt;
    }
    while (*end != '\0' && is_lua_space(*end)) {
        end++;
    }
    if (end != begin + copy.size()) {
        return std::nullopt;
    }
    return value;
}

}  // namespace

bool is_valid_site_id(std::string_view site_id) noexcept
{
    if (site_id.empty() || site_id.size() > 10) {
        return false;
    }
    for (char c : site_id) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    return true;
}

double parse_sample_rate(std::optional<std::string_view> text)
{
    std::optional<double> parsed = text ? lua_tonumber(*text) : std::nullopt;
    if (!parsed || std::isnan(*parsed)) {
        return 1.0;
    }
    double rate = std::fmin(std::fmax(*parsed, 0.0), 1.0);

    // tostring() then tonumber(), as the legacy cache does on every path.
    char shortest[32];
    std::snprintf(shortest, sizeof(shortest), "%.14g", rate);
    return std::strtod(shortest, nullptr);
}

SiteSettings site_settings_from_fields(std::optional<std::string_view> enabled,
                                       std::optional<std::string_view> sample_rate,
                                       std::optional<std::string_view> daily_sessions,
                                       std::optional<std::string_view> daily_sessions_pace)
{
    SiteSettings settings;
    if (!enabled && !sample_rate) {
        return settings;  // unknown
    }
    if (enabled != std::string_view("1")) {
        settings.status = SiteStatus::disabled;
        return settings;
    }
    settings.status = SiteStatus::enabled;
    settings.sample_rate = parse_sample_rate(sample_rate);
    settings.budget = parse_daily_budget(daily_sessions, daily_sessions_pace, &settings.budget_unreadable);
    return settings;
}

}  // namespace recording
