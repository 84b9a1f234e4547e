// ngx_http_recording_module: the module definition, its directives and their
// configuration, and the per-worker Redis connections.

#include "ngx_http_recording_conf.h"

#include <new>

#include "ngx_http_recording_cluster.h"
#include "ngx_http_recording_handler.h"
#include "ngx_http_recording_health.h"
#include "ngx_http_recording_queue.h"
#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_redis_conf.h"
#include "ngx_http_recording_redis_tls.h"
#include "ngx_http_recording_site_cache.h"
#include "ngx_http_recording_spool.h"
#include "ngx_http_recording_stats.h"
#include "ngx_http_recording_status.h"
#include "ngx_http_recording_websocket.h"
#include "memory_policy.h"

namespace {

constexpr ngx_uint_t kDefaultShards = 1;
constexpr size_t kDefaultMaxDecodedSize = 2 * 1024 * 1024;
constexpr ngx_uint_t kDefaultMaxEvents = 10000;
constexpr ngx_uint_t kDefaultMaxDepth = 128;  // the legacy layer (lua-cjson) took 1000
constexpr ngx_msec_t kDefaultRedisTimeout = 1000;
constexpr ngx_msec_t kDefaultSiteCacheTtl = 60000;
constexpr ssize_t kDefaultSiteCacheSize = 1024 * 1024;
constexpr ngx_uint_t kDefaultBatchElements = 64;
constexpr size_t kDefaultBatchSize = 1024 * 1024;
constexpr ngx_msec_t kDefaultBatchDelay = 1;
constexpr size_t kDefaultPendingLimit = 64 * 1024 * 1024;
constexpr off_t kDefaultSpoolMaxSize = off_t{1024} * 1024 * 1024;
constexpr off_t kMinSpoolMaxSize = 1024 * 1024;
constexpr ngx_msec_t kDefaultWebSocketIdleTimeout = 5 * 60 * 1000;

ngx_str_t default_redis = ngx_string("127.0.0.1:6379");

// A bound on a numeric directive, checked after nginx parsed the value; the
// message names the directive.
struct bounds_t {
    ngx_conf_post_handler_pt  post_handler;
    ngx_int_t                 low;
    ngx_int_t                 high;  // 0: none
};

char *check_bounds(ngx_conf_t *cf, void *post, void *data) noexcept
{
    auto *bounds = static_cast<bounds_t *>(post);
    auto *name = static_cast<ngx_str_t *>(cf->args->elts);
    // Every slot using this stores a machine word: ngx_uint_t, size_t or
    // ngx_msec_t.
    auto value = static_cast<ngx_int_t>(*static_cast<ngx_uint_t *>(data));

    if (value < bounds->low || (bounds->high != 0 && value > bounds->high)) {
        if (bounds->high != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must be between %i and %i, not \"%V\"",
                               &name[0], bounds->low, bounds->high, &name[1]);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must be at least %i, not \"%V\"",
                               &name[0], bounds->low, &name[1]);
        }
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

bounds_t shards_bounds = {check_bounds, 1, 65536};
bounds_t decoded_size_bounds = {check_bounds, 1, 1024 * 1024 * 1024};
bounds_t events_bounds = {check_bounds, 1, 1000000};
bounds_t depth_bounds = {check_bounds, 3, 100000};
bounds_t timeout_bounds = {check_bounds, 1, 0};
bounds_t cache_size_bounds = {check_bounds, 32 * 1024, 0};
bounds_t batch_elements_bounds = {check_bounds, 1, 100000};
bounds_t batch_size_bounds = {check_bounds, 1, 0};
bounds_t pending_limit_bounds = {check_bounds, 64 * 1024, 0};

char *set_ingest(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_health(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_spool(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;

ngx_command_t commands[] = {
    {ngx_string("recording_ingest"),
     NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
     set_ingest, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("recording_status"),
     NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
     set_status, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("recording_health"),
     NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
     set_health, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("recording_site_id"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, site_id), nullptr},

    {ngx_string("recording_country"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, country), nullptr},

    {ngx_string("recording_redis"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     set_redis, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("recording_queue_shards"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, queue_shards), &shards_bounds},

    {ngx_string("recording_max_decoded_size"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, max_decoded_size), &decoded_size_bounds},

    {ngx_string("recording_max_events"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, max_events), &events_bounds},

    {ngx_string("recording_max_depth"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, max_depth), &depth_bounds},

    {ngx_string("recording_redis_connect_timeout"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, redis_connect_timeout), &timeout_bounds},

    {ngx_string("recording_redis_read_timeout"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, redis_read_timeout), &timeout_bounds},

    {ngx_string("recording_redis_ssl_verify"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.verify), nullptr},

    {ngx_string("recording_redis_ssl_trusted_certificate"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.trusted_certificate), nullptr},

    {ngx_string("recording_redis_ssl_name"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.name), nullptr},

    {ngx_string("recording_redis_ssl_certificate"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.certificate), nullptr},

    {ngx_string("recording_redis_ssl_certificate_key"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.certificate_key), nullptr},

    {ngx_string("recording_redis_ssl_protocols"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
     ngx_conf_set_bitmask_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, tls.protocols), ngx_http_recording_redis_ssl_protocols},

    {ngx_string("recording_site_cache_ttl"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, site_cache_ttl), nullptr},

    {ngx_string("recording_site_cache_size"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, site_cache_size), &cache_size_bounds},

    {ngx_string("recording_batch_elements"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, batch_elements), &batch_elements_bounds},

    {ngx_string("recording_batch_size"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, batch_size), &batch_size_bounds},

    {ngx_string("recording_batch_delay"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, batch_delay), nullptr},

    {ngx_string("recording_websocket"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, websocket), nullptr},

    {ngx_string("recording_websocket_idle_timeout"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_recording_loc_conf_t, websocket_idle_timeout), &timeout_bounds},

    {ngx_string("recording_pending_limit"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, pending_limit), &pending_limit_bounds},

    {ngx_string("recording_spool"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
     set_spool, NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},

    {ngx_string("recording_spool_fsync"),
     NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_recording_main_conf_t, spool_fsync), nullptr},

    ngx_null_command
};

void *create_main_conf(ngx_conf_t *cf) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_recording_main_conf_t)));
    if (rmcf == nullptr) {
        return nullptr;
    }
    if (ngx_array_init(&rmcf->servers, cf->pool, 2, sizeof(ngx_http_recording_redis_server_t *))
        != NGX_OK)
    {
        return nullptr;
    }
    rmcf->site_cache_size = NGX_CONF_UNSET;
    rmcf->request_id_index = NGX_ERROR;
    rmcf->pending_limit = NGX_CONF_UNSET_SIZE;
    rmcf->spool_max_size = NGX_CONF_UNSET;
    rmcf->spool_fsync = NGX_CONF_UNSET;
    rmcf->tls.verify = NGX_CONF_UNSET;
    return rmcf;
}

char *init_main_conf(ngx_conf_t *, void *conf) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(conf);
    if (rmcf->site_cache_size == NGX_CONF_UNSET) {
        rmcf->site_cache_size = kDefaultSiteCacheSize;
    }
    ngx_conf_init_size_value(rmcf->pending_limit, kDefaultPendingLimit);
    ngx_conf_init_value(rmcf->spool_fsync, 0);
    ngx_http_recording_redis_tls_defaults(&rmcf->tls);
    return NGX_CONF_OK;
}

