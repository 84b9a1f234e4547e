#include <gtest/gtest.h>

#include <vector>

#include "spool_replay.h"

using recording::spool::ReplayWindow;
using Next = ReplayWindow::Next;

namespace {

constexpr uint64_t kStart = 24;  // right after the file header

// Sends records of `size` bytes while the window has room; their ends.
std::vector<uint64_t> fill(ReplayWindow& window, size_t size)
{
    std::vector<uint64_t> ends;
    while (window.has_room()) {
        ends.push_back(window.sent(size, 1));
    }
    return ends;
}

// A replay under way from kStart, with room enough for every test of what
// replies mean; the bounds have tests of their own.
class SpoolReplay : public ::testing::Test {
protected:
    void SetUp() override { window.start(kStart); }

    ReplayWindow::Answer take(uint64_t end) { return window.answer(window.generation(), end, true); }
    ReplayWindow::Answer refuse(uint64_t end) { return window.answer(window.generation(), end, false); }

    ReplayWindow window{{64, 1000}};
};

}  // namespace

TEST_F(SpoolReplay, StartsWhereRedisAcknowledged)
{
    EXPECT_EQ(window.next(), kStart);
    EXPECT_EQ(window.acknowledged(), kStart);
    EXPECT_EQ(window.sent(10, 1), kStart + 10);
    EXPECT_EQ(window.sent(5, 1), kStart + 15);
    EXPECT_EQ(window.next(), kStart + 15);
    EXPECT_EQ(window.acknowledged(), kStart);  // nothing answered yet
}

TEST(SpoolReplayBounds, NeverMoreRecordsThanItsBound)
{
    ReplayWindow window({3, 1000});
    window.start(kStart);
    std::vector<uint64_t> ends = fill(window, 10);
    ASSERT_EQ(ends.size(), 3u);
    EXPECT_FALSE(window.has_room());
    // Answered but behind a record still waiting: not acknowledged, so
    // still in the window.
    window.answer(window.generation(), ends[1], true);
    window.answer(window.generation(), ends[2], true);
    EXPECT_FALSE(window.has_room());
    // The front taken: all three acknowledged, room for three more.
    window.answer(window.generation(), ends[0], true);
    EXPECT_EQ(fill(window, 10).size(), 3u);
}

TEST(SpoolReplayBounds, NoRecordGoesOutAtOrOverTheByteBound)
{
    ReplayWindow window({64, 100});
    window.start(kStart);
    std::vector<uint64_t> ends = fill(window, 50);
    EXPECT_EQ(ends.size(), 2u);  // 0 and 50 bytes in flight were under 100; 100 is not
    // A reply frees its bytes even when it cannot be acknowledged yet.
    window.answer(window.generation(), ends[1], true);
    EXPECT_EQ(window.acknowledged(), kStart);
    EXPECT_TRUE(window.has_room());
    // Under the bound, a record goes out whatever its size: a large record
    // is never stuck.
    window.sent(90, 1);
    EXPECT_FALSE(window.has_room());
}

TEST_F(SpoolReplay, OutOfOrderRepliesDoNotPassAWaitingRecord)
{
    uint64_t first = window.sent(10, 1);
    uint64_t second = window.sent(20, 2);
    uint64_t third = window.sent(30, 3);

    ReplayWindow::Answer answer = take(second);
    EXPECT_TRUE(answer.current);
    EXPECT_EQ(answer.elements, 2u);
    EXPECT_FALSE(answer.advanced);
    EXPECT_EQ(window.acknowledged(), kStart);

    answer = take(first);
    EXPECT_TRUE(answer.advanced);
    EXPECT_EQ(window.acknowledged(), second);  // over both taken records, not the third

    answer = take(third);
    EXPECT_TRUE(answer.advanced);
    EXPECT_EQ(window.acknowledged(), third);
}

TEST_F(SpoolReplay, ARefusedRecordHoldsTheOffsetAndFailsTheReplay)
{
    uint64_t first = window.sent(10, 1);
    uint64_t refused = window.sent(10, 1);
    uint64_t after = window.sent(10, 1);

    take(first);
    EXPECT_EQ(window.acknowledged(), first);
    ReplayWindow::Answer answer = refuse(refused);
    EXPECT_TRUE(answer.current);
    EXPECT_FALSE(answer.advanced);
    EXPECT_TRUE(window.failed());
    EXPECT_FALSE(window.has_room());  // nothing more goes out
    EXPECT_EQ(window.after_sending(false), Next::wait);  // `after` is still due

    answer = take(after);
    EXPECT_FALSE(answer.advanced);  // taken, but behind the refused one
    EXPECT_EQ(window.acknowledged(), first);
    EXPECT_EQ(window.after_sending(false), Next::stop);
    EXPECT_FALSE(window.replayed(after));
}

TEST_F(SpoolReplay, AReplayAfterAFailureResumesAtTheAcknowledgedOffset)
{
    uint64_t first = window.sent(10, 1);
    uint64_t refused = window.sent(10, 1);
    take(first);
    refuse(refused);
    window.stop();

    window.start(window.acknowledged());
    EXPECT_FALSE(window.failed());
    EXPECT_TRUE(window.has_room());
    EXPECT_EQ(window.next(), first);  // the refused record goes again
    EXPECT_EQ(window.sent(10, 1), refused);
}

TEST_F(SpoolReplay, ARecordThatCannotBeSentFailsTheReplay)
{
    uint64_t first = window.sent(10, 1);
    window.fail();
    EXPECT_FALSE(window.has_room());
    EXPECT_EQ(window.after_sending(false), Next::wait);
    take(first);
    EXPECT_EQ(window.acknowledged(), first);  // what was in flight still counts
    EXPECT_EQ(window.after_sending(false), Next::stop);
}

TEST_F(SpoolReplay, RepliesToAnEarlierReplayAreIgnored)
{
    unsigned earlier = window.generation();
    uint64_t end = window.sent(10, 1);
    window.stop();
    window.start(kStart);
    EXPECT_NE(window.generation(), earlier);

    uint64_t again = window.sent(10, 1);
    ASSERT_EQ(again, end);  // the same record, sent again
    ReplayWindow::Answer answer = window.answer(earlier, end, false);
    EXPECT_FALSE(answer.current);
    EXPECT_FALSE(window.failed());
    EXPECT_EQ(window.after_sending(false), Next::wait);  // still waiting for this replay's reply

    answer = take(again);
    EXPECT_TRUE(answer.current);
    EXPECT_EQ(window.acknowledged(), end);
}

TEST_F(SpoolReplay, StoppingWaitsForRepliesThenStops)
{
    uint64_t end = window.sent(10, 1);
    EXPECT_EQ(window.after_sending(true), Next::wait);
    take(end);
    EXPECT_EQ(window.after_sending(true), Next::stop);
    EXPECT_EQ(window.after_sending(false), Next::finish);
}

TEST_F(SpoolReplay, AFileIsReplayedOnlyWhenRedisHasAllOfIt)
{
    EXPECT_EQ(window.after_sending(false), Next::finish);
    EXPECT_TRUE(window.replayed(kStart));  // a file of only its header

    uint64_t end = window.sent(10, 1);
    EXPECT_FALSE(window.replayed(end));  // sent, not answered
    take(end);
    EXPECT_EQ(window.after_sending(false), Next::finish);
    EXPECT_TRUE(window.replayed(end));
    EXPECT_FALSE(window.replayed(end + 1));  // appended to meanwhile

    // Stopped with records unanswered: not replayed, whatever the size.
    uint64_t unanswered = window.sent(10, 1);
    window.stop();
    EXPECT_FALSE(window.replayed(unanswered));
}
