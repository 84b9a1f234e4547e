// WebSocket ingestion: an upgraded connection's messages, each one batch
// (ngx_http_recording_batch), each answered with an acknowledgement in
// message order once Redis (or the spool) has it
// (ngx_http_recording_websocket.cpp). The framing is core's websocket.h.
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

// Serves the connection of `r`, whose 101 was sent: from now on its events
// come here. NGX_DONE, or what to finalize `r` with. `site_id` lives in
// the request's pool.
ngx_int_t ngx_http_recording_websocket_serve(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                             std::string_view site_id) noexcept;

// $recording_websocket_messages: the data messages read on the connection,
// for the access log's one line per connection.
ngx_int_t ngx_http_recording_websocket_add_variables(ngx_conf_t *cf) noexcept;
