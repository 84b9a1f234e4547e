// The content handler of `recording_ingest`, and the variables telling what
// it did (ngx_http_recording_handler.cpp).
#pragma once

#include "ngx_http_recording_nginx.h"

ngx_int_t ngx_http_recording_handler(ngx_http_request_t *r) noexcept;
ngx_int_t ngx_http_recording_add_variables(ngx_conf_t *cf) noexcept;
