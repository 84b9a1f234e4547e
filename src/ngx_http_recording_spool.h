// The disk spool (`recording_spool`): where accepted batches wait while
// Redis cannot take them, and from where they are replayed, oldest first,
// into the same queue keys once it can.
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

// Whether `recording_spool` is configured.
bool ngx_http_recording_spool_enabled() noexcept;

// True while records wait in the spool: new batches must go there too,
// behind them, so that a session's batches keep their order.
bool ngx_http_recording_spool_holds_records() noexcept;

// Whether the spool can take batches: configured, its last write did not
// fail, and the last batch it was given fitted (or the file it did not fit
// in has been replayed since).
bool ngx_http_recording_spool_has_room() noexcept;

// Appends one RPUSH command (of `elements` elements) meant for `server`
// and `key`. True once written, and synced with `recording_spool_fsync
// on`; false when the spool is full or the write failed.
bool ngx_http_recording_spool_write(ngx_http_recording_redis_server_t *server, std::string_view key,
    uint32_t elements, std::string_view command) noexcept;

// When the configuration is read: refuses a directory that no start could
// make usable, and makes it one of nginx's paths (created at start and given
// to the worker user).
char *ngx_http_recording_spool_check(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf) noexcept;

// init_module (the master, and `nginx -t`), once nginx made its paths: the
// files a previous run left go to the worker user, then the spool is tried
// as that user. NGX_ERROR at the first start when it cannot take a batch.
ngx_int_t ngx_http_recording_spool_init_module(ngx_cycle_t *cycle,
    ngx_http_recording_main_conf_t *rmcf) noexcept;

// init_process: starts looking for records to replay; exit_process: stops
// and closes the files (their locks go with them).
ngx_int_t ngx_http_recording_spool_init_process(ngx_cycle_t *cycle,
    ngx_http_recording_main_conf_t *rmcf) noexcept;
void ngx_http_recording_spool_exit_process() noexcept;
