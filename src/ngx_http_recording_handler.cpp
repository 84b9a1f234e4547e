// The content handler: one batch's path through the module.
//
//   method and CORS -> site id -> read the body -> decode -> validate
//   -> site settings (shared cache, else Redis) -> sample
//   -> daily budget (the worker's memory, else Redis) -> enrich
//   -> RPUSH -> answer once Redis acknowledged.
//
// Each step's work is done in the file named after it (the core's
// body_decoder, batch_validator, site_settings, sampling, budget,
// enrichment and redis_protocol; the glue's body, site, budget and queue);
// this file only orders the steps, keeps the request's state and answers.

#include "ngx_http_recording_handler.h"

#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "batch_validator.h"
#include "enrichment.h"
#include "ngx_http_recording_body.h"
#include "ngx_http_recording_budget.h"
#include "ngx_http_recording_conf.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_queue.h"
#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_site.h"
#include "ngx_http_recording_stats.h"
#include "ngx_http_recording_websocket.h"
#include "outcome.h"
#include "redis_protocol.h"
#include "sampling.h"

using recording::Outcome;

namespace {

using Waiter = ngx_http_recording_waiter_t;

// A request's state, in its pool; destroyed by a pool cleanup.
struct RequestState : ngx_http_recording_ctx_t {
    ngx_http_request_t *request;
    ngx_http_recording_loc_conf_t *conf;
    std::string_view site_id;  // in the request pool
    std::optional<recording::BodyDecoder> decoder;
    recording::ValidatedBatch batch;
    uint32_t bucket = 0;       // the session's sampling bucket: its queue shard
    Waiter *waiter = nullptr;

    // What the variables tell.
    std::optional<Outcome> outcome;
    bool preflight = false;
    std::string queue;                        // the key pushed to
    std::optional<size_t> decoded_bytes;
    std::optional<uint64_t> redis_time_us;    // from sending RPUSH to its acknowledgement

    ~RequestState()
    {
        if (waiter == nullptr) {
            return;
        }
        if (waiter->in_flight) {
            waiter->request = nullptr;  // the call frees it
        } else {
            delete waiter;
        }
    }
};

void destroy_state(void *data) noexcept
{
    static_cast<RequestState *>(data)->~RequestState();
}

RequestState *create_state(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf)
{
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(RequestState));
    if (cln == nullptr) {
        return nullptr;
    }
    auto *state = new (cln->data) RequestState{};
    state->kind = ngx_http_recording_ctx_kind_e::request;
    state->request = r;
    state->conf = conf;
    cln->handler = destroy_state;
    ngx_http_set_ctx(r, state, ngx_http_recording_module);
    return state;
}

RequestState *get_state(ngx_http_request_t *r)
{
    return ngx_http_recording_ctx<RequestState>(r, ngx_http_recording_ctx_kind_e::request);
}

// The steps, in the order a batch meets them; each is defined below in
// that order, after the handler.
Outcome decode_and_validate(RequestState &state);
void body_read(ngx_http_request_t *r) noexcept;
void look_up_site(RequestState &state);
void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept;
void continue_with_site(RequestState &state, const recording::SiteSettings &site, bool from_redis);
void budget_decided(Waiter *waiter, bool admitted) noexcept;
void enrich_and_push(RequestState &state, bool from_redis);
recording::IngestFields ingest_fields(RequestState &state);
void push(RequestState &state, const recording::QueueElement &element, unsigned shard, bool from_redis);
void pushed(Waiter *waiter, Outcome outcome, uint64_t redis_time_us) noexcept;
void finish(RequestState &state, Outcome outcome, bool from_redis);
void record_outcome(RequestState &state, Outcome outcome);
ngx_int_t send_response(ngx_http_request_t *r, Outcome outcome);
bool add_retry_at_midnight(ngx_http_request_t *r);
ngx_int_t answer_without_body(RequestState &state, Outcome outcome);
bool add_cors_headers(ngx_http_request_t *r);
ngx_int_t send_preflight(ngx_http_request_t *r);
std::optional<std::string_view> complex_value(ngx_http_request_t *r, ngx_http_complex_value_t *cv);
int64_t now_ms();
ngx_str_t request_id(ngx_http_request_t *r);

