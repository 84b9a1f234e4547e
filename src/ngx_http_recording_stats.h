// The module's live figures, summed over all workers: counters in shared
// memory, updated with atomic additions (never a lock on the hot path).
#pragma once

#include "ngx_http_recording_nginx.h"

#include "metrics.h"

constexpr ngx_uint_t NGX_HTTP_RECORDING_MAX_SERVERS = 32;
constexpr size_t NGX_HTTP_RECORDING_SERVER_NAME_LEN = 128;

struct ngx_http_recording_stats_t {
    ngx_atomic_t  batches[recording::kOutcomeCount];
    ngx_atomic_t  preflights;
    ngx_atomic_t  received_bytes;
    ngx_atomic_t  decoded_bytes;

    ngx_atomic_t  rpush_commands;
    ngx_atomic_t  hmget_commands;
    ngx_atomic_t  pushed_elements;
    ngx_atomic_t  replies_ok;
    ngx_atomic_t  replies_error;
    ngx_atomic_t  replies_none;
    ngx_atomic_t  reconnects;
    ngx_atomic_t  inflight_elements;
    ngx_atomic_t  push_duration[recording::kPushDurationBuckets];
    ngx_atomic_t  push_duration_sum_us;

    ngx_atomic_t  pending_bytes;
    ngx_atomic_t  pending_limit_refusals;
    ngx_atomic_t  spooled_elements;
    ngx_atomic_t  replayed_elements;
    ngx_atomic_t  resent_elements;
    ngx_atomic_t  spool_full_refusals;
    ngx_atomic_t  spool_write_failures;
    ngx_atomic_t  spool_bytes;   // as last seen by a worker
    ngx_atomic_t  spool_files;

    ngx_atomic_t  site_cache_hits;
    ngx_atomic_t  site_cache_misses;
    ngx_atomic_t  site_cache_entries;
    ngx_atomic_t  budget_commands;      // sessions' first batches asked of Redis
    ngx_atomic_t  budget_unavailable;   // ... that Redis could not answer: admitted
    ngx_atomic_t  websocket_connections;       // upgraded
    ngx_atomic_t  websocket_connections_open;  // ... open now
    ngx_atomic_t  websocket_messages;          // data messages read

    // Redis servers by name; slots stay across reloads.
    ngx_uint_t    nservers;
    struct {
        u_char        name[NGX_HTTP_RECORDING_SERVER_NAME_LEN];
        size_t        len;
        ngx_atomic_t  connections;
    } servers[NGX_HTTP_RECORDING_MAX_SERVERS];
};

// This cycle's figures; null when no location uses the module.
extern ngx_http_recording_stats_t *ngx_http_recording_stats;

inline void ngx_http_recording_count(ngx_atomic_t ngx_http_recording_stats_t::*counter,
    ngx_atomic_int_t n = 1) noexcept
{
    if (ngx_http_recording_stats != nullptr) {
        (void) ngx_atomic_fetch_add(&(ngx_http_recording_stats->*counter), n);
    }
}

inline void ngx_http_recording_count_outcome(size_t outcome) noexcept
{
    if (ngx_http_recording_stats != nullptr) {
        (void) ngx_atomic_fetch_add(&ngx_http_recording_stats->batches[outcome], 1);
    }
}

// One RPUSH round trip into the histogram.
inline void ngx_http_recording_count_push_duration(uint64_t us) noexcept
{
    if (ngx_http_recording_stats != nullptr) {
        (void) ngx_atomic_fetch_add(&ngx_http_recording_stats->push_duration[recording::push_duration_bucket(us)], 1);
        (void) ngx_atomic_fetch_add(&ngx_http_recording_stats->push_duration_sum_us,
                                    static_cast<ngx_atomic_int_t>(us));
    }
}

// The counter of workers connected to a server (by slot), or null.
ngx_atomic_t *ngx_http_recording_server_connections(ngx_int_t slot) noexcept;

// A monotonic clock in microseconds, for round trips.
uint64_t ngx_http_recording_now_us() noexcept;

struct ngx_http_recording_main_conf_t;

// The zone "recording_stats": of a fixed size, so that a reload keeps the
// figures whatever else it changes. Its setup gives each configured Redis
// server its slot (by name, so that a reload keeps them too).
ngx_int_t ngx_http_recording_stats_init_zone(ngx_conf_t *cf,
    ngx_http_recording_main_conf_t *rmcf);
