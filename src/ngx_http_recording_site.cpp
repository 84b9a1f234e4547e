// The site settings step: the shared cache first; on a miss or an expired
// answer, one HMGET per site and worker at a time, which every request for
// that site waits on (the single flight), and whose answer fills the cache.

#include "ngx_http_recording_site.h"

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <hiredis/hiredis.h>

#include "redis_protocol.h"

#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_site_cache.h"
#include "ngx_http_recording_stats.h"

namespace {

using Waiter = ngx_http_recording_waiter_t;

class SiteLookupCall;
std::unordered_map<std::string, SiteLookupCall *> lookups_in_flight;  // by cache key

std::optional<std::string_view> field(const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_STRING) {
        return std::string_view(reply->str, reply->len);
    }
    return std::nullopt;
}

class SiteLookupCall final : public RedisCall {
public:
    SiteLookupCall(std::string key, ngx_shm_zone_t *cache) : key_(std::move(key)), cache_(cache) {}

    // `stale`: what the cache held when this waiter came, used if Redis
    // cannot answer.
    void add(Waiter *waiter, std::optional<recording::SiteSettings> stale)
    {
        waiters_.push_back({waiter, std::move(stale)});
        waiter->in_flight = true;
    }

    void on_reply(const redisReply *reply) noexcept override
    {
        lookups_in_flight.erase(key_);

        std::optional<recording::SiteSettings> settings;
        // Two fields at least: the budget's are read when the reply has them.
        if (reply != nullptr && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2) {
            try {
                auto nth = [reply](size_t i) {
                    return i < reply->elements ? field(reply->element[i]) : std::nullopt;
                };
                settings = recording::site_settings_from_fields(nth(0), nth(1), nth(2), nth(3));
                ngx_http_recording_site_cache_put(cache_, key_, *settings);
            } catch (const std::exception &) {
                settings.reset();  // out of memory: as if Redis had not answered
            }
        }

        for (auto &[waiter, stale] : waiters_) {
            // Redis cannot answer: the last answer beats failing.
            const recording::SiteSettings *answer = settings ? &*settings : stale ? &*stale : nullptr;
            waiter->site_found(waiter, answer);
        }
        delete this;
    }

private:
    std::string key_;  // the cache's: server and site
    ngx_shm_zone_t *cache_;
    std::vector<std::pair<Waiter *, std::optional<recording::SiteSettings>>> waiters_;
};

}  // namespace

ngx_http_recording_site_answer_e ngx_http_recording_site_look_up(ngx_http_recording_loc_conf_t *conf,
    std::string_view site_id, ngx_http_recording_waiter_of_pt waiter_of, void *data,
    recording::SiteSettings *settings)
{
    using Answer = ngx_http_recording_site_answer_e;
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_cycle_get_module_main_conf(ngx_cycle, ngx_http_recording_module));

    // Settings are a server's: two locations may read sites from two Redis,
    // or two databases of one (the id has db= and user=, not the password).
    std::string key(ngx_http_recording_view(conf->redis->id));
    key += '/';
    key.append(site_id);

    // A fetch that takes longer than both timeouts has failed anyway.
    ngx_msec_t lease = conf->redis_connect_timeout + conf->redis_read_timeout;
    ngx_http_recording_cached_site_t cached =
        ngx_http_recording_site_cache_get(rmcf->site_cache, key, conf->site_cache_ttl, lease);
    std::optional<recording::SiteSettings> stale;
    if (cached.found) {
        stale = cached.settings;
    }

    auto it = lookups_in_flight.find(key);
    if (it != lookups_in_flight.end()) {
        it->second->add(waiter_of(data), std::move(stale));
        ngx_http_recording_count(&ngx_http_recording_stats_t::site_cache_misses);
        return Answer::pending;
    }
    if (cached.found && (cached.fresh || !cached.refresh)) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::site_cache_hits);
        *settings = cached.settings;
        return Answer::ready;
    }
    ngx_http_recording_count(&ngx_http_recording_stats_t::site_cache_misses);

    // Everything that may throw comes before send(): once Redis has the
    // command, its reply must find the waiter.
    std::string command = recording::format_site_lookup(site_id);
    Waiter *waiter = waiter_of(data);
    auto call = std::make_unique<SiteLookupCall>(key, rmcf->site_cache);
    call->add(waiter, stale);
    auto [slot, inserted] = lookups_in_flight.emplace(std::move(key), call.get());
    RedisTimeouts timeouts{conf->redis_connect_timeout, conf->redis_read_timeout};
    if (!conf->redis->route->send(recording::site_key(site_id), command, call.get(), timeouts)) {
        lookups_in_flight.erase(slot);
        waiter->in_flight = false;
        if (!stale) {
            return Answer::unavailable;
        }
        *settings = *stale;
        return Answer::ready;
    }
    call.release();  // the reply deletes it
    ngx_http_recording_count(&ngx_http_recording_stats_t::hmget_commands);
    return Answer::pending;
}
