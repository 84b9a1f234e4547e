// TLS to Redis on nginx's own OpenSSL layer (ngx_event_openssl): the
// context the recording_redis_ssl_* directives describe, made once when the
// configuration is read, and what a connection needs of it: the handshake
// and the check of the server's certificate.
#pragma once

#include "ngx_http_recording_conf.h"

// recording_redis_ssl_protocols' words.
extern ngx_conf_bitmask_t ngx_http_recording_redis_ssl_protocols[];

// Defaults for the directives left unset (init_main_conf).
void ngx_http_recording_redis_tls_defaults(ngx_http_recording_redis_tls_t *tls) noexcept;

// Makes the SSL context when some recording_redis says "ssl", loading the
// certificates (nginx -t fails on a file it cannot read), and points those
// servers at it. Runs once every server is known (postconfiguration).
ngx_int_t ngx_http_recording_redis_tls_init(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf) noexcept;

// Starts TLS on an established connection to `name` (SNI when it is a
// host name): what ngx_ssl_handshake() returns.
ngx_int_t ngx_http_recording_redis_tls_handshake(ngx_connection_t *c, const ngx_http_recording_redis_tls_t *tls,
                                                 const ngx_str_t &name) noexcept;

// After the handshake: null when the server's certificate is trusted and
// names `name` (or verification is off); otherwise why not, for the log.
// `buf` holds the reason when it needs room.
const char *ngx_http_recording_redis_tls_refusal(ngx_connection_t *c, const ngx_http_recording_redis_tls_t *tls,
                                                 const ngx_str_t &name, char *buf, size_t size) noexcept;
