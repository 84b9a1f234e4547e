#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "health.h"

using recording::HealthAnswer;
using recording::HealthFacts;
using recording::HealthProbe;
using recording::judge_health;

namespace {

HealthFacts facts(bool redis_failing, bool spool = false, bool room = false, bool shutting_down = false)
{
    HealthFacts f;
    f.redis_failing = redis_failing;
    f.spool = spool;
    f.spool_has_room = room;
    f.shutting_down = shutting_down;
    return f;
}

}  // namespace

TEST(JudgeHealth, OkWhileRedisAnswers)
{
    HealthAnswer a = judge_health(facts(false));
    EXPECT_EQ(a.status, 200);
    EXPECT_EQ(a.body, R"({"status":"ok"})");
}

TEST(JudgeHealth, UnavailableWithoutRedisOrSpool)
{
    HealthAnswer a = judge_health(facts(true));
    EXPECT_EQ(a.status, 503);
    EXPECT_EQ(a.body, R"({"status":"unavailable","reason":"redis_unreachable"})");
}

TEST(JudgeHealth, ASpoolWithRoomKeepsItOk)
{
    EXPECT_EQ(judge_health(facts(true, true, true)).status, 200);
    HealthAnswer full = judge_health(facts(true, true, false));
    EXPECT_EQ(full.status, 503);
    EXPECT_EQ(full.body, R"({"status":"unavailable","reason":"redis_unreachable_spool_full"})");
}

TEST(JudgeHealth, AFullSpoolDoesNotMatterWhileRedisAnswers)
{
    EXPECT_EQ(judge_health(facts(false, true, false)).status, 200);
}

TEST(JudgeHealth, ShuttingDownWinsOverEverything)
{
    for (bool failing : {false, true}) {
        for (bool room : {false, true}) {
            HealthAnswer a = judge_health(facts(failing, true, room, true));
            EXPECT_EQ(a.status, 503);
            EXPECT_EQ(a.body, R"({"status":"unavailable","reason":"shutting_down"})");
        }
    }
}

TEST(HealthProbe, AsksAtOnceThenAtMostOncePerInterval)
{
    HealthProbe probe(1000);
    EXPECT_TRUE(probe.should_ask(5000));
    probe.answered(true);
    int asked = 0;
    for (uint64_t now = 5000; now < 8000; now += 10) {  // 300 health requests over 3 s
        if (probe.should_ask(now)) {
            ++asked;
            probe.answered(true);
        }
    }
    EXPECT_EQ(asked, 2);  // at 6000 and 7000
}

TEST(HealthProbe, OneQuestionAtATime)
{
    HealthProbe probe(1000);
    EXPECT_TRUE(probe.should_ask(0));
    EXPECT_TRUE(probe.waiting());
    EXPECT_FALSE(probe.should_ask(5000));  // the first is not answered yet
    probe.answered(true);
    EXPECT_FALSE(probe.waiting());
    EXPECT_TRUE(probe.should_ask(5000));
}

TEST(HealthProbe, TheLastAnswerHolds)
{
    HealthProbe probe(1000);
    EXPECT_FALSE(probe.failing(0));  // nothing known against Redis yet
    ASSERT_TRUE(probe.should_ask(0));
    probe.answered(false);
    EXPECT_TRUE(probe.failing(10));
    EXPECT_FALSE(probe.should_ask(500));
    EXPECT_TRUE(probe.failing(500));
    ASSERT_TRUE(probe.should_ask(1000));
    probe.answered(true);
    EXPECT_FALSE(probe.failing(1010));
    ASSERT_TRUE(probe.should_ask(2000));
    probe.sent_failed();
    EXPECT_TRUE(probe.failing(2000));
    EXPECT_FALSE(probe.waiting());
}

TEST(HealthProbe, AQuestionUnansweredForAnIntervalIsFailing)
{
    HealthProbe probe(1000);
    ASSERT_TRUE(probe.should_ask(0));
    probe.answered(true);
    ASSERT_TRUE(probe.should_ask(1000));  // Redis stops answering here
    EXPECT_FALSE(probe.failing(1500));    // not late yet: the last answer holds
    EXPECT_TRUE(probe.failing(2000));     // late by an interval, whatever the reply timeout
    probe.answered(true);
    EXPECT_FALSE(probe.failing(2100));
}

TEST(HealthProbe, RightAcrossAWrapOfTheClock)
{
    HealthProbe probe(1000);
    uint64_t near_end = UINT64_MAX - 200;
    ASSERT_TRUE(probe.should_ask(near_end));
    probe.answered(true);
    EXPECT_FALSE(probe.should_ask(near_end + 500));  // wrapped: 500 ms later
    EXPECT_TRUE(probe.should_ask(near_end + 1000));
}
