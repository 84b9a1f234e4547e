// The shared-memory site cache, keyed by "<redis server>/<site id>"
// (ngx_http_recording_site_cache.cpp).
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

#include "site_settings.h"

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