void *create_loc_conf(ngx_conf_t *cf) noexcept
{
    auto *conf = static_cast<ngx_http_recording_loc_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_recording_loc_conf_t)));
    if (conf == nullptr) {
        return nullptr;
    }
    // pcalloc set site_id, country and redis to null: unset.
    conf->ingest = NGX_CONF_UNSET;
    conf->queue_shards = NGX_CONF_UNSET_UINT;
    conf->max_decoded_size = NGX_CONF_UNSET_SIZE;
    conf->max_events = NGX_CONF_UNSET_UINT;
    conf->max_depth = NGX_CONF_UNSET_UINT;
    conf->redis_connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->redis_read_timeout = NGX_CONF_UNSET_MSEC;
    conf->site_cache_ttl = NGX_CONF_UNSET_MSEC;
    conf->batch_elements = NGX_CONF_UNSET_UINT;
    conf->batch_size = NGX_CONF_UNSET_SIZE;
    conf->batch_delay = NGX_CONF_UNSET_MSEC;
    conf->websocket = NGX_CONF_UNSET;
    conf->websocket_idle_timeout = NGX_CONF_UNSET_MSEC;
    return conf;
}

char *set_redis(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept
{
    auto *rlcf = static_cast<ngx_http_recording_loc_conf_t *>(conf);
    if (rlcf->redis != nullptr) {
        return const_cast<char *>("is duplicate");
    }
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);
    rlcf->redis = ngx_http_recording_add_redis_server(cf, &value[1], cf->args->nelts - 1);
    return rlcf->redis != nullptr ? NGX_CONF_OK : static_cast<char *>(NGX_CONF_ERROR);
}