Waiter *waiter_for(RequestState &state)
{
    if (state.waiter == nullptr) {
        state.waiter = new Waiter{state.request, false, pushed, site_found, budget_decided};
    }
    return state.waiter;
}

Waiter *waiter_of_state(void *state)
{
    return waiter_for(*static_cast<RequestState *>(state));
}

// Resumes a request when its Redis call completes; false when the request
// is gone (the waiter is then freed).
RequestState *resume(Waiter *waiter)
{
    waiter->in_flight = false;
    if (waiter->request == nullptr) {
        delete waiter;
        return nullptr;
    }
    return get_state(waiter->request);
}

}  // namespace

ngx_int_t ngx_http_recording_handler(ngx_http_request_t *r) noexcept
{
    try {
        auto *conf = static_cast<ngx_http_recording_loc_conf_t *>(
            ngx_http_get_module_loc_conf(r, ngx_http_recording_module));

        RequestState *state = create_state(r, conf);
        if (state == nullptr || !add_cors_headers(r)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        if (r->method == NGX_HTTP_OPTIONS) {
            state->preflight = true;
            ngx_http_recording_count(&ngx_http_recording_stats_t::preflights);
            ngx_int_t rc = ngx_http_discard_request_body(r);
            return rc != NGX_OK ? rc : send_preflight(r);
        }
        bool websocket = conf->websocket && ngx_http_recording_websocket_requested(r);
        if (r->method != NGX_HTTP_POST && !websocket) {
            return answer_without_body(*state, Outcome::method_not_allowed);
        }

        std::optional<std::string_view> site_id = complex_value(r, conf->site_id);
        if (site_id) {
            state->site_id = *site_id;
        }
        if (!site_id || !recording::is_valid_site_id(*site_id)) {
            return answer_without_body(*state, Outcome::unknown_site);
        }
        if (websocket) {
            ngx_int_t rc = ngx_http_discard_request_body(r);
            return rc != NGX_OK ? rc : ngx_http_recording_websocket_start(r, conf, *site_id);
        }

        ngx_int_t rc = ngx_http_read_client_request_body(r, body_read);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }
        return NGX_DONE;
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

namespace {

// --- Body --------------------------------------------------------------------

Outcome decode_and_validate(RequestState &state)
{
    ngx_http_request_t *r = state.request;
    ngx_http_recording_loc_conf_t *conf = state.conf;

    ngx_uint_t count;
    ngx_table_elt_t *header = ngx_http_recording_find_header(r, "content-encoding", &count);
    recording::ContentEncoding encoding = recording::classify_content_encoding(
        header != nullptr ? ngx_http_recording_view(header->value) : std::string_view());
    if (count > 1) {
        encoding = recording::ContentEncoding::unsupported;  // a list in disguise
    }
    if (encoding == recording::ContentEncoding::unsupported) {
        return Outcome::unsupported_encoding;
    }

    state.decoder.emplace(encoding, conf->max_decoded_size);
    if (ngx_http_recording_decode_body(r, *state.decoder) != NGX_OK) {
        return Outcome::internal_error;
    }
    switch (state.decoder->finish()) {
    case recording::DecodeStatus::invalid:
        return Outcome::invalid_encoding;
    case recording::DecodeStatus::too_large:
        return Outcome::payload_too_large;
    case recording::DecodeStatus::ok:
        break;
    }
    state.decoded_bytes = state.decoder->decoded().size();
    ngx_http_recording_count(&ngx_http_recording_stats_t::decoded_bytes,
                             static_cast<ngx_atomic_int_t>(*state.decoded_bytes));

    recording::ValidationLimits limits;
    limits.max_events = conf->max_events;
    limits.max_depth = static_cast<unsigned>(conf->max_depth);
    state.batch = recording::validate_batch(state.decoder->decoded(), limits);
    return state.batch.valid ? Outcome::queued : state.batch.error;
}

void body_read(ngx_http_request_t *r) noexcept
{
    RequestState *state = get_state(r);
    ngx_http_recording_count(&ngx_http_recording_stats_t::received_bytes,
                             static_cast<ngx_atomic_int_t>(ngx_http_recording_body_size(r)));
    try {
        Outcome outcome = decode_and_validate(*state);
        if (outcome != Outcome::queued) {
            finish(*state, outcome, false);
            return;
        }
        look_up_site(*state);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        finish(*state, Outcome::internal_error, false);
    }
}

// --- Site settings -----------------------------------------------------------

void look_up_site(RequestState &state)
{
    recording::SiteSettings settings;
    switch (ngx_http_recording_site_look_up(state.conf, state.site_id, waiter_of_state, &state, &settings))
    {
    case ngx_http_recording_site_answer_e::ready:
        continue_with_site(state, settings, false);
        break;
    case ngx_http_recording_site_answer_e::unavailable:
        finish(state, Outcome::queue_unavailable, false);
        break;
    case ngx_http_recording_site_answer_e::pending:
        break;  // site_found() goes on
    }
}

// The site lookup's word, when it had to ask Redis (the waiter's
// `site_found`); null settings: Redis could not answer.
void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept
{
    RequestState *state = resume(waiter);
    if (state == nullptr) {
        return;
    }
    try {
        if (settings != nullptr) {
            continue_with_site(*state, *settings, true);
        } else {
            finish(*state, Outcome::queue_unavailable, true);
        }
    } catch (const std::exception &) {
        finish(*state, Outcome::internal_error, true);
    }
}

// --- Sampling and enrichment -------------------------------------------------

void continue_with_site(RequestState &state, const recording::SiteSettings &site, bool from_redis)
{
    if (site.status == recording::SiteStatus::unknown) {
        finish(state, Outcome::unknown_site, from_redis);
        return;
    }
    if (site.status == recording::SiteStatus::disabled) {
        finish(state, Outcome::site_disabled, from_redis);
        return;
    }

    state.bucket = recording::session_bucket(state.site_id, state.batch.session_id);
    if (!recording::is_sampled_in(state.bucket, site.sample_rate)) {
        finish(state, Outcome::sampled_out, from_redis);
        return;
    }

    if (site.budget_unreadable) {
        ngx_http_recording_budget_warn_unreadable(state.request->connection->log, state.site_id);
    }
    if (site.budget) {
        switch (ngx_http_recording_budget_check(state.conf, state.site_id, state.batch.session_id, *site.budget,
                                                now_ms(), waiter_of_state, &state))
        {
        case ngx_http_recording_budget_answer_e::refused:
            finish(state, Outcome::quota_exceeded, from_redis);
            return;
        case ngx_http_recording_budget_answer_e::pending:
            return;  // budget_decided() goes on
        case ngx_http_recording_budget_answer_e::admitted:
            break;
        }
    }
    enrich_and_push(state, from_redis);
}

// The budget's word, when it had to ask Redis (the waiter's `budget_decided`).
void budget_decided(Waiter *waiter, bool admitted) noexcept
{
    RequestState *state = resume(waiter);
    if (state == nullptr) {
        return;
    }
    try {
        if (admitted) {
            enrich_and_push(*state, true);
        } else {
            finish(*state, Outcome::quota_exceeded, true);
        }
    } catch (const std::exception &) {
        finish(*state, Outcome::internal_error, true);
    }
}

void enrich_and_push(RequestState &state, bool from_redis)
{
    std::string ingest = recording::ingest_member(ingest_fields(state));
    recording::QueueElement element(state.decoder->decoded(), state.batch, ingest);
    unsigned shard = recording::queue_shard(state.bucket, static_cast<unsigned>(state.conf->queue_shards));
    push(state, element, shard, from_redis);
}

recording::IngestFields ingest_fields(RequestState &state)
{
    ngx_http_request_t *r = state.request;
    recording::IngestFields fields;
    fields.site_id = state.site_id;
    fields.received_at_ms = now_ms();
    fields.ip = ngx_http_recording_view(r->connection->addr_text);
    if (r->headers_in.user_agent != nullptr) {
        fields.user_agent = ngx_http_recording_view(r->headers_in.user_agent->value);
    }
    fields.country = complex_value(r, state.conf->country);
    ngx_str_t id = request_id(r);
    if (id.data != nullptr) {
        fields.request_id = ngx_http_recording_view(id);
    }
    return fields;
}

int64_t now_ms()
{
    ngx_time_t *tp = ngx_timeofday();
    return static_cast<int64_t>(tp->sec) * 1000 + static_cast<int64_t>(tp->msec);
}

std::optional<std::string_view> complex_value(ngx_http_request_t *r, ngx_http_complex_value_t *cv)
{
    ngx_str_t value;
    if (cv == nullptr || ngx_http_complex_value(r, cv, &value) != NGX_OK) {
        return std::nullopt;
    }
    return ngx_http_recording_view(value);
}

// --- Queueing ----------------------------------------------------------------

void push(RequestState &state, const recording::QueueElement &element, unsigned shard, bool from_redis)
{
    state.queue = recording::queue_key(shard);
    if (!ngx_http_recording_queue_push(state.conf, state.queue, element, waiter_for(state))) {
        finish(state, Outcome::queue_unavailable, from_redis);
        return;
    }
    // The element is copied into its RPUSH: the decoded document (up to the
    // limit, 2 MiB) need not wait for Redis with the request.
    state.decoder.reset();
}

// The queue's word on a request's element (the waiter's `pushed`).
void pushed(Waiter *waiter, Outcome outcome, uint64_t redis_time_us) noexcept
{
    RequestState *state = resume(waiter);
    if (state == nullptr) {
        return;
    }
    if (outcome == Outcome::queued && redis_time_us != 0) {
        state->redis_time_us = redis_time_us;
    }
    finish(*state, outcome, true);
}

// --- Answering ---------------------------------------------------------------

// Answers and ends a request whose body was read.
void finish(RequestState &state, Outcome outcome, bool from_redis)
{
    ngx_http_request_t *r = state.request;
    ngx_connection_t *c = r->connection;
    record_outcome(state, outcome);
    ngx_http_finalize_request(r, send_response(r, outcome));
    if (from_redis) {
        // We run from the Redis connection's event, not the client's.
        ngx_http_run_posted_requests(c);
    }
}

// Counts the outcome and logs a refusal: one line, at info, as refusals
// are the clients' mistakes (Redis failures are logged by the client, once
// per change of state).
void record_outcome(RequestState &state, Outcome outcome)
{
    state.outcome = outcome;
    ngx_http_recording_count_outcome(static_cast<size_t>(outcome));
    if (outcome == Outcome::queued || outcome == Outcome::sampled_out) {
        return;
    }
    ngx_http_request_t *r = state.request;
    ngx_str_t id = request_id(r);
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "recording: batch refused: %s, site \"%*s\", session \"%*s\", request \"%V\"",
                  recording::outcome_name(outcome).data(), state.site_id.size(), state.site_id.data(),
                  state.batch.session_id.size(), state.batch.session_id.data(), &id);
}

ngx_str_t request_id(ngx_http_request_t *r)
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_recording_module));
    ngx_http_variable_value_t *v = ngx_http_get_indexed_variable(r, rmcf->request_id_index);
    if (v == nullptr || v->not_found) {
        return ngx_null_string;
    }
    return {v->len, v->data};
}

