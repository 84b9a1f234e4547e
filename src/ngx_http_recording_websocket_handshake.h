// The WebSocket handshake (`recording_websocket on`): RFC 6455's checks,
// then the site, as for a POST, before any upgrade; then 101, and the
// connection is served by ngx_http_recording_websocket
// (ngx_http_recording_websocket_handshake.cpp).
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

// A GET asking to upgrade to a WebSocket (Upgrade: websocket).
bool ngx_http_recording_websocket_requested(ngx_http_request_t *r) noexcept;

// Checks the handshake (426 for another version, 400 for a bad one) and
// the site (404, 403, 503, without an upgrade), then upgrades. What the
// content handler returns. `site_id` lives in the request's pool.
ngx_int_t ngx_http_recording_websocket_handshake(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                                 std::string_view site_id) noexcept;
