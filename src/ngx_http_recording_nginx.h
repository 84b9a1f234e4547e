// The one place where nginx's C headers enter the module's C++ code.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>
}

// Defined in ngx_http_recording_module.cpp; nginx finds it by this C name.
extern "C" ngx_module_t ngx_http_recording_module;

#include <cstdint>
#include <string_view>

// nginx's strings and C++'s: `s` must outlive what is made of it.
inline ngx_str_t ngx_http_recording_str(std::string_view s) noexcept
{
    return {s.size(), (u_char *) s.data()};
}

inline std::string_view ngx_http_recording_view(const ngx_str_t &s) noexcept
{
    return {reinterpret_cast<const char *>(s.data), s.len};
}

// Whether `s` begins with `prefix`, and what follows it.
inline bool ngx_http_recording_starts_with(const ngx_str_t &s, std::string_view prefix) noexcept
{
    return s.len >= prefix.size() && ngx_strncmp(s.data, prefix.data(), prefix.size()) == 0;
}

inline ngx_str_t ngx_http_recording_after(const ngx_str_t &s, std::string_view prefix) noexcept
{
    return {s.len - prefix.size(), s.data + prefix.size()};
}

// What the module's own timers point their `data` at when they belong to no
// connection: nginx's debug logging of timers reads a connection's fd
// through every timer's `data` (ngx_event_ident), so it must not be null.
inline ngx_connection_t ngx_http_recording_no_connection = [] {
    ngx_connection_t c{};
    c.fd = static_cast<ngx_socket_t>(-1);
    return c;
}();

// The worker is on its way out (nginx -s quit or stop, a reload's old
// workers): ngx_quit and ngx_terminate are set when the signal comes,
// ngx_exiting once the listeners are closed.
inline bool ngx_http_recording_worker_exiting() noexcept
{
    return ngx_quit || ngx_exiting || ngx_terminate;
}

// nginx's millisecond clock wraps around: times are compared by the sign of
// their difference, never directly.
inline bool ngx_http_recording_before(ngx_msec_t a, ngx_msec_t b) noexcept
{
    return static_cast<ngx_msec_int_t>(a - b) < 0;
}

// Milliseconds from now until `due`; 0 once it has passed.
inline ngx_msec_t ngx_http_recording_left(ngx_msec_t due) noexcept
{
    auto left = static_cast<ngx_msec_int_t>(due - ngx_current_msec);
    return left > 0 ? static_cast<ngx_msec_t>(left) : 0;
}

// The wall clock, in milliseconds since the epoch, as nginx last read it.
inline int64_t ngx_http_recording_now_ms() noexcept
{
    ngx_time_t *tp = ngx_timeofday();
    return static_cast<int64_t>(tp->sec) * 1000 + static_cast<int64_t>(tp->msec);
}
