// Declarations shared by the module's nginx glue: configuration, and the
// entry points of each step of a request's path (one file each).
#pragma once

#include "ngx_http_recording_nginx.h"

#include <string_view>

#include "body_decoder.h"
#include "outcome.h"
#include "site_settings.h"

#include "ngx_http_recording_redis.h"

extern "C" ngx_module_t ngx_http_recording_module;

// Redis as named by one `recording_redis`, resolved when the configuration
// is read: one server, or a cluster's seed nodes. Each worker keeps its own
// route (its connections) to it.
struct ngx_http_recording_redis_server_t {
    ngx_str_t    name;        // the addresses as written, for logs and figures
    ngx_str_t    spec;        // every argument: what makes two the same
    ngx_str_t    id;          // the arguments but the password: kept in spool records
    ngx_array_t  addresses;   // of RedisAddress
    ngx_flag_t   cluster;
    RedisLogin   login;
    RedisRoute  *route;       // this worker's
    ngx_int_t    stats_slot;  // in ngx_http_recording_stats, or NGX_ERROR
};

struct ngx_http_recording_main_conf_t {
    ngx_array_t      servers;          // of ngx_http_recording_redis_server_t *
    ngx_shm_zone_t  *site_cache;
    ssize_t          site_cache_size;
    ngx_int_t        request_id_index;
    ngx_flag_t       ingest_used;
    ngx_flag_t       status_used;

    size_t           pending_limit;    // bytes a worker holds for Redis
    ngx_str_t        spool_path;       // empty: no spool
    off_t            spool_max_size;
    ngx_flag_t       spool_fsync;
};

struct ngx_http_recording_loc_conf_t {
    ngx_flag_t                          ingest;
    ngx_http_complex_value_t           *site_id;
    ngx_http_complex_value_t           *country;
    ngx_http_recording_redis_server_t  *redis;
    ngx_uint_t                          queue_shards;
    size_t                              max_decoded_size;
    ngx_uint_t                          max_events;
    ngx_uint_t                          max_depth;
    ngx_msec_t                          redis_connect_timeout;
    ngx_msec_t                          redis_read_timeout;
    ngx_msec_t                          site_cache_ttl;
    ngx_uint_t                          batch_elements;
    size_t                              batch_size;
    ngx_msec_t                          batch_delay;
};

// The link between a request and the Redis work done for it. It outlives
// the request when the client goes away first: the work then finds
// `request` null and only frees the link.
struct ngx_http_recording_waiter_t {
    ngx_http_request_t  *request;
    bool                 in_flight;
};

// ngx_http_recording_handler.cpp: the content handler, and the variables
// telling what it did.
ngx_int_t ngx_http_recording_handler(ngx_http_request_t *r) noexcept;
ngx_int_t ngx_http_recording_add_variables(ngx_conf_t *cf) noexcept;

// Tells a request what became of its element (from the queue).
void ngx_http_recording_pushed(ngx_http_recording_waiter_t *waiter,
    recording::Outcome outcome, uint64_t redis_time_us) noexcept;

// What the module's own timers point their `data` at when they belong to no
// connection: nginx's debug logging of timers reads a connection's fd
// through every timer's `data` (ngx_event_ident), so it must not be null.
extern ngx_connection_t ngx_http_recording_no_connection;

// `recording_pending_limit` of the running configuration.
size_t ngx_http_recording_pending_limit() noexcept;

// Answers with `body`, which must live as long as the request.
ngx_int_t ngx_http_recording_send(ngx_http_request_t *r, ngx_uint_t status,
    std::string_view content_type, std::string_view body);

// The first value of a request header nginx keeps no field for, and how
// many times it was sent.
ngx_table_elt_t *ngx_http_recording_find_header(ngx_http_request_t *r,
    std::string_view lowcase_name, ngx_uint_t *count);

// ngx_http_recording_stats.cpp: the recording_status handler.
ngx_int_t ngx_http_recording_status_handler(ngx_http_request_t *r) noexcept;

// ngx_http_recording_body.cpp: feeds the body nginx read (in memory or in a
// temporary file) to the decoder.
ngx_int_t ngx_http_recording_decode_body(ngx_http_request_t *r,
    recording::BodyDecoder &decoder);
off_t ngx_http_recording_body_size(ngx_http_request_t *r);

// ngx_http_recording_site_cache.cpp: the shared-memory site cache, keyed by
// "<redis server>/<site id>".
struct ngx_http_recording_cached_site_t {
    bool                      found;   // an answer is there, fresh or not
    bool                      fresh;   // fetched less than `ttl` ago
    bool                      refresh; // expired; this caller should fetch
    recording::SiteSettings   settings;
};

ngx_int_t ngx_http_recording_site_cache_init_zone(ngx_conf_t *cf,
    ngx_http_recording_main_conf_t *rmcf);
ngx_http_recording_cached_site_t ngx_http_recording_site_cache_get(
    ngx_shm_zone_t *zone, std::string_view key, ngx_msec_t ttl,
    ngx_msec_t lease);
void ngx_http_recording_site_cache_put(ngx_shm_zone_t *zone,
    std::string_view key, const recording::SiteSettings &settings);
