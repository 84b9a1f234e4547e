// The `recording_status` handler: the figures as JSON or in Prometheus's
// text format (ngx_http_recording_status.cpp).
#pragma once

#include "ngx_http_recording_nginx.h"

ngx_int_t ngx_http_recording_status_handler(ngx_http_request_t *r) noexcept;
