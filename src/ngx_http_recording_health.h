// The `recording_health` handler: 200 while this worker can take batches,
// 503 with the reason otherwise (ngx_http_recording_health.cpp).
#pragma once

#include "ngx_http_recording_nginx.h"

ngx_int_t ngx_http_recording_health_handler(ngx_http_request_t *r) noexcept;
