// What the spool's two actors share in a worker: the writer
// (ngx_http_recording_spool_writer.h), which appends records, and the
// replayer (ngx_http_recording_spool_replay.h), which sends them to Redis
// and removes the file. Both read the configuration and the file's paths,
// both keep the gauges, and each tells the other, through the file's
// presence, that it made or removed the file.
#pragma once

#include "ngx_http_recording_conf.h"

#include <string>

struct ngx_http_recording_spool_state_t {
    ngx_http_recording_main_conf_t  *conf;  // this cycle's, in a worker; null: no spool
    ngx_log_t                       *log;
    std::string                      path;       // "recording.spool" in the spool directory
    std::string                      lock_path;  // "replay.lock": held by the replaying worker
};

extern ngx_http_recording_spool_state_t ngx_http_recording_spool_state;

// Whether the file exists, asked of the system at most once a millisecond:
// every batch asks while the spool is on.
bool ngx_http_recording_spool_exists() noexcept;

// The writer holds the file open and locked: it exists.
void ngx_http_recording_spool_held() noexcept;

// The replayer removed or renamed the file: the next question asks the
// system again.
void ngx_http_recording_spool_gone() noexcept;

// The spool's figures: the file's size (0: none).
void ngx_http_recording_spool_gauges(off_t size) noexcept;
