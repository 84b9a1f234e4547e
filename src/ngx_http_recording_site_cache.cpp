// The site cache: answers from the Redis hashes recording:site:<id>, kept in
// a shared-memory zone that every worker sees, so that a busy site costs one
// lookup per TTL per server rather than one per request. Entries are keyed
// by the Redis server they came from and the site id, and remember when
// they were fetched, so that each location applies its own TTL.
//
// An entry stays after it expires (until memory runs short and the least
// recently used entries go): when Redis cannot answer, the last answer is
// used rather than failing the batch. When an entry expires, the first
// worker to see it takes a short lease and fetches; others meanwhile keep
// using the old answer instead of fetching too.

#include "ngx_http_recording_site_cache.h"

#include <new>

#include "ngx_http_recording_stats.h"

namespace {

struct site_node_t {
    ngx_str_node_t     sn;        // key: "<redis server>/<site id>", in `key`
    ngx_queue_t        lru;
    ngx_msec_t         fetched;
    ngx_msec_t         lease_until;
    double             sample_rate;
    uint64_t           daily_sessions;
    uint8_t            status;    // recording::SiteStatus
    uint8_t            budget;    // kHasBudget | kPaceEven | kBudgetUnreadable
    u_char             key[1];    // allocated to the key's length
};

constexpr uint8_t kHasBudget = 1;
constexpr uint8_t kPaceEven = 2;
constexpr uint8_t kBudgetUnreadable = 4;

struct site_cache_sh_t {
    ngx_rbtree_t       tree;
    ngx_rbtree_node_t  sentinel;
    ngx_queue_t        lru;       // most recently used first
};

struct site_cache_t {
    site_cache_sh_t   *sh;
    ngx_slab_pool_t   *shpool;
};

ngx_str_t site_cache_name = ngx_string("recording_site_cache");

bool expired(ngx_msec_t deadline) noexcept
{
    return !ngx_http_recording_before(ngx_current_msec, deadline);
}


site_node_t *find_locked(site_cache_t *cache, std::string_view key) noexcept
{
    ngx_str_t k = ngx_http_recording_str(key);
    auto *sn = ngx_str_rbtree_lookup(&cache->sh->tree, &k, ngx_crc32_short(k.data, k.len));
    return reinterpret_cast<site_node_t *>(sn);
}

ngx_int_t init_zone(ngx_shm_zone_t *zone, void *data) noexcept
{
    auto *cache = static_cast<site_cache_t *>(zone->data);
    if (data != nullptr) {
        // A reload: keep the answers the previous cycle cached.
        auto *old = static_cast<site_cache_t *>(data);
        cache->sh = old->sh;
        cache->shpool = old->shpool;
        return NGX_OK;
    }
    cache->shpool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);
    if (zone->shm.exists) {
        cache->sh = static_cast<site_cache_sh_t *>(cache->shpool->data);
        return NGX_OK;
    }
    auto *sh = static_cast<site_cache_sh_t *>(ngx_slab_alloc(cache->shpool, sizeof(site_cache_sh_t)));
    if (sh == nullptr) {
        return NGX_ERROR;
    }
    cache->sh = sh;
    cache->shpool->data = sh;
    ngx_rbtree_init(&sh->tree, &sh->sentinel, ngx_str_rbtree_insert_value);
    ngx_queue_init(&sh->lru);
    // A new, empty cache (the figures' zone, set up before, may be an old one).
    if (ngx_http_recording_stats != nullptr) {
        ngx_http_recording_stats->site_cache_entries = 0;
    }

    static const char ctx[] = " in recording site cache zone \"recording_site_cache\"";
    cache->shpool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(cache->shpool, sizeof(ctx)));
    if (cache->shpool->log_ctx != nullptr) {
        ngx_memcpy(cache->shpool->log_ctx, ctx, sizeof(ctx));
    }
    cache->shpool->log_nomem = 0;  // a full zone evicts; no need to log
    return NGX_OK;
}

