#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "sampling.h"

using recording::is_sampled_in;
using recording::queue_shard;
using recording::session_bucket;

// Expected values computed independently with Python:
//   python3 -c 'import zlib; print(zlib.crc32(b"42:abc"))'

TEST(SessionBucket, IsCrc32OfSiteColonSession)
{
    EXPECT_EQ(session_bucket("42", "abc"), 2688258027u);  // 0xA03B8FEB
    EXPECT_EQ(session_bucket("1", "a"), 3321157890u);
    EXPECT_EQ(session_bucket("123", "6789"), 3325594958u);
    EXPECT_EQ(session_bucket("1234", "6789"), 1235529463u);
    EXPECT_EQ(session_bucket("12345", "6789"), 818604633u);
    EXPECT_EQ(session_bucket("7", "session-XYZ_0"), 1776453875u);
    EXPECT_EQ(session_bucket("9999999999", std::string(64, 'a')), 3830293122u);
}

TEST(SessionBucket, UsesTheSiteIdExactlyAsInTheUri)
{
    // "007" and "7" are the same site but not the same bytes.
    EXPECT_EQ(session_bucket("007", "abc"), 2005375234u);
    EXPECT_NE(session_bucket("007", "abc"), session_bucket("7", "abc"));
}

TEST(SessionBucket, InsertsExactlyOneColon)
{
    EXPECT_EQ(session_bucket("", ""), 336475711u);  // crc32(":")
    EXPECT_EQ(session_bucket("1", ""), 1099484415u);  // crc32("1:")
    // The split point matters only through the colon's position.
    EXPECT_NE(session_bucket("123", "6789"), session_bucket("1234", "6789"));
}

TEST(SessionBucket, HashesBytesNotCharacters)
{
    EXPECT_EQ(session_bucket("42", "\xC3\xA9"), 2927634166u);  // "42:é" in UTF-8
}

TEST(IsSampledIn, RateZeroNeverSamples)
{
    for (uint32_t bucket : {0u, 1u, 9999u, 10000u, 4294967295u}) {
        EXPECT_FALSE(is_sampled_in(bucket, 0.0)) << bucket;
    }
}

TEST(IsSampledIn, RateOneAlwaysSamples)
{
    for (uint32_t bucket : {0u, 1u, 4999u, 9999u, 10000u, 19999u, 4294967295u}) {
        EXPECT_TRUE(is_sampled_in(bucket, 1.0)) << bucket;
    }
}

TEST(IsSampledIn, HalfRateSplitsAt5000)
{
    EXPECT_TRUE(is_sampled_in(0, 0.5));
    EXPECT_TRUE(is_sampled_in(4999, 0.5));
    EXPECT_FALSE(is_sampled_in(5000, 0.5));
    EXPECT_FALSE(is_sampled_in(9999, 0.5));
    // Only bucket % 10000 counts.
    EXPECT_TRUE(is_sampled_in(10000, 0.5));
    EXPECT_TRUE(is_sampled_in(1499314999, 0.5));   // % 10000 == 4999
    EXPECT_FALSE(is_sampled_in(3647395000u, 0.5));  // % 10000 == 5000
    EXPECT_FALSE(is_sampled_in(4294967295u, 0.5));  // % 10000 == 7295
    EXPECT_TRUE(is_sampled_in(4294967295u, 0.7296));
    EXPECT_FALSE(is_sampled_in(4294967295u, 0.7295));
}

TEST(IsSampledIn, ThresholdRoundsHalfUp)
{
    // floor(rate * 10000 + 0.5): 0.00005 -> 1 (0.5 rounds up), 0.00004 -> 0.
    EXPECT_TRUE(is_sampled_in(0, 0.00005));
    EXPECT_FALSE(is_sampled_in(1, 0.00005));
    EXPECT_FALSE(is_sampled_in(0, 0.00004));
    // 0.12345 -> 1234.5 -> 1235 buckets: 0..1234.
    EXPECT_TRUE(is_sampled_in(1234, 0.12345));
    EXPECT_FALSE(is_sampled_in(1235, 0.12345));
}

TEST(IsSampledIn, UsesIeeeDoublesNotExactDecimals)
{
    // 0.00015 * 10000 is 1.4999999999999998 in doubles, so the threshold is
    // 1 (exact decimal arithmetic would give 2). Checked in Python:
    //   math.floor(0.00015*10000+0.5) == 1
    EXPECT_EQ(std::floor(0.00015 * 10000 + 0.5), 1.0);
    EXPECT_TRUE(is_sampled_in(0, 0.00015));
    EXPECT_FALSE(is_sampled_in(1, 0.00015));
    EXPECT_TRUE(is_sampled_in(10000, 0.00015));
    EXPECT_FALSE(is_sampled_in(10001, 0.00015));
}

TEST(IsSampledIn, RealSessionsAtTheEdges)
{
    // Sessions found with Python whose buckets sit on the thresholds.
    EXPECT_EQ(session_bucket("1", "s18860") % 10000, 0u);
    EXPECT_EQ(session_bucket("1", "s52") % 10000, 1u);
    EXPECT_EQ(session_bucket("1", "s1778") % 10000, 4999u);
    EXPECT_EQ(session_bucket("1", "s45528") % 10000, 5000u);

    EXPECT_TRUE(is_sampled_in(session_bucket("1", "s18860"), 0.00015));
    EXPECT_FALSE(is_sampled_in(session_bucket("1", "s52"), 0.00015));
    EXPECT_TRUE(is_sampled_in(session_bucket("1", "s1778"), 0.5));
    EXPECT_FALSE(is_sampled_in(session_bucket("1", "s45528"), 0.5));
}

TEST(IsSampledIn, IsTheSameForEveryBatchOfASession)
{
    uint32_t bucket = session_bucket("42", "abc");  // % 10000 == 8027
    for (int i = 0; i < 3; i++) {
        EXPECT_FALSE(is_sampled_in(bucket, 0.8027));
        EXPECT_TRUE(is_sampled_in(bucket, 0.8028));
    }
}

TEST(QueueShard, IsBucketModuloShards)
{
    EXPECT_EQ(queue_shard(2688258027u, 4), 3u);
    EXPECT_EQ(queue_shard(3321157890u, 4), 2u);
    EXPECT_EQ(queue_shard(818604633u, 4), 1u);
    EXPECT_EQ(queue_shard(8, 4), 0u);
    EXPECT_EQ(queue_shard(4294967295u, 4), 3u);
    EXPECT_EQ(queue_shard(4294967295u, 10), 5u);
    EXPECT_EQ(queue_shard(4294967295u, 4294967295u), 0u);
    EXPECT_EQ(queue_shard(4294967294u, 4294967295u), 4294967294u);
}

TEST(QueueShard, OneShardIsAlwaysZero)
{
    for (uint32_t bucket : {0u, 1u, 2688258027u, 4294967295u}) {
        EXPECT_EQ(queue_shard(bucket, 1), 0u);
    }
}

TEST(QueueShard, ZeroShardsDoesNotDivideByZero)
{
    EXPECT_EQ(queue_shard(2688258027u, 0), 0u);
}
