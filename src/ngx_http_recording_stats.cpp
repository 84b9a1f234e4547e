// The module's figures in shared memory: a leaf that every glue file counts
// in; ngx_http_recording_status.cpp shows them.

#include "ngx_http_recording_stats.h"

#include <ctime>
#include <exception>
#include <string>

#include "ngx_http_recording_conf.h"

ngx_http_recording_stats_t *ngx_http_recording_stats;

namespace {

ngx_str_t stats_zone_name = ngx_string("recording_stats");

// Room for the figures and the slab pool's own bookkeeping.
constexpr size_t kStatsZoneSize = 64 * 1024;

void assign_server_slots(ngx_http_recording_stats_t *stats, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf->servers.elts);
    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        ngx_str_t name = servers[i]->name;
        name.len = ngx_min(name.len, NGX_HTTP_RECORDING_SERVER_NAME_LEN);
        servers[i]->stats_slot = NGX_ERROR;

        ngx_uint_t slot;
        for (slot = 0; slot < stats->nservers; slot++) {
            if (stats->servers[slot].len == name.len
                && ngx_memcmp(stats->servers[slot].name, name.data, name.len) == 0)
            {
                break;
            }
        }
        if (slot == stats->nservers) {
            if (slot == NGX_HTTP_RECORDING_MAX_SERVERS) {
                continue;  // shown with no connections
            }
            ngx_memcpy(stats->servers[slot].name, name.data, name.len);
            stats->servers[slot].len = name.len;
            stats->nservers++;
        }
        servers[i]->stats_slot = static_cast<ngx_int_t>(slot);
    }
}

ngx_int_t init_stats_zone(ngx_shm_zone_t *zone, void *data) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);
    auto *stats = static_cast<ngx_http_recording_stats_t *>(shpool->data);

    if (data == nullptr && !zone->shm.exists) {
        stats = static_cast<ngx_http_recording_stats_t *>(
            ngx_slab_calloc(shpool, sizeof(ngx_http_recording_stats_t)));
        if (stats == nullptr) {
            return NGX_ERROR;
        }
        shpool->data = stats;
    }
    // On a reload the old zone is reused as it is: the figures carry on.
    ngx_http_recording_stats = stats;
    assign_server_slots(stats, rmcf);
    return NGX_OK;
}

}  // namespace

ngx_int_t ngx_http_recording_stats_init_zone(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf)
{
    ngx_shm_zone_t *zone = ngx_shared_memory_add(cf, &stats_zone_name, kStatsZoneSize, &ngx_http_recording_module);
    if (zone == nullptr) {
        return NGX_ERROR;
    }
    if (zone->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "shared memory zone \"%V\" is already used", &stats_zone_name);
        return NGX_ERROR;
    }
    zone->init = init_stats_zone;
    zone->data = rmcf;
    return NGX_OK;
}

ngx_atomic_t *ngx_http_recording_server_connections(ngx_int_t slot) noexcept
{
    if (ngx_http_recording_stats == nullptr || slot < 0) {
        return nullptr;
    }
    return &ngx_http_recording_stats->servers[slot].connections;
}

uint64_t ngx_http_recording_now_us() noexcept
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}
