#include <gtest/gtest.h>

#include <rapidjson/document.h>

#include <sstream>

#include "metrics.h"

using namespace recording;

namespace {

MetricsSnapshot sample_snapshot()
{
    MetricsSnapshot m;
    m.version = "9.8.7";
    m.batches[static_cast<size_t>(Outcome::queued)] = 5;
    m.batches[static_cast<size_t>(Outcome::invalid_json)] = 2;
    m.preflights = 3;
    m.received_bytes = 1000;
    m.decoded_bytes = 4000;
    m.pending_bytes = 70000;
    m.pending_limit_refusals = 7;
    m.rpush_commands = 6;
    m.hmget_commands = 1;
    m.pushed_elements = 5;
    m.replies_ok = 6;
    m.replies_error = 1;
    m.replies_none = 0;
    m.reconnects = 2;
    m.inflight_elements = 0;
    m.push_duration[push_duration_bucket(300)] += 4;      // <= 0.0005 s
    m.push_duration[push_duration_bucket(1500)] += 1;     // <= 0.002 s
    m.push_duration[push_duration_bucket(9000000)] += 1;  // above every bound
    m.push_duration_sum_us = 4 * 300 + 1500 + 9000000;
    m.servers.push_back({"127.0.0.1:6379", 2});
    m.servers.push_back({"unix:/run/\"odd\"\\name", 0});
    m.spooled_elements = 11;
    m.replayed_elements = 8;
    m.resent_elements = 5;
    m.spool_full_refusals = 3;
    m.spool_write_failures = 2;
    m.spool_bytes = 123456;
    m.spool_files = 4;
    m.site_cache_hits = 4;
    m.site_cache_misses = 1;
    m.site_cache_entries = 1;
    return m;
}

// The value of one sample line ("name{labels} value") of a Prometheus text.
std::string prometheus_value(const std::string& text, const std::string& series)
{
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.compare(0, series.size() + 1, series + " ") == 0) {
            return line.substr(series.size() + 1);
        }
    }
    return "(missing)";
}

}  // namespace

TEST(PushDurationBucket, BoundsAreInclusiveAndTheLastTakesTheRest)
{
    EXPECT_EQ(push_duration_bucket(0), 0u);
    EXPECT_EQ(push_duration_bucket(500), 0u);
    EXPECT_EQ(push_duration_bucket(501), 1u);
    EXPECT_EQ(push_duration_bucket(2000000), kPushDurationBoundsUs.size() - 1);
    EXPECT_EQ(push_duration_bucket(2000001), kPushDurationBoundsUs.size());
}

TEST(RenderJson, IsValidJsonWithEveryFigure)
{
    std::string json = render_json(sample_snapshot());
    rapidjson::Document doc;
    ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;

    EXPECT_STREQ(doc["version"].GetString(), "9.8.7");
    EXPECT_EQ(doc["batches"].MemberCount(), kOutcomeCount);
    EXPECT_EQ(doc["batches"]["queued"].GetUint64(), 5u);
    EXPECT_EQ(doc["batches"]["invalid_json"].GetUint64(), 2u);
    EXPECT_EQ(doc["batches"]["internal"].GetUint64(), 0u);
    EXPECT_EQ(doc["preflights"].GetUint64(), 3u);
    EXPECT_EQ(doc["received_bytes"].GetUint64(), 1000u);
    EXPECT_EQ(doc["decoded_bytes"].GetUint64(), 4000u);
    EXPECT_EQ(doc["pending_bytes"].GetUint64(), 70000u);
    EXPECT_EQ(doc["pending_limit_refusals"].GetUint64(), 7u);

    const auto& redis = doc["redis"];
    EXPECT_EQ(redis["commands"]["rpush"].GetUint64(), 6u);
    EXPECT_EQ(redis["commands"]["hmget"].GetUint64(), 1u);
    EXPECT_EQ(redis["pushed_elements"].GetUint64(), 5u);
    EXPECT_EQ(redis["replies"]["ok"].GetUint64(), 6u);
    EXPECT_EQ(redis["replies"]["error"].GetUint64(), 1u);
    EXPECT_EQ(redis["replies"]["none"].GetUint64(), 0u);
    EXPECT_EQ(redis["reconnects"].GetUint64(), 2u);
    EXPECT_EQ(redis["servers"]["127.0.0.1:6379"]["connections"].GetUint64(), 2u);
    EXPECT_TRUE(redis["servers"].HasMember("unix:/run/\"odd\"\\name"));

    const auto& histogram = redis["push_duration_seconds"];
    EXPECT_EQ(histogram["buckets"]["0.0005"].GetUint64(), 4u);  // cumulative
    EXPECT_EQ(histogram["buckets"]["0.001"].GetUint64(), 4u);
    EXPECT_EQ(histogram["buckets"]["0.002"].GetUint64(), 5u);
    EXPECT_EQ(histogram["buckets"]["2"].GetUint64(), 5u);
    EXPECT_EQ(histogram["buckets"]["+Inf"].GetUint64(), 6u);
    EXPECT_EQ(histogram["count"].GetUint64(), 6u);
    EXPECT_DOUBLE_EQ(histogram["sum"].GetDouble(), 9.0027);

    const auto& spool = doc["spool"];
    EXPECT_EQ(spool.MemberCount(), 7u);
    EXPECT_EQ(spool["spooled_elements"].GetUint64(), 11u);
    EXPECT_EQ(spool["replayed_elements"].GetUint64(), 8u);
    EXPECT_EQ(spool["resent_elements"].GetUint64(), 5u);
    EXPECT_EQ(spool["full_refusals"].GetUint64(), 3u);
    EXPECT_EQ(spool["write_failures"].GetUint64(), 2u);
    EXPECT_EQ(spool["bytes"].GetUint64(), 123456u);
    EXPECT_EQ(spool["files"].GetUint64(), 4u);

    EXPECT_EQ(doc["site_cache"]["hits"].GetUint64(), 4u);
    EXPECT_EQ(doc["site_cache"]["misses"].GetUint64(), 1u);
    EXPECT_EQ(doc["site_cache"]["entries"].GetUint64(), 1u);
}

