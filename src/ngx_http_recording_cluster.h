// Redis Cluster: a route that sends each command to the master owning its
// key's hash slot, learnt from the seed nodes' slot map.
#pragma once

#include "ngx_http_recording_redis.h"

struct ngx_http_recording_redis_server_t;

// This worker's route to the cluster named by `server` (its addresses are
// the seeds, its login is used on every node); null when out of memory.
// `connections` counts the worker's connections to any node (or null).
RedisRoute *ngx_http_recording_cluster_create(ngx_http_recording_redis_server_t *server,
    ngx_log_t *log, ngx_atomic_t *connections) noexcept;
