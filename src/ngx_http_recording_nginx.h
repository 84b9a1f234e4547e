// The one place where nginx's C headers enter the module's C++ code.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

// Defined in ngx_http_recording_module.cpp; nginx finds it by this C name.
extern "C" ngx_module_t ngx_http_recording_module;

// What the module's own timers point their `data` at when they belong to no
// connection: nginx's debug logging of timers reads a connection's fd
// through every timer's `data` (ngx_event_ident), so it must not be null.
inline ngx_connection_t ngx_http_recording_no_connection = [] {
    ngx_connection_t c{};
    c.fd = static_cast<ngx_socket_t>(-1);
    return c;
}();