TEST(RenderJson, AnIdleServerShowsZeroPendingAndAnEmptySpool)
{
    rapidjson::Document doc;
    std::string json = render_json(MetricsSnapshot{});
    ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;
    EXPECT_EQ(doc["pending_bytes"].GetUint64(), 0u);
    EXPECT_EQ(doc["pending_limit_refusals"].GetUint64(), 0u);
    ASSERT_TRUE(doc["spool"].IsObject());
    for (const char* name : {"spooled_elements", "replayed_elements", "resent_elements", "full_refusals",
                             "write_failures", "bytes", "files"}) {
        ASSERT_TRUE(doc["spool"].HasMember(name)) << name;
        EXPECT_EQ(doc["spool"][name].GetUint64(), 0u) << name;
    }
}

TEST(RenderPrometheus, SamplesHaveTheirValues)
{
    std::string text = render_prometheus(sample_snapshot());
    EXPECT_EQ(prometheus_value(text, "nginx_recording_build_info{version=\"9.8.7\"}"), "1");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_batches_total{outcome=\"queued\"}"), "5");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_batches_total{outcome=\"invalid_json\"}"), "2");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_batches_total{outcome=\"queue_unavailable\"}"), "0");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_preflights_total"), "3");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_received_bytes_total"), "1000");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_decoded_bytes_total"), "4000");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_commands_total{command=\"rpush\"}"), "6");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_replies_total{kind=\"error\"}"), "1");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_reconnects_total"), "2");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_connections{server=\"127.0.0.1:6379\"}"), "2");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_connections{server=\"unix:/run/\\\"odd\\\"\\\\name\"}"), "0");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_push_duration_seconds_bucket{le=\"0.0005\"}"), "4");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_push_duration_seconds_bucket{le=\"0.002\"}"), "5");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_push_duration_seconds_bucket{le=\"+Inf\"}"), "6");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_push_duration_seconds_sum"), "9.002700");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_redis_push_duration_seconds_count"), "6");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_site_cache_entries"), "1");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_pending_bytes"), "70000");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_pending_limit_refusals_total"), "7");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_spooled_elements_total"), "11");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_replayed_elements_total"), "8");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_resent_elements_total"), "5");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_full_refusals_total"), "3");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_write_failures_total"), "2");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_bytes"), "123456");
    EXPECT_EQ(prometheus_value(text, "nginx_recording_spool_files"), "4");
}

// The type each family of the memory bound and the spool is declared with:
// levels are gauges, events counters.
TEST(RenderPrometheus, PendingAndSpoolFamiliesHaveTheirTypes)
{
    std::string text = render_prometheus(sample_snapshot());
    for (const char* gauge : {"pending_bytes", "spool_bytes", "spool_files"}) {
        std::string type = std::string("# TYPE nginx_recording_") + gauge + " gauge\n";
        EXPECT_NE(text.find(type), std::string::npos) << gauge;
        std::string help = std::string("# HELP nginx_recording_") + gauge + " ";
        EXPECT_NE(text.find(help), std::string::npos) << gauge;
    }
    for (const char* counter : {"pending_limit_refusals_total", "spool_spooled_elements_total",
                                "spool_replayed_elements_total", "spool_resent_elements_total",
                                "spool_full_refusals_total",
                                "spool_write_failures_total"}) {
        std::string type = std::string("# TYPE nginx_recording_") + counter + " counter\n";
        EXPECT_NE(text.find(type), std::string::npos) << counter;
        std::string help = std::string("# HELP nginx_recording_") + counter + " ";
        EXPECT_NE(text.find(help), std::string::npos) << counter;
    }
}

TEST(RenderPrometheus, EveryFamilyIsTypedAndCountersEndInTotal)
{
    std::istringstream lines(render_prometheus(sample_snapshot()));
    std::string line;
    int families = 0;
    while (std::getline(lines, line)) {
        if (line.rfind("# TYPE ", 0) != 0) {
            continue;
        }
        families++;
        std::istringstream fields(line.substr(7));
        std::string name, type;
        fields >> name >> type;
        EXPECT_EQ(name.rfind("nginx_recording_", 0), 0u) << line;
        if (type == "counter") {
            EXPECT_EQ(name.substr(name.size() - 6), "_total") << line;
        } else {
            EXPECT_TRUE(type == "gauge" || type == "histogram") << line;
        }
    }
    EXPECT_EQ(families, 29);
}

TEST(WantsPrometheus, ByArgumentOrAccept)
{
    EXPECT_TRUE(wants_prometheus("prometheus", ""));
    EXPECT_FALSE(wants_prometheus("json", ""));
    EXPECT_FALSE(wants_prometheus("", ""));
    EXPECT_FALSE(wants_prometheus("", "*/*"));
    EXPECT_FALSE(wants_prometheus("", "application/json"));
    EXPECT_TRUE(wants_prometheus("", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
    EXPECT_TRUE(wants_prometheus("", "application/openmetrics-text;version=1.0.0"));
    EXPECT_FALSE(wants_prometheus("", "application/json, text/plain, */*"));  // axios's default
    EXPECT_FALSE(wants_prometheus("", "text/plain"));
}
