// The spool's replayer: one worker at a time, the one holding the flock()
// on "replay.lock", takes the spool file over, sends its records to Redis
// front to back (a bounded window of them in flight), keeps the offset up
// to which Redis acknowledged them in the file's header, follows the file
// as others append, and removes it once Redis has everything; a file it
// cannot replay is set aside for the operator.
#pragma once

#include "ngx_http_recording_conf.h"

// init_process: looks for a file to replay soon after the start (records
// left by a crash or a stop), then at every scan.
void ngx_http_recording_spool_replay_init(ngx_log_t *log) noexcept;

// A record was appended: the replaying worker, if any, finds it; else this
// one starts replaying within a scan interval.
void ngx_http_recording_spool_replay_soon() noexcept;

// exit_process: stops replaying and looking; the replay lock goes with its
// file.
void ngx_http_recording_spool_replay_exit() noexcept;
