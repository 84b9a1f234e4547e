// Answering over HTTP: the small pieces of nginx's request API that the
// handler, the WebSocket handshake, the batch's enrichment and the status and
// health pages share (ngx_http_recording_http.cpp).
#pragma once

#include "ngx_http_recording_nginx.h"

#include <optional>
#include <string_view>

// The start of a page (status, health): GET or HEAD only, and any body
// discarded. NGX_OK to go on; else what the handler returns.
ngx_int_t ngx_http_recording_open_page(ngx_http_request_t *r) noexcept;

// Answers with `body`, which must live as long as the request.
ngx_int_t ngx_http_recording_send(ngx_http_request_t *r, ngx_uint_t status,
    std::string_view content_type, std::string_view body);

// The first value of a request header nginx keeps no field for, and how
// many times it was sent.
ngx_table_elt_t *ngx_http_recording_find_header(ngx_http_request_t *r,
    std::string_view lowcase_name, ngx_uint_t *count);

// Adds a response header; `key` and `value` must live as long as the request.
bool ngx_http_recording_add_header(ngx_http_request_t *r, std::string_view key, ngx_str_t value);
inline bool ngx_http_recording_add_header(ngx_http_request_t *r, std::string_view key, std::string_view value)
{
    return ngx_http_recording_add_header(r, key, ngx_http_recording_str(value));
}

// The value of `cv` for `r` (in `r`'s pool); none when there is no `cv` or
// it cannot be evaluated.
std::optional<std::string_view> ngx_http_recording_complex_value(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv);
