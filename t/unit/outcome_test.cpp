#include <gtest/gtest.h>

#include <iterator>
#include <set>
#include <string>

#include "outcome.h"

using recording::Outcome;
using recording::outcome_name;
using recording::response_for;

namespace {

struct Expected {
    Outcome outcome;
    int status;
    const char* body;
    const char* name;
};

// CONTRACT.md's response table, row by row.
const Expected kTable[] = {
    {Outcome::queued, 202, R"({"status":"queued"})", "queued"},
    {Outcome::sampled_out, 200, R"({"status":"sampled_out"})", "sampled_out"},
    {Outcome::method_not_allowed, 405, R"({"error":"method_not_allowed"})", "method_not_allowed"},
    {Outcome::unknown_site, 404, R"({"error":"unknown_site"})", "unknown_site"},
    {Outcome::site_disabled, 403, R"({"error":"site_disabled"})", "site_disabled"},
    {Outcome::unsupported_encoding, 415, R"({"error":"unsupported_encoding"})", "unsupported_encoding"},
    {Outcome::invalid_encoding, 400, R"({"error":"invalid_encoding"})", "invalid_encoding"},
    {Outcome::payload_too_large, 413, R"({"error":"payload_too_large"})", "payload_too_large"},
    {Outcome::invalid_json, 400, R"({"error":"invalid_json"})", "invalid_json"},
    {Outcome::invalid_session_id, 400, R"({"error":"invalid_session_id"})", "invalid_session_id"},
    {Outcome::invalid_seq, 400, R"({"error":"invalid_seq"})", "invalid_seq"},
    {Outcome::invalid_events, 400, R"({"error":"invalid_events"})", "invalid_events"},
    {Outcome::quota_exceeded, 429, R"({"error":"quota_exceeded"})", "quota_exceeded"},
    {Outcome::queue_unavailable, 503, R"({"error":"queue_unavailable"})", "queue_unavailable"},
};

}  // namespace

TEST(Outcome, EveryContractRowHasItsStatusAndExactBody)
{
    for (const Expected& row : kTable) {
        SCOPED_TRACE(row.name);
        recording::Response response = response_for(row.outcome);
        EXPECT_EQ(response.status, row.status);
        EXPECT_EQ(response.body, row.body);
    }
}

TEST(Outcome, NamesMatchTheContractsErrorAndStatusStrings)
{
    for (const Expected& row : kTable) {
        EXPECT_EQ(outcome_name(row.outcome), row.name);
    }
}

TEST(Outcome, BodyEmbedsTheName)
{
    // {"error":"<name>"} or {"status":"<name>"}: the body and the log name agree.
    for (const Expected& row : kTable) {
        std::string body(response_for(row.outcome).body);
        std::string name(outcome_name(row.outcome));
        EXPECT_NE(body.find("\"" + name + "\""), std::string::npos) << body;
    }
}

TEST(Outcome, OnlyQueuedAndSampledOutAreSuccesses)
{
    for (const Expected& row : kTable) {
        bool success = row.outcome == Outcome::queued || row.outcome == Outcome::sampled_out;
        int status = response_for(row.outcome).status;
        EXPECT_EQ(status < 300, success) << row.name;
        std::string body(response_for(row.outcome).body);
        EXPECT_EQ(body.rfind(success ? R"({"status":)" : R"({"error":)", 0), 0u) << body;
    }
}

TEST(Outcome, NamesAreDistinct)
{
    std::set<std::string> names;
    for (const Expected& row : kTable) {
        names.emplace(outcome_name(row.outcome));
    }
    names.emplace(outcome_name(Outcome::internal_error));
    EXPECT_EQ(names.size(), std::size(kTable) + 1);
}

TEST(Outcome, InternalErrorIs500)
{
    recording::Response response = response_for(Outcome::internal_error);
    EXPECT_EQ(response.status, 500);
    EXPECT_EQ(response.body, R"({"error":"internal"})");
    EXPECT_EQ(outcome_name(Outcome::internal_error), "internal");
}
