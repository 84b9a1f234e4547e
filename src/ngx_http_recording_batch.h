// A batch's path once its bytes are read, the same for a POST's body and
// for a WebSocket message (ngx_http_recording_batch.cpp):
//
//   decode -> validate -> site settings (shared cache, else Redis) -> sample
//   -> daily budget (the worker's memory, else Redis) -> enrich -> RPUSH
//
// Its owner (the handler's request, the WebSocket connection's message)
// makes the batch, feeds it its bytes and is told its outcome once, through
// `done`. The steps are the files below: body, site, budget, queue.
#pragma once

#include "ngx_http_recording_conf.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "batch_validator.h"
#include "body_decoder.h"
#include "outcome.h"

struct ngx_http_recording_batch_t;

// The batch's outcome, exactly once: from within the take call, or later
// from a Redis event (`from_redis`: the caller then runs the client
// connection's posted requests). Never called for a released batch.
using ngx_http_recording_batch_done_pt = void (*)(ngx_http_recording_batch_t *batch, recording::Outcome outcome,
                                                  bool from_redis) noexcept;

struct ngx_http_recording_batch_t {
    ngx_http_recording_waiter_t waiter;  // first: the steps' answers find the batch by it
    ngx_http_recording_loc_conf_t *conf;
    // Whose batch it is: its connection, headers and $request_id enrich it.
    ngx_http_request_t *request;
    std::string_view site_id;            // lives as long as `request`
    // A WebSocket message's number on its connection (from 1): its
    // request_id is the upgrade's followed by "-<message>". 0 for a POST.
    uint64_t message = 0;
    ngx_http_recording_batch_done_pt done;
    void *owner;                         // for `done`

    // What the steps found, for the owner's log line and variables.
    recording::ValidatedBatch validated;
    std::optional<size_t> decoded_bytes;
    std::string queue;                    // the key pushed to
    uint64_t redis_time_us = 0;           // from sending RPUSH to its acknowledgement

    // The steps' own state.
    std::optional<recording::BodyDecoder> decoder;
    uint32_t bucket = 0;                  // the session's sampling bucket: its queue shard
    bool from_redis = false;              // a step waited for Redis: we run from its event
};

// A batch of `site_id` (valid, in `r`'s pool) for `r`. Throws std::bad_alloc.
ngx_http_recording_batch_t *ngx_http_recording_batch_create(ngx_http_request_t *r,
    ngx_http_recording_loc_conf_t *conf, std::string_view site_id, uint64_t message,
    ngx_http_recording_batch_done_pt done, void *owner);

// The owner is done with the batch, or gone: a batch that a step still
// waits on is freed by that step's answer, without `done`.
void ngx_http_recording_batch_release(ngx_http_recording_batch_t *batch) noexcept;

// Takes the request body nginx read, sent with `encoding` (`unsupported`:
// the batch is refused as such).
void ngx_http_recording_batch_take_body(ngx_http_recording_batch_t *batch,
    recording::ContentEncoding encoding) noexcept;

// Takes bytes the owner holds (a WebSocket message's payload), for the
// length of this call.
void ngx_http_recording_batch_take_bytes(ngx_http_recording_batch_t *batch, recording::ContentEncoding encoding,
    std::string_view bytes) noexcept;
