// The bottom of the glue: the configuration every glue file reads, and the
// waiter that links a request to the Redis work done for it. Each glue
// file declares its own functions in its own header.
#pragma once

#include "ngx_http_recording_nginx.h"

#include <cstdint>

#include "outcome.h"
#include "site_settings.h"

// How to reach Redis is configuration; the routes that do it
// (ngx_http_recording_redis.h) come above.
struct RedisTimeouts {
    ngx_msec_t connect;
    ngx_msec_t reply;
};

// Where one server listens, resolved when the configuration was read (or,
// for a cluster's nodes, when the cluster named them: always numeric).
struct RedisAddress {
    ngx_str_t       name;       // "host:port" or "unix:/path", for logs
    ngx_str_t       host;       // numeric address, NUL-terminated, or empty (unix:)
    ngx_int_t       port;
    ngx_str_t       server_name;  // the host as written, NUL-terminated: what TLS checks
    ngx_sockaddr_t  sockaddr;   // what the worker connects to
    socklen_t       socklen;
};

#if !(NGX_OPENSSL)
#error "the module needs nginx built with OpenSSL (./configure --with-http_ssl_module), as Debian's nginx is"
#endif

// TLS to Redis: the recording_redis_ssl_* directives, one set for every
// server whose recording_redis says "ssl".
struct ngx_http_recording_redis_tls_t {
    ngx_ssl_t   *ssl;                  // made at postconfiguration, when a server needs it
    ngx_flag_t   verify;
    ngx_str_t    name;                 // checked and sent as SNI; empty: each server's host
    ngx_str_t    trusted_certificate;  // empty: the system's CA store
    ngx_str_t    certificate;
    ngx_str_t    certificate_key;
    ngx_uint_t   protocols;
};

// What every new connection sends first (empty or -1: nothing).
struct RedisLogin {
    ngx_str_t  user;       // Redis 6 ACL user; empty: the default user
    ngx_str_t  password;
    ngx_int_t  db;         // SELECT; -1: none
};

class RedisRoute;

// Redis as named by one `recording_redis`, resolved when the configuration
// is read: one server, or a cluster's seed nodes. Each worker keeps its own
// route (its connections) to it.
struct ngx_http_recording_redis_server_t {
    ngx_str_t    name;        // the addresses as written, for logs and figures
    ngx_str_t    spec;        // every argument: what makes two the same
    ngx_str_t    id;          // the arguments but the password: kept in spool records
    ngx_array_t  addresses;   // of RedisAddress
    ngx_flag_t   cluster;
    ngx_flag_t   ssl;
    RedisLogin   login;
    const ngx_http_recording_redis_tls_t *tls;  // null: plain TCP
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

    ngx_http_recording_redis_tls_t  tls;
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
    ngx_flag_t                          websocket;
    ngx_msec_t                          websocket_idle_timeout;
};

// What the module keeps in a request's context (ngx_http_get_module_ctx):
// a POST's state (the handler's) or a WebSocket connection's (the
// websocket file's). Each derives from this and looks at `kind` first.
enum class ngx_http_recording_ctx_kind_e { request, websocket };

struct ngx_http_recording_ctx_t {
    ngx_http_recording_ctx_kind_e kind;
};

// The context of `r` if it is of `kind`, else null.
template <typename T>
T *ngx_http_recording_ctx(ngx_http_request_t *r, ngx_http_recording_ctx_kind_e kind) noexcept
{
    auto *ctx = static_cast<ngx_http_recording_ctx_t *>(ngx_http_get_module_ctx(r, ngx_http_recording_module));
    return ctx != nullptr && ctx->kind == kind ? static_cast<T *>(ctx) : nullptr;
}

// The link between a request and the Redis work done for it. It outlives
// the request when the client goes away first: the work then finds
// `request` null and only frees the link. The steps below the handler
// answer through its callbacks, set by the handler, and never call up into
// it: the site lookup through `site_found` (null settings: Redis could not
// answer), the budget through `budget_decided`, the queue through `pushed`.
struct ngx_http_recording_waiter_t;
using ngx_http_recording_pushed_pt = void (*)(ngx_http_recording_waiter_t *waiter,
                                              recording::Outcome outcome, uint64_t redis_time_us) noexcept;
using ngx_http_recording_site_found_pt = void (*)(ngx_http_recording_waiter_t *waiter,
                                                  const recording::SiteSettings *settings) noexcept;
using ngx_http_recording_budget_decided_pt = void (*)(ngx_http_recording_waiter_t *waiter,
                                                      bool admitted) noexcept;

struct ngx_http_recording_waiter_t {
    ngx_http_request_t                *request;
    bool                               in_flight;
    ngx_http_recording_pushed_pt       pushed;
    ngx_http_recording_site_found_pt   site_found;
    ngx_http_recording_budget_decided_pt  budget_decided;
};

// The caller's waiter, made only when a step has to wait: most batches are
// answered from caches and need none. A step calls it with the `data` its
// caller gave: the steps know batches, not where they came from.
using ngx_http_recording_waiter_of_pt = ngx_http_recording_waiter_t *(*)(void *data);
