// Reading `recording_redis` (ngx_http_recording_redis_conf.cpp).
#pragma once

#include "ngx_http_recording_conf.h"

// The server named by `args` (every argument of one `recording_redis`):
// an earlier one with the same arguments, or a new one in the main
// configuration. Null, with the reason logged, when they do not parse.
ngx_http_recording_redis_server_t *ngx_http_recording_add_redis_server(ngx_conf_t *cf, ngx_str_t *args,
                                                                       ngx_uint_t nargs) noexcept;

// The address of a node a cluster named (`host` is numeric, as the cluster
// map keeps only those; NUL-terminated, and so is `name`): false when `host`
// is not an IP address. The strings must outlive the address.
bool ngx_http_recording_numeric_redis_address(RedisAddress *address, const ngx_str_t &name, const ngx_str_t &host,
                                              in_port_t port) noexcept;
