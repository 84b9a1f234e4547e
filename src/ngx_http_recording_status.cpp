// The recording_status handler: a snapshot of the figures in shared memory
// (ngx_http_recording_stats), shown as JSON or in Prometheus's text format.

#include "ngx_http_recording_status.h"

#include <exception>
#include <string>

#include "metrics.h"

#include "ngx_http_recording_conf.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_stats.h"

namespace {

constexpr std::string_view kVersion = "0.1.0";

uint64_t load(const ngx_atomic_t &counter) noexcept
{
    return static_cast<uint64_t>(counter);  // one aligned word: a plain read is atomic
}

recording::MetricsSnapshot snapshot(const ngx_http_recording_stats_t &s,
                                    const ngx_http_recording_main_conf_t &rmcf)
{
    recording::MetricsSnapshot m;
    m.version = kVersion;
    for (size_t i = 0; i < recording::kOutcomeCount; i++) {
        m.batches[i] = load(s.batches[i]);
    }
    m.preflights = load(s.preflights);
    m.received_bytes = load(s.received_bytes);
    m.decoded_bytes = load(s.decoded_bytes);
    m.pending_bytes = load(s.pending_bytes);
    m.pending_limit_refusals = load(s.pending_limit_refusals);
    m.rpush_commands = load(s.rpush_commands);
    m.hmget_commands = load(s.hmget_commands);
    m.pushed_elements = load(s.pushed_elements);
    m.replies_ok = load(s.replies_ok);
    m.replies_error = load(s.replies_error);
    m.replies_none = load(s.replies_none);
    m.reconnects = load(s.reconnects);
    m.inflight_elements = load(s.inflight_elements);
    for (size_t i = 0; i < recording::kPushDurationBuckets; i++) {
        m.push_duration[i] = load(s.push_duration[i]);
    }
    m.push_duration_sum_us = load(s.push_duration_sum_us);
    m.spooled_elements = load(s.spooled_elements);
    m.replayed_elements = load(s.replayed_elements);
    m.resent_elements = load(s.resent_elements);
    m.spool_full_refusals = load(s.spool_full_refusals);
    m.spool_write_failures = load(s.spool_write_failures);
    m.spool_bytes = load(s.spool_bytes);
    m.spool_files = load(s.spool_files);
    m.site_cache_hits = load(s.site_cache_hits);
    m.site_cache_misses = load(s.site_cache_misses);
    m.site_cache_entries = load(s.site_cache_entries);
    m.budget_commands = load(s.budget_commands);
    m.budget_unavailable = load(s.budget_unavailable);
    m.websocket_connections = load(s.websocket_connections);
    m.websocket_connections_open = load(s.websocket_connections_open);
    m.websocket_messages = load(s.websocket_messages);

    // The servers of this configuration, not every one ever seen.
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf.servers.elts);
    for (ngx_uint_t i = 0; i < rmcf.servers.nelts; i++) {
        recording::ServerMetrics server;
        server.name.assign(reinterpret_cast<const char *>(servers[i]->name.data), servers[i]->name.len);
        ngx_atomic_t *connections = ngx_http_recording_server_connections(servers[i]->stats_slot);
        server.connections = connections != nullptr ? load(*connections) : 0;
        m.servers.push_back(std::move(server));
    }
    return m;
}

// Answers with `body`, copied to the request's pool to outlive this call.
ngx_int_t send_status(ngx_http_request_t *r, const std::string &body, std::string_view content_type)
{
    auto *copy = static_cast<char *>(ngx_pnalloc(r->pool, body.size()));
    if (copy == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(copy, body.data(), body.size());
    return ngx_http_recording_send(r, NGX_HTTP_OK, content_type, {copy, body.size()});
}

}  // namespace

ngx_int_t ngx_http_recording_status_handler(ngx_http_request_t *r) noexcept
{
    if (ngx_int_t rc = ngx_http_recording_open_page(r); rc != NGX_OK) {
        return rc;
    }
    if (ngx_http_recording_stats == nullptr) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }
    try {
        auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
            ngx_http_get_module_main_conf(r, ngx_http_recording_module));
        recording::MetricsSnapshot m = snapshot(*ngx_http_recording_stats, *rmcf);

        ngx_str_t format = ngx_null_string;
        (void) ngx_http_arg(r, (u_char *) "format", 6, &format);
        ngx_uint_t count;
        ngx_table_elt_t *accept = ngx_http_recording_find_header(r, "accept", &count);
        std::string_view accept_value;
        if (accept != nullptr) {
            accept_value = ngx_http_recording_view(accept->value);
        }
        if (recording::wants_prometheus(ngx_http_recording_view(format), accept_value)) {
            return send_status(r, recording::render_prometheus(m), "text/plain; version=0.0.4; charset=utf-8");
        }
        return send_status(r, recording::render_json(m), "application/json");
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: status: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
