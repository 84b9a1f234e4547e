// The daily session budget step (the site hash's `daily_sessions`): after
// sampling, before queueing. A session's first batch asks Redis, which
// decides and counts in one atomic step for the whole fleet; the worker
// remembers the answer for the day (ngx_http_recording_budget.cpp).
#pragma once

#include "ngx_http_recording_conf.h"

#include <cstdint>
#include <string_view>

#include "budget.h"

enum class ngx_http_recording_budget_answer_e {
    admitted,
    refused,   // the day's budget is used up: 429
    pending,   // the waiter's `budget_decided` will tell, from Redis's event
};

// Decides whether the session may be recorded today. When Redis cannot
// answer, the session is admitted (and counted in budget_unavailable), not
// remembered: its next batch asks again. Throws std::bad_alloc, having
// taken nothing.
ngx_http_recording_budget_answer_e ngx_http_recording_budget_check(ngx_http_recording_loc_conf_t *conf,
    std::string_view site_id, std::string_view session_id, const recording::DailyBudget &budget, int64_t now_ms,
    ngx_http_recording_waiter_of_pt waiter_of, void *data);

// A site whose `daily_sessions` does not parse has no budget: warned about
// once per site and worker.
void ngx_http_recording_budget_warn_unreadable(ngx_log_t *log, std::string_view site_id);
