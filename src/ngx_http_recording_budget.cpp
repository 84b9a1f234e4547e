// The daily session budget step. The decision of a session is Redis's (the
// script of core budget.h: exact across workers and servers); this file
// sends it, remembers the answers of the day, and fails open.

#include "ngx_http_recording_budget.h"

#include <exception>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>

#include <hiredis/hiredis.h>

#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_stats.h"

namespace {

using Waiter = ngx_http_recording_waiter_t;

recording::BudgetDecisions decisions;     // this worker's, of the day
std::unordered_set<std::string> warned;   // sites whose budget did not parse

class BudgetCall final : public RedisCall {
public:
    BudgetCall(Waiter *waiter, std::string scope, std::string site_id, std::string session_id, int64_t day)
        : waiter_(waiter), scope_(std::move(scope)), site_id_(std::move(site_id)),
          session_id_(std::move(session_id)), day_(day)
    {
    }

    void on_reply(const redisReply *reply) noexcept override
    {
        bool admitted = true;  // fail open
        if (reply != nullptr && reply->type == REDIS_REPLY_INTEGER) {
            admitted = reply->integer != 0;
            try {
                decisions.remember(scope_, site_id_, session_id_, day_, admitted);
            } catch (const std::exception &) {
                // not remembered: the next batch asks again
            }
        } else {
            ngx_http_recording_count(&ngx_http_recording_stats_t::budget_unavailable);
        }
        waiter_->budget_decided(waiter_, admitted);
        delete this;
    }

private:
    Waiter *waiter_;
    std::string scope_;  // the Redis's id: sites are a server's
    std::string site_id_;
    std::string session_id_;
    int64_t day_;
};

}  // namespace

ngx_http_recording_budget_answer_e ngx_http_recording_budget_check(ngx_http_recording_loc_conf_t *conf,
    std::string_view site_id, std::string_view session_id, const recording::DailyBudget &budget, int64_t now_ms,
    ngx_http_recording_waiter_of_pt waiter_of, void *data)
{
    using Answer = ngx_http_recording_budget_answer_e;
    int64_t day = recording::utc_day(now_ms);
    std::string_view scope = ngx_http_recording_view(conf->redis->id);
    if (std::optional<bool> known = decisions.find(scope, site_id, session_id, day)) {
        return *known ? Answer::admitted : Answer::refused;
    }

    // Everything that may throw comes before send().
    recording::BudgetKeys keys = recording::budget_keys(site_id, day);
    std::string command =
        recording::format_budget_check(keys, session_id, recording::sessions_allowed_now(budget, now_ms));
    Waiter *waiter = waiter_of(data);
    auto call = std::make_unique<BudgetCall>(waiter, std::string(scope), std::string(site_id),
                                             std::string(session_id), day);
    RedisTimeouts timeouts{conf->redis_connect_timeout, conf->redis_read_timeout};
    if (!conf->redis->route->send(keys.decisions, command, call.get(), timeouts)) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::budget_unavailable);
        return Answer::admitted;
    }
    waiter->in_flight = true;
    call.release();  // the reply deletes it
    ngx_http_recording_count(&ngx_http_recording_stats_t::budget_commands);
    return Answer::pending;
}

void ngx_http_recording_budget_warn_unreadable(ngx_log_t *log, std::string_view site_id)
{
    if (!warned.emplace(site_id).second) {
        return;
    }
    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "recording: site \"%*s\": \"daily_sessions\" is not a whole number >= 0, no budget applies",
                  site_id.size(), site_id.data());
}