// recording_spool <dir> [max_size=<size>]
char *set_spool(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(conf);
    if (rmcf->spool_path.len != 0) {
        return const_cast<char *>("is duplicate");
    }
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_str_t path = value[1];
    if (ngx_conf_full_name(cf->cycle, &path, 0) != NGX_OK) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    // NUL-terminated, for the system calls.
    rmcf->spool_path.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, path.len + 1));
    if (rmcf->spool_path.data == nullptr) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    ngx_memcpy(rmcf->spool_path.data, path.data, path.len);
    rmcf->spool_path.data[path.len] = '\0';
    rmcf->spool_path.len = path.len;

    rmcf->spool_max_size = kDefaultSpoolMaxSize;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        if (!ngx_http_recording_starts_with(value[i], "max_size=")) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown parameter \"%V\" in \"recording_spool\"", &value[i]);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        ngx_str_t size = ngx_http_recording_after(value[i], "max_size=");
        rmcf->spool_max_size = ngx_parse_offset(&size);
        if (rmcf->spool_max_size == NGX_ERROR || rmcf->spool_max_size < kMinSpoolMaxSize) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\" in \"recording_spool\": a size of at least 1m is expected",
                               &value[i]);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }
    return ngx_http_recording_spool_check(cf, rmcf);
}

char *set_ingest(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept
{
    auto *rlcf = static_cast<ngx_http_recording_loc_conf_t *>(conf);
    if (rlcf->ingest != NGX_CONF_UNSET) {
        return const_cast<char *>("is duplicate");
    }
    rlcf->ingest = 1;

    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    if (clcf->handler != nullptr) {
        return const_cast<char *>("cannot share a location with another content handler such as \"recording_status\"");
    }
    clcf->handler = ngx_http_recording_handler;

    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_recording_module));
    rmcf->ingest_used = 1;
    if (rmcf->request_id_index == NGX_ERROR) {
        static ngx_str_t request_id = ngx_string("request_id");
        rmcf->request_id_index = ngx_http_get_variable_index(cf, &request_id);
        if (rmcf->request_id_index == NGX_ERROR) {
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }
    return NGX_CONF_OK;
}

// The status and health pages each take a location of their own.
char *set_page(ngx_conf_t *cf, ngx_http_handler_pt handler) noexcept
{
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    if (clcf->handler == handler) {
        return const_cast<char *>("is duplicate");
    }
    if (clcf->handler != nullptr) {
        return const_cast<char *>("cannot share a location with another content handler such as \"recording_ingest\"");
    }
    clcf->handler = handler;
    return NGX_CONF_OK;
}

char *set_status(ngx_conf_t *cf, ngx_command_t *, void *) noexcept
{
    char *rv = set_page(cf, ngx_http_recording_status_handler);
    if (rv == NGX_CONF_OK) {
        auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
            ngx_http_conf_get_module_main_conf(cf, ngx_http_recording_module));
        rmcf->status_used = 1;
    }
    return rv;
}

char *set_health(ngx_conf_t *cf, ngx_command_t *, void *) noexcept
{
    return set_page(cf, ngx_http_recording_health_handler);
}

char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept
{
    auto *prev = static_cast<ngx_http_recording_loc_conf_t *>(parent);
    auto *conf = static_cast<ngx_http_recording_loc_conf_t *>(child);

    ngx_conf_merge_value(conf->ingest, 0, 0);
    if (conf->site_id == nullptr) {
        conf->site_id = prev->site_id;
    }
    if (conf->country == nullptr) {
        conf->country = prev->country;
    }
    if (conf->redis == nullptr) {
        conf->redis = prev->redis;
    }
    ngx_conf_merge_uint_value(conf->queue_shards, prev->queue_shards, kDefaultShards);
    ngx_conf_merge_size_value(conf->max_decoded_size, prev->max_decoded_size, kDefaultMaxDecodedSize);
    ngx_conf_merge_uint_value(conf->max_events, prev->max_events, kDefaultMaxEvents);
    ngx_conf_merge_uint_value(conf->max_depth, prev->max_depth, kDefaultMaxDepth);
    ngx_conf_merge_msec_value(conf->redis_connect_timeout, prev->redis_connect_timeout,
                              kDefaultRedisTimeout);
    ngx_conf_merge_msec_value(conf->redis_read_timeout, prev->redis_read_timeout,
                              kDefaultRedisTimeout);
    ngx_conf_merge_msec_value(conf->site_cache_ttl, prev->site_cache_ttl, kDefaultSiteCacheTtl);
    ngx_conf_merge_uint_value(conf->batch_elements, prev->batch_elements, kDefaultBatchElements);
    ngx_conf_merge_size_value(conf->batch_size, prev->batch_size, kDefaultBatchSize);
    ngx_conf_merge_msec_value(conf->batch_delay, prev->batch_delay, kDefaultBatchDelay);
    ngx_conf_merge_value(conf->websocket, prev->websocket, 0);
    ngx_conf_merge_msec_value(conf->websocket_idle_timeout, prev->websocket_idle_timeout,
                              kDefaultWebSocketIdleTimeout);

    if (!conf->ingest) {
        return NGX_CONF_OK;
    }
    if (conf->site_id == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"recording_ingest\" requires \"recording_site_id\" in the same location or above");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (conf->redis == nullptr) {
        // As the legacy layer: a local Redis unless told otherwise.
        ngx_str_t address = default_redis;
        conf->redis = ngx_http_recording_add_redis_server(cf, &address, 1);
        if (conf->redis == nullptr) {
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }
    return NGX_CONF_OK;
}

ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_recording_module));
    // Every server is known by now (merge_loc_conf adds the default one).
    if (ngx_http_recording_redis_tls_init(cf, rmcf) != NGX_OK) {
        return NGX_ERROR;
    }
    if (!rmcf->ingest_used && !rmcf->status_used) {
        return NGX_OK;
    }
    // The figures' zone first: the cache's setup counts its entries there.
    if (ngx_http_recording_stats_init_zone(cf, rmcf) != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_recording_site_cache_init_zone(cf, rmcf);
}