site_node_t *allocate_locked(site_cache_t *cache, size_t key_length) noexcept
{
    size_t size = offsetof(site_node_t, key) + key_length;
    for (int attempt = 0; attempt < 16; attempt++) {
        auto *node = static_cast<site_node_t *>(ngx_slab_alloc_locked(cache->shpool, size));
        if (node != nullptr) {
            return node;
        }
        if (ngx_queue_empty(&cache->sh->lru)) {
            return nullptr;
        }
        ngx_queue_t *q = ngx_queue_last(&cache->sh->lru);
        auto *victim = ngx_queue_data(q, site_node_t, lru);
        ngx_queue_remove(q);
        ngx_rbtree_delete(&cache->sh->tree, &victim->sn.node);
        ngx_slab_free_locked(cache->shpool, victim);
        ngx_http_recording_count(&ngx_http_recording_stats_t::site_cache_entries, -1);
    }
    return nullptr;
}

}  // namespace

ngx_int_t ngx_http_recording_site_cache_init_zone(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf)
{
    auto *cache = static_cast<site_cache_t *>(ngx_pcalloc(cf->pool, sizeof(site_cache_t)));
    if (cache == nullptr) {
        return NGX_ERROR;
    }
    rmcf->site_cache = ngx_shared_memory_add(cf, &site_cache_name, static_cast<size_t>(rmcf->site_cache_size),
                                             &ngx_http_recording_module);
    if (rmcf->site_cache == nullptr) {
        return NGX_ERROR;
    }
    if (rmcf->site_cache->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "shared memory zone \"%V\" is already used",
                           &site_cache_name);
        return NGX_ERROR;
    }
    rmcf->site_cache->init = init_zone;
    rmcf->site_cache->data = cache;
    return NGX_OK;
}

ngx_http_recording_cached_site_t ngx_http_recording_site_cache_get(ngx_shm_zone_t *zone,
                                                                   std::string_view key,
                                                                   ngx_msec_t ttl, ngx_msec_t lease)
{
    auto *cache = static_cast<site_cache_t *>(zone->data);
    ngx_http_recording_cached_site_t result{};

    ngx_shmtx_lock(&cache->shpool->mutex);
    site_node_t *node = find_locked(cache, key);
    if (node != nullptr) {
        ngx_queue_remove(&node->lru);
        ngx_queue_insert_head(&cache->sh->lru, &node->lru);

        result.found = true;
        result.fresh = !expired(node->fetched + ttl);
        result.settings.status = static_cast<recording::SiteStatus>(node->status);
        result.settings.sample_rate = node->sample_rate;
        if (node->budget & kHasBudget) {
            result.settings.budget = recording::DailyBudget{node->daily_sessions, (node->budget & kPaceEven) != 0};
        }
        result.settings.budget_unreadable = (node->budget & kBudgetUnreadable) != 0;
        if (!result.fresh && expired(node->lease_until)) {
            node->lease_until = ngx_current_msec + lease;
            result.refresh = true;
        }
    }
    ngx_shmtx_unlock(&cache->shpool->mutex);
    return result;
}

void ngx_http_recording_site_cache_put(ngx_shm_zone_t *zone, std::string_view key,
                                       const recording::SiteSettings &settings)
{
    auto *cache = static_cast<site_cache_t *>(zone->data);

    ngx_shmtx_lock(&cache->shpool->mutex);
    site_node_t *node = find_locked(cache, key);
    if (node == nullptr) {
        node = allocate_locked(cache, key.size());
        if (node != nullptr) {
            ngx_memcpy(node->key, key.data(), key.size());
            node->sn.str.len = key.size();
            node->sn.str.data = node->key;
            node->sn.node.key = ngx_crc32_short(node->key, key.size());
            ngx_rbtree_insert(&cache->sh->tree, &node->sn.node);
            ngx_queue_insert_head(&cache->sh->lru, &node->lru);
            ngx_http_recording_count(&ngx_http_recording_stats_t::site_cache_entries);
        }
    }
    if (node != nullptr) {
        node->status = static_cast<uint8_t>(settings.status);
        node->sample_rate = settings.sample_rate;
        node->daily_sessions = settings.budget ? settings.budget->sessions : 0;
        node->budget = static_cast<uint8_t>((settings.budget ? kHasBudget : 0)
                                            | (settings.budget && settings.budget->pace_even ? kPaceEven : 0)
                                            | (settings.budget_unreadable ? kBudgetUnreadable : 0));
        node->fetched = ngx_current_msec;
        node->lease_until = ngx_current_msec;  // released
    }
    ngx_shmtx_unlock(&cache->shpool->mutex);
}
