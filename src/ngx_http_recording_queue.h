// Queueing: the elements of batches accepted close together for the same
// Redis and queue key go out as one RPUSH; several RPUSH may be in flight
// on a connection. Each request is answered when its own element is
// acknowledged (or written to the spool), in the order elements were taken.
#pragma once

#include "ngx_http_recording_conf.h"

#include "enrichment.h"

#include <memory>

// init_process: `recording_pending_limit`, the bytes this worker may hold
// for Redis.
void ngx_http_recording_queue_init_process(size_t pending_limit) noexcept;

// Takes `element` for `key` in the Redis of `conf`. `waiter->pushed` later
// tells the request behind `waiter` its fate, exactly once, never
// from within this call. Returns false, taking nothing, when the element
// cannot be taken: the worker holds `recording_pending_limit` already, or
// Redis is unreachable, and there is no spool to take it instead.
// `document` (of `capacity` bytes) is the buffer the element's document
// lies in, handed over (or null): a large element is then sent from it
// rather than copied, and the buffer kept until Redis answered.
bool ngx_http_recording_queue_push(ngx_http_recording_loc_conf_t *conf, std::string_view key,
    const recording::QueueElement &element, std::unique_ptr<char[]> document, size_t capacity,
    ngx_http_recording_waiter_t *waiter) noexcept;

// exit_process: frees what is left (by then every batch was answered).
void ngx_http_recording_queue_exit() noexcept;