ngx_http_recording_main_conf_t *cycle_main_conf(ngx_cycle_t *cycle) noexcept
{
    if (ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module) == nullptr) {
        return nullptr;  // no http block
    }
    return static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_recording_module));
}

ngx_int_t init_module(ngx_cycle_t *cycle) noexcept
{
    ngx_http_recording_main_conf_t *rmcf = cycle_main_conf(cycle);
    return rmcf != nullptr ? ngx_http_recording_spool_init_module(cycle, rmcf) : NGX_OK;
}

ngx_int_t init_process(ngx_cycle_t *cycle) noexcept
{
    ngx_http_recording_main_conf_t *rmcf = cycle_main_conf(cycle);
    if (rmcf == nullptr) {
        return NGX_OK;
    }
    // A snapshot's large blocks reused from one batch to the next, not
    // mapped afresh (memory_policy.h).
    if (!recording::keep_freed_memory()) {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "recording: the allocator keeps its defaults: large batches cost page faults");
    }
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf->servers.elts);
    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        ngx_http_recording_redis_server_t *s = servers[i];
        ngx_atomic_t *connections = ngx_http_recording_server_connections(s->stats_slot);
        if (s->cluster) {
            s->route = ngx_http_recording_cluster_create(s, cycle->log, connections);
        } else {
            s->route = new (std::nothrow) RedisClient(*static_cast<RedisAddress *>(s->addresses.elts),
                                                      s->login, s->tls, cycle->log, connections);
        }
        if (s->route == nullptr) {
            return NGX_ERROR;
        }
    }
    ngx_http_recording_queue_init_process(rmcf->pending_limit);
    return ngx_http_recording_spool_init_process(cycle, rmcf);
}

void exit_process(ngx_cycle_t *cycle) noexcept
{
    ngx_http_recording_main_conf_t *rmcf = cycle_main_conf(cycle);
    if (rmcf == nullptr) {
        return;
    }
    // Routes first: closing them answers what is still in flight, which
    // may go to the spool.
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf->servers.elts);
    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        delete servers[i]->route;
        servers[i]->route = nullptr;
    }
    ngx_http_recording_spool_exit_process();
    ngx_http_recording_queue_exit();
}

ngx_int_t preconfiguration(ngx_conf_t *cf) noexcept
{
    if (ngx_http_recording_add_variables(cf) != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_recording_websocket_add_variables(cf);
}

ngx_http_module_t module_ctx = {
    preconfiguration,   // preconfiguration
    postconfiguration,  // postconfiguration
    create_main_conf,   // create main configuration
    init_main_conf,     // init main configuration
    nullptr,            // create server configuration
    nullptr,            // merge server configuration
    create_loc_conf,    // create location configuration
    merge_loc_conf      // merge location configuration
};

}  // namespace

ngx_module_t ngx_http_recording_module = {
    NGX_MODULE_V1,
    &module_ctx,        // module context
    commands,           // module directives
    NGX_HTTP_MODULE,    // module type
    nullptr,            // init master
    init_module,        // init module
    init_process,       // init process
    nullptr,            // init thread
    nullptr,            // exit thread
    exit_process,       // exit process
    nullptr,            // exit master
    NGX_MODULE_V1_PADDING
};
