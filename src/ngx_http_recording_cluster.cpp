// Redis Cluster routing: not in this build yet; "cluster" is refused when
// the configuration is read, so this is never reached.

#include "ngx_http_recording_cluster.h"

RedisRoute *ngx_http_recording_cluster_create(ngx_http_recording_redis_server_t *, ngx_log_t *log,
                                              ngx_atomic_t *) noexcept
{
    ngx_log_error(NGX_LOG_EMERG, log, 0, "recording: redis cluster support is not built in");
    return nullptr;
}
