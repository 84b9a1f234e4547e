#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "budget.h"
#include "site_settings.h"

using namespace recording;

namespace {

constexpr int64_t kMidnight = 20429LL * kDayMs;  // 2025-12-07 00:00:00 UTC
constexpr int64_t kHourMs = 3600000;

}  // namespace

TEST(ParseDailyBudget, AbsentMeansNoBudget)
{
    bool unreadable = true;
    EXPECT_FALSE(parse_daily_budget(std::nullopt, std::nullopt, &unreadable));
    EXPECT_FALSE(unreadable);
}

TEST(ParseDailyBudget, WholeNumbersOnly)
{
    bool unreadable = false;
    auto b = parse_daily_budget("1500", std::nullopt, &unreadable);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->sessions, 1500u);
    EXPECT_FALSE(b->pace_even);
    EXPECT_FALSE(unreadable);
    ASSERT_TRUE(parse_daily_budget("0", std::nullopt, &unreadable));
    for (const char *bad : {"", "-1", "1.5", "12a", " 12", "1e3", "99999999999999999999"}) {
        EXPECT_FALSE(parse_daily_budget(std::string_view(bad), std::nullopt, &unreadable)) << bad;
        EXPECT_TRUE(unreadable) << bad;
    }
}

TEST(ParseDailyBudget, PaceEvenOnlyWhenSaidSo)
{
    bool unreadable;
    EXPECT_TRUE(parse_daily_budget("10", "even", &unreadable)->pace_even);
    EXPECT_FALSE(parse_daily_budget("10", "EVEN", &unreadable)->pace_even);
    EXPECT_FALSE(parse_daily_budget("10", "", &unreadable)->pace_even);
}

TEST(SiteSettingsFromFields, CarryTheBudgetOfAnEnabledSite)
{
    SiteSettings s = site_settings_from_fields("1", "0.5", "100", "even");
    ASSERT_TRUE(s.budget);
    EXPECT_EQ(s.budget->sessions, 100u);
    EXPECT_TRUE(s.budget->pace_even);
    EXPECT_FALSE(site_settings_from_fields("1", "1", std::nullopt, std::nullopt).budget);
    SiteSettings bad = site_settings_from_fields("1", "1", "lots", std::nullopt);
    EXPECT_FALSE(bad.budget);
    EXPECT_TRUE(bad.budget_unreadable);
}

TEST(UtcDay, MidnightStartsTheDay)
{
    EXPECT_EQ(utc_day(kMidnight), 20429);
    EXPECT_EQ(utc_day(kMidnight - 1), 20428);
    EXPECT_EQ(utc_day(kMidnight + kDayMs - 1), 20429);
    EXPECT_EQ(civil_date(20429), "2025-12-07");
    EXPECT_EQ(civil_date(0), "1970-01-01");
    EXPECT_EQ(civil_date(11016), "2000-02-29");
}

TEST(SecondsToNextUtcMidnight, CountsWholeSecondsUp)
{
    EXPECT_EQ(seconds_to_next_utc_midnight(kMidnight), 86400);
    EXPECT_EQ(seconds_to_next_utc_midnight(kMidnight + kDayMs - 1000), 1);
    EXPECT_EQ(seconds_to_next_utc_midnight(kMidnight + kDayMs - 1), 1);
    EXPECT_EQ(seconds_to_next_utc_midnight(kMidnight + kDayMs - 1500), 2);
}

TEST(SessionsAllowedNow, TheWholeBudgetWithoutPacing)
{
    DailyBudget b{1500, false};
    EXPECT_EQ(sessions_allowed_now(b, kMidnight), 1500u);
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + kDayMs - 1), 1500u);
}

TEST(SessionsAllowedNow, EvenPacingIsTheDaysShareAndABurst)
{
    DailyBudget b{2400, true};  // 100 an hour, a burst of 120
    EXPECT_EQ(sessions_allowed_now(b, kMidnight), 120u);
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + kHourMs), 220u);
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + 12 * kHourMs), 1320u);
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + 23 * kHourMs), 2400u);  // capped at the budget
    // The next day starts again from the burst.
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + kDayMs), 120u);
}