// A client told 503 waits this long before sending again: long enough for a
// failing Redis to be tried again (RedisClient::kRetryInterval), short
// enough that a browser still on the page sends its batch.
constexpr std::string_view kRetryAfterSeconds = "5";

bool add_retry_at_midnight(ngx_http_request_t *r)
{
    auto *value = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (value == nullptr) {
        return false;
    }
    u_char *end = ngx_sprintf(value, "%L", static_cast<int64_t>(recording::seconds_to_next_utc_midnight(now_ms())));
    return ngx_http_recording_add_header(r, "Retry-After", ngx_str_t{static_cast<size_t>(end - value), value});
}

// Sends the contract's answer for `outcome`; returns what to finalize with.
ngx_int_t send_response(ngx_http_request_t *r, Outcome outcome)
{
    recording::Response response = recording::response_for(outcome);
    if (outcome == Outcome::method_not_allowed && !ngx_http_recording_add_header(r, "Allow", "POST, OPTIONS")) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    // Redis or the spool cannot take batches now: when to try again.
    if (outcome == Outcome::queue_unavailable && !ngx_http_recording_add_header(r, "Retry-After", kRetryAfterSeconds)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    // The day's budget is used up: a new session may start at midnight, UTC.
    if (outcome == Outcome::quota_exceeded && !add_retry_at_midnight(r)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_recording_send(r, static_cast<ngx_uint_t>(response.status), "application/json",
                                   response.body);
}

ngx_int_t answer_without_body(RequestState &state, Outcome outcome)
{
    record_outcome(state, outcome);
    ngx_int_t rc = ngx_http_discard_request_body(state.request);
    if (rc != NGX_OK) {
        return rc;
    }
    return send_response(state.request, outcome);
}

// CONTRACT.md: every answer to a request with an Origin carries these.
bool add_cors_headers(ngx_http_request_t *r)
{
    ngx_uint_t count;
    ngx_table_elt_t *origin = ngx_http_recording_find_header(r, "origin", &count);
    if (origin == nullptr) {
        return true;
    }
    return ngx_http_recording_add_header(r, "Access-Control-Allow-Origin", origin->value)
           && ngx_http_recording_add_header(r, "Access-Control-Allow-Credentials", "true")
           && ngx_http_recording_add_header(r, "Vary", "Origin");
}

ngx_int_t send_preflight(ngx_http_request_t *r)
{
    if (!ngx_http_recording_add_header(r, "Access-Control-Allow-Methods", "POST, OPTIONS")
        || !ngx_http_recording_add_header(r, "Access-Control-Allow-Headers", "Content-Type, Content-Encoding")
        || !ngx_http_recording_add_header(r, "Access-Control-Max-Age", "86400"))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;
    return ngx_http_send_header(r);
}

// --- Variables ---------------------------------------------------------------

enum class Variable : uintptr_t { outcome, session_id, queue, decoded_bytes, redis_time, websocket_messages };

ngx_int_t get_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data) noexcept
{
    RequestState *state = get_state(r);
    char number[32];
    std::string_view text;
    if (static_cast<Variable>(data) == Variable::websocket_messages) {
        int64_t messages = ngx_http_recording_websocket_messages(r);
        if (messages >= 0) {
            int n = std::snprintf(number, sizeof(number), "%lld", static_cast<long long>(messages));
            text = {number, static_cast<size_t>(n)};
        }
    } else if (state != nullptr) {
        switch (static_cast<Variable>(data)) {
        case Variable::outcome:
            if (state->preflight) {
                text = "preflight";
            } else if (state->outcome) {
                text = recording::outcome_name(*state->outcome);
            }
            break;
        case Variable::session_id:
            text = state->batch.session_id;
            break;
        case Variable::queue:
            text = state->queue;
            break;
        case Variable::decoded_bytes:
            if (state->decoded_bytes) {
                int n = std::snprintf(number, sizeof(number), "%zu", *state->decoded_bytes);
                text = {number, static_cast<size_t>(n)};
            }
            break;
        case Variable::websocket_messages:
            break;
        case Variable::redis_time:
            if (state->redis_time_us) {  // milliseconds, to the microsecond
                int n = std::snprintf(number, sizeof(number), "%llu.%03llu",
                                      static_cast<unsigned long long>(*state->redis_time_us / 1000),
                                      static_cast<unsigned long long>(*state->redis_time_us % 1000));
                text = {number, static_cast<size_t>(n)};
            }
            break;
        }
    }
    if (text.empty()) {
        v->not_found = 1;
        return NGX_OK;
    }
    auto *copy = static_cast<u_char *>(ngx_pnalloc(r->pool, text.size()));
    if (copy == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(copy, text.data(), text.size());
    v->data = copy;
    v->len = static_cast<unsigned>(text.size());
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

}  // namespace

ngx_int_t ngx_http_recording_add_variables(ngx_conf_t *cf) noexcept
{
    static struct {
        ngx_str_t name;
        Variable which;
    } variables[] = {
        {ngx_string("recording_outcome"), Variable::outcome},
        {ngx_string("recording_session_id"), Variable::session_id},
        {ngx_string("recording_queue"), Variable::queue},
        {ngx_string("recording_decoded_bytes"), Variable::decoded_bytes},
        {ngx_string("recording_redis_time"), Variable::redis_time},
        {ngx_string("recording_websocket_messages"), Variable::websocket_messages},
    };
    for (auto &variable : variables) {
        ngx_http_variable_t *v = ngx_http_add_variable(cf, &variable.name, NGX_HTTP_VAR_NOCACHEABLE);
        if (v == nullptr) {
            return NGX_ERROR;
        }
        v->get_handler = get_variable;
        v->data = static_cast<uintptr_t>(variable.which);
    }
    return NGX_OK;
}
