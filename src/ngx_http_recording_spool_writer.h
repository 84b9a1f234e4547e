// The spool's writer: appends records to the spool file, which every worker
// shares, under an exclusive flock() held for one append (one writev, and
// an fdatasync with `recording_spool_fsync on`), so appends never
// interleave.
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

// Appends one RPUSH command (of `elements` elements) meant for `server`
// and `key`, starting a new file if there is none. True once written (and
// synced); false when the spool is full or the write failed (logged once
// per spell of either).
bool ngx_http_recording_spool_append(ngx_http_recording_redis_server_t *server, std::string_view key,
    uint32_t elements, std::string_view command) noexcept;

// False while the last write failed, or while the last batch did not fit
// and the file it did not fit in has not been replayed since (how big the
// next batch is, nobody knows).
bool ngx_http_recording_spool_writer_can_take() noexcept;

// exit_process: closes the file.
void ngx_http_recording_spool_writer_close() noexcept;
