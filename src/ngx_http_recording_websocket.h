// WebSocket ingestion (`recording_websocket on`): one connection per page
// view, each message one batch, each answered with an acknowledgement in
// message order once Redis (or the spool) has it
// (ngx_http_recording_websocket.cpp). The framing is core's websocket.h.
#pragma once

#include "ngx_http_recording_conf.h"

#include <cstdint>
#include <string_view>

// A GET asking to upgrade to a WebSocket (Upgrade: websocket).
bool ngx_http_recording_websocket_requested(ngx_http_request_t *r) noexcept;

// The data messages read on the WebSocket connection of `r`; -1 when `r`
// is not one (for $recording_websocket_messages, in the access log's one
// line per connection).
int64_t ngx_http_recording_websocket_messages(ngx_http_request_t *r) noexcept;

// Checks the handshake and the site (as for a POST: 404, 403, 503 without
// an upgrade), then upgrades and serves the connection. What the content
// handler returns. `site_id` lives in the request's pool.
ngx_int_t ngx_http_recording_websocket_start(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                             std::string_view site_id) noexcept;
