// The recording_health handler, for load balancers. It answers from what the
// worker knows (core health.h decides): whether it is shutting down, whether
// each Redis of the configuration answered its last PING, and whether the
// spool has room. A PING goes to each Redis at most once a second, however
// often the balancer asks; the answer never waits for it.

#include "ngx_http_recording_health.h"

#include <exception>
#include <new>
#include <vector>

#include <hiredis/hiredis.h>

#include "health.h"

#include "ngx_http_recording_conf.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_spool.h"

namespace {

constexpr std::string_view kPing = "*1\r\n$4\r\nPING\r\n";

// This worker's view of each server, by its place in the configuration's list.
std::vector<recording::HealthProbe> probes;

class PingCall final : public RedisCall {
public:
    explicit PingCall(size_t server) noexcept : server_(server) {}

    void on_reply(const redisReply *reply) noexcept override
    {
        if (server_ < probes.size()) {
            probes[server_].answered(reply != nullptr && reply->type != REDIS_REPLY_ERROR);
        }
        delete this;
    }

private:
    size_t server_;
};

// Sends a PING to the server when its probe says it is time.
void ask(size_t index, RedisRoute *route, const RedisTimeouts &timeouts) noexcept
{
    if (!probes[index].should_ask(ngx_current_msec)) {
        return;
    }
    auto *call = new (std::nothrow) PingCall(index);
    // Any key will do: in a cluster it picks the node that is asked.
    if (call == nullptr || !route->send("", kPing, call, timeouts)) {
        delete call;
        probes[index].sent_failed();
    }
}

bool redis_failing(const ngx_http_recording_main_conf_t &rmcf, const RedisTimeouts &timeouts)
{
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf.servers.elts);
    if (probes.size() < rmcf.servers.nelts) {
        probes.resize(rmcf.servers.nelts);
    }
    bool failing = false;
    for (ngx_uint_t i = 0; i < rmcf.servers.nelts; i++) {
        RedisRoute *route = servers[i]->route;
        if (route == nullptr) {
            continue;  // not this worker's: nginx -t, or before init_process
        }
        ask(i, route, timeouts);
        // A route that knows Redis is unreachable says so before any PING.
        if (!route->available() || probes[i].failing(ngx_current_msec)) {
            failing = true;
        }
    }
    return failing;
}

}  // namespace

ngx_int_t ngx_http_recording_health_handler(ngx_http_request_t *r) noexcept
{
    if (ngx_int_t rc = ngx_http_recording_open_page(r); rc != NGX_OK) {
        return rc;
    }
    try {
        auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
            ngx_http_get_module_main_conf(r, ngx_http_recording_module));
        auto *rlcf = static_cast<ngx_http_recording_loc_conf_t *>(
            ngx_http_get_module_loc_conf(r, ngx_http_recording_module));
        recording::HealthFacts facts;
        facts.shutting_down = ngx_http_recording_worker_exiting();
        if (!facts.shutting_down) {
            facts.redis_failing = redis_failing(*rmcf, {rlcf->redis_connect_timeout, rlcf->redis_read_timeout});
            facts.spool = ngx_http_recording_spool_enabled();
            facts.spool_has_room = ngx_http_recording_spool_has_room();
        }
        recording::HealthAnswer answer = recording::judge_health(facts);
        return ngx_http_recording_send(r, static_cast<ngx_uint_t>(answer.status), "application/json",
                                       answer.body);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: health: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