TEST(SessionsAllowedNow, TheBurstRoundsUp)
{
    EXPECT_EQ(sessions_allowed_now({10, true}, kMidnight), 1u);
    EXPECT_EQ(sessions_allowed_now({0, true}, kMidnight + 12 * kHourMs), 0u);
    EXPECT_EQ(sessions_allowed_now({0, false}, kMidnight), 0u);
}

TEST(BudgetKeys, OneHashTagPerSiteAndDay)
{
    BudgetKeys k = budget_keys("42", 20429);
    EXPECT_EQ(k.decisions, "recording:budget:{42}:2025-12-07:sessions");
    EXPECT_EQ(k.admitted, "recording:budget:{42}:2025-12-07:admitted");
    EXPECT_EQ(k.refused, "recording:budget:{42}:2025-12-07:refused");
}

TEST(FormatBudgetCheck, EvalsTheScriptOnTheThreeKeys)
{
    std::string cmd = format_budget_check(budget_keys("42", 20429), "sess-1", 7);
    EXPECT_EQ(cmd.rfind("*9\r\n$4\r\nEVAL\r\n", 0), 0u);
    EXPECT_NE(cmd.find("\r\n$1\r\n3\r\n$41\r\nrecording:budget:{42}:2025-12-07:sessions\r\n"), std::string::npos);
    EXPECT_NE(cmd.find("\r\n$6\r\nsess-1\r\n$1\r\n7\r\n$6\r\n172800\r\n"), std::string::npos);
}

TEST(BudgetDecisions, RemembersForTheDayOnly)
{
    BudgetDecisions d;
    EXPECT_FALSE(d.find("r", "1", "a", 100));
    d.remember("r", "1", "a", 100, true);
    d.remember("r", "1", "b", 100, false);
    EXPECT_EQ(d.find("r", "1", "a", 100), std::optional<bool>(true));
    EXPECT_EQ(d.find("r", "1", "b", 100), std::optional<bool>(false));
    EXPECT_FALSE(d.find("r", "2", "a", 100));  // another site's session of the same id
    EXPECT_FALSE(d.find("s", "1", "a", 100));  // the same site id in another Redis
    EXPECT_FALSE(d.find("r", "1", "a", 101));  // a new day: asked again
    EXPECT_EQ(d.size(), 0u);
}

TEST(BudgetDecisions, AReplyOfYesterdayKeepsTodaysMemory)
{
    BudgetDecisions d;
    d.remember("r", "1", "today", 101, true);
    d.remember("r", "1", "late", 100, true);  // asked at 23:59:59, answered after midnight
    EXPECT_EQ(d.find("r", "1", "today", 101), std::optional<bool>(true));
    EXPECT_FALSE(d.find("r", "1", "late", 101));
}

TEST(BudgetDecisions, ForgetsAllAtOnceWhenFull)
{
    BudgetDecisions d(3);
    d.remember("r", "1", "a", 5, true);
    d.remember("r", "1", "b", 5, true);
    d.remember("r", "1", "c", 5, true);
    EXPECT_EQ(d.size(), 3u);
    d.remember("r", "1", "d", 5, true);
    EXPECT_EQ(d.size(), 1u);
    EXPECT_FALSE(d.find("r", "1", "a", 5));
    EXPECT_TRUE(d.find("r", "1", "d", 5));
}

TEST(SessionsAllowedNow, HugeBudgetsDoNotOverflow)
{
    DailyBudget b{300000000000ULL, true};  // 3e11: sessions * ms would pass 2^64
    EXPECT_EQ(sessions_allowed_now(b, kMidnight + 12 * kHourMs), 150000000000ULL + 15000000000ULL);
    DailyBudget most{999999999999999999ULL, true};
    EXPECT_EQ(sessions_allowed_now(most, kMidnight + kDayMs - 1), most.sessions);
}
