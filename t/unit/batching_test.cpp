#include "batching.h"

#include <gtest/gtest.h>

#include <vector>

using recording::after_join;
using recording::BatchLimits;
using recording::JoinVerdict;
using recording::OpenBatch;
using recording::PendingMemory;
using recording::seals_on_reply;

namespace {

constexpr BatchLimits kLimits{/*max_elements=*/4, /*max_size=*/1000, /*delay_ms=*/20};

OpenBatch open_batch(size_t elements, size_t bytes, unsigned in_flight = 0, bool delay_armed = false)
{
    OpenBatch batch;
    batch.elements = elements;
    batch.bytes = bytes;
    batch.in_flight = in_flight;
    batch.delay_armed = delay_armed;
    return batch;
}

}  // namespace

TEST(Batching, SealedWhenItReachesTheElementLimit)
{
    EXPECT_NE(after_join(kLimits, open_batch(3, 100, 1)), JoinVerdict::seal_now);
    EXPECT_EQ(after_join(kLimits, open_batch(4, 100, 1)), JoinVerdict::seal_now);
    // Full goes now even with nothing ahead of it: no wait for the pass to end.
    EXPECT_EQ(after_join(kLimits, open_batch(4, 100, 0)), JoinVerdict::seal_now);
}

TEST(Batching, SealedWhenItReachesTheSizeLimit)
{
    EXPECT_NE(after_join(kLimits, open_batch(1, 999, 1)), JoinVerdict::seal_now);
    EXPECT_EQ(after_join(kLimits, open_batch(1, 1000, 1)), JoinVerdict::seal_now);
    EXPECT_EQ(after_join(kLimits, open_batch(1, 5000, 1, true)), JoinVerdict::seal_now);
}

TEST(Batching, OneElementBatchesWhenTheLimitIsOne)
{
    BatchLimits one{1, 1000, 20};
    EXPECT_EQ(after_join(one, open_batch(1, 10, 0)), JoinVerdict::seal_now);
    EXPECT_EQ(after_join(one, open_batch(1, 10, 3)), JoinVerdict::seal_now);
}

TEST(Batching, ALoneBatchGoesAtTheEndOfThePass)
{
    // Nothing of the key in flight: no wait beyond this pass of the event loop.
    EXPECT_EQ(after_join(kLimits, open_batch(1, 100, 0)), JoinVerdict::seal_at_end_of_pass);
    EXPECT_EQ(after_join(kLimits, open_batch(3, 999, 0)), JoinVerdict::seal_at_end_of_pass);
    BatchLimits no_delay{4, 1000, 0};
    EXPECT_EQ(after_join(no_delay, open_batch(1, 100, 0)), JoinVerdict::seal_at_end_of_pass);
}

TEST(Batching, AnRpushInFlightHoldsItBehindTheDelay)
{
    // The first element behind an RPUSH arms the delay; later ones leave
    // the timer as it is, so the delay counts from the first element.
    EXPECT_EQ(after_join(kLimits, open_batch(1, 100, 1, false)), JoinVerdict::arm_delay);
    EXPECT_EQ(after_join(kLimits, open_batch(2, 200, 1, true)), JoinVerdict::wait_for_reply);
    EXPECT_EQ(after_join(kLimits, open_batch(3, 300, 2, true)), JoinVerdict::wait_for_reply);
}

TEST(Batching, NoDelayArmsNoTimer)
{
    BatchLimits no_delay{4, 1000, 0};
    EXPECT_EQ(after_join(no_delay, open_batch(1, 100, 1, false)), JoinVerdict::wait_for_reply);
    EXPECT_EQ(after_join(no_delay, open_batch(3, 100, 5, false)), JoinVerdict::wait_for_reply);
}

TEST(Batching, OverThePendingLimitGoesToTheSpoolAtOnce)
{
    for (unsigned in_flight : {0u, 1u}) {
        OpenBatch small = open_batch(1, 100, in_flight);
        small.over_pending = true;
        EXPECT_EQ(after_join(kLimits, small), JoinVerdict::spool_now) << in_flight;
        // Full as well: still the spool, not Redis.
        OpenBatch full = open_batch(4, 1000, in_flight, true);
        full.over_pending = true;
        EXPECT_EQ(after_join(kLimits, full), JoinVerdict::spool_now) << in_flight;
    }
}

TEST(Batching, TheLastReplyReleasesWhatGatheredBehind)
{
    EXPECT_FALSE(seals_on_reply(1, true));  // another RPUSH is still out
    EXPECT_FALSE(seals_on_reply(3, true));
    EXPECT_TRUE(seals_on_reply(0, true));
    EXPECT_FALSE(seals_on_reply(0, false));  // nothing gathered
}

TEST(PendingMemory, AdmitsAnElementUpToTheLimit)
{
    PendingMemory pending(100);
    EXPECT_TRUE(pending.admits(100));
    EXPECT_FALSE(pending.admits(101));
    pending.hold(60);
    EXPECT_TRUE(pending.admits(40));
    EXPECT_FALSE(pending.admits(41));
    pending.release(60);
    EXPECT_EQ(pending.held(), 0u);
    EXPECT_TRUE(pending.admits(100));
}

TEST(PendingMemory, OverOnlyPastTheLimit)
{
    PendingMemory pending(100);
    pending.hold(100);
    EXPECT_FALSE(pending.over());  // at the limit is within it
    pending.hold(1);
    EXPECT_TRUE(pending.over());
    pending.release(1);
    EXPECT_FALSE(pending.over());
}

// A key under load, driven as the queue drives it: elements keep joining
// while RPUSHes are out, and each RPUSH carries what arrived behind the one
// before it.
TEST(Batching, UnderLoadEachRpushCarriesWhatGatheredBehindTheOneBefore)
{
    BatchLimits limits{100, 1 << 20, 0};
    unsigned in_flight = 0;
    size_t open = 0;
    std::vector<size_t> sent;
    auto join = [&] {
        open++;
        switch (after_join(limits, open_batch(open, open * 10, in_flight))) {
        case JoinVerdict::seal_at_end_of_pass:  // the pass ends at once here
        case JoinVerdict::seal_now:
            sent.push_back(open);
            open = 0;
            in_flight++;
            break;
        default:
            break;
        }
    };
    auto reply = [&] {
        in_flight--;
        if (seals_on_reply(in_flight, open > 0)) {
            sent.push_back(open);
            open = 0;
            in_flight++;
        }
    };
    join();  // a lone element goes by itself
    for (int i = 0; i < 5; i++) {
        join();
    }
    reply();  // the five behind it go together
    join();
    join();
    reply();
    EXPECT_EQ(sent, (std::vector<size_t>{1, 5, 2}));
    EXPECT_EQ(in_flight, 1u);
}
