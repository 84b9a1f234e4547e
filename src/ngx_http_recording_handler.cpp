// The content handler: a POST's way through the module.
//
//   method and CORS -> site id -> read the body -> the batch's steps
//   (ngx_http_recording_batch: decode, validate, site settings, sample,
//   daily budget, enrich, RPUSH) -> answer once Redis acknowledged.
//
// A GET asking for a WebSocket goes to the handshake
// (ngx_http_recording_websocket_handshake) instead. This file keeps the
// request's state, answers it, and tells the variables what it did.

#include "ngx_http_recording_handler.h"

#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <string>

#include "ngx_http_recording_batch.h"
#include "ngx_http_recording_conf.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_stats.h"
#include "ngx_http_recording_websocket_handshake.h"
#include "outcome.h"
#include "site_settings.h"

using recording::Outcome;

namespace {

// A request's state, in its pool; destroyed by a pool cleanup.
struct RequestState : ngx_http_recording_ctx_t {
    ngx_http_request_t *request;
    ngx_http_recording_loc_conf_t *conf;
    std::string_view site_id;  // in the request pool
    ngx_http_recording_batch_t *batch = nullptr;  // once the body is read

    // What the variables tell (and the batch's own figures).
    std::optional<Outcome> outcome;
    bool preflight = false;

    ~RequestState()
    {
        if (batch != nullptr) {
            ngx_http_recording_batch_release(batch);
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

void body_read(ngx_http_request_t *r) noexcept;
recording::ContentEncoding content_encoding(ngx_http_request_t *r);
void batch_done(ngx_http_recording_batch_t *batch, Outcome outcome, bool from_redis) noexcept;
void finish(RequestState &state, Outcome outcome, bool from_redis);
void record_outcome(RequestState &state, Outcome outcome);
ngx_int_t send_response(ngx_http_request_t *r, Outcome outcome);
bool add_retry_at_midnight(ngx_http_request_t *r);
ngx_int_t answer_without_body(RequestState &state, Outcome outcome);
bool add_cors_headers(ngx_http_request_t *r);
ngx_int_t send_preflight(ngx_http_request_t *r);
ngx_str_t request_id(ngx_http_request_t *r);

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

        std::optional<std::string_view> site_id = ngx_http_recording_complex_value(r, conf->site_id);
        if (site_id) {
            state->site_id = *site_id;
        }
        if (!site_id || !recording::is_valid_site_id(*site_id)) {
            return answer_without_body(*state, Outcome::unknown_site);
        }
        if (websocket) {
            ngx_int_t rc = ngx_http_discard_request_body(r);
            return rc != NGX_OK ? rc : ngx_http_recording_websocket_handshake(r, conf, *site_id);
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

// The request body is read: the batch's steps take it.
void body_read(ngx_http_request_t *r) noexcept
{
    RequestState *state = get_state(r);
    try {
        state->batch = ngx_http_recording_batch_create(r, state->conf, state->site_id, 0, batch_done, state);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        finish(*state, Outcome::internal_error, false);
        return;
    }
    ngx_http_recording_batch_take_body(state->batch, content_encoding(r));
}

recording::ContentEncoding content_encoding(ngx_http_request_t *r)
{
    ngx_uint_t count;
    ngx_table_elt_t *header = ngx_http_recording_find_header(r, "content-encoding", &count);
    if (count > 1) {
        return recording::ContentEncoding::unsupported;  // a list in disguise
    }
    return recording::classify_content_encoding(
        header != nullptr ? ngx_http_recording_view(header->value) : std::string_view());
}

// The batch's steps are done with it (its `done`).
void batch_done(ngx_http_recording_batch_t *batch, Outcome outcome, bool from_redis) noexcept
{
    finish(*static_cast<RequestState *>(batch->owner), outcome, from_redis);
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
    std::string_view session = state.batch != nullptr ? state.batch->validated.session_id : std::string_view();
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "recording: batch refused: %s, site \"%*s\", session \"%*s\", request \"%V\"",
                  recording::outcome_name(outcome).data(), state.site_id.size(), state.site_id.data(),
                  session.size(), session.data(), &id);
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
    u_char *end = ngx_sprintf(value, "%L",
                              static_cast<int64_t>(recording::seconds_to_next_utc_midnight(ngx_http_recording_now_ms())));
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

enum class Variable : uintptr_t { outcome, session_id, queue, decoded_bytes, redis_time };

ngx_int_t get_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data) noexcept
{
    RequestState *state = get_state(r);
    char number[32];
    std::string_view text;
    if (state != nullptr) {
        const ngx_http_recording_batch_t *batch = state->batch;
        switch (static_cast<Variable>(data)) {
        case Variable::outcome:
            if (state->preflight) {
                text = "preflight";
            } else if (state->outcome) {
                text = recording::outcome_name(*state->outcome);
            }
            break;
        case Variable::session_id:
            if (batch != nullptr) {
                text = batch->validated.session_id;
            }
            break;
        case Variable::queue:
            if (batch != nullptr) {
                text = batch->queue;
            }
            break;
        case Variable::decoded_bytes:
            if (batch != nullptr && batch->decoded_bytes) {
                int n = std::snprintf(number, sizeof(number), "%zu", *batch->decoded_bytes);
                text = {number, static_cast<size_t>(n)};
            }
            break;
        case Variable::redis_time:
            if (batch != nullptr && batch->redis_time_us != 0) {  // milliseconds, to the microsecond
                int n = std::snprintf(number, sizeof(number), "%llu.%03llu",
                                      static_cast<unsigned long long>(batch->redis_time_us / 1000),
                                      static_cast<unsigned long long>(batch->redis_time_us % 1000));
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
