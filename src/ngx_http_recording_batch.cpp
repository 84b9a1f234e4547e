// A batch's path once its bytes are read: decode -> validate -> site
// settings -> sample -> daily budget -> enrich -> RPUSH, then its owner's
// `done`. Each step's work is done in the file named after it (the core's
// body_decoder, batch_validator, site_settings, sampling, budget,
// enrichment and redis_protocol; the glue's body, site, budget and queue);
// this file orders the steps and keeps the batch's state between them.

#include "ngx_http_recording_batch.h"

#include <exception>
#include <new>
#include <string>

#include "enrichment.h"
#include "ngx_http_recording_body.h"
#include "ngx_http_recording_budget.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_queue.h"
#include "ngx_http_recording_site.h"
#include "ngx_http_recording_stats.h"
#include "redis_protocol.h"
#include "sampling.h"

using recording::Outcome;

namespace {

using Batch = ngx_http_recording_batch_t;
using Waiter = ngx_http_recording_waiter_t;

// The steps, in the order a batch meets them; each is defined below in
// that order.
Outcome finish_decoding(Batch *b, recording::DecodeStatus status);
void look_up_site(Batch *b);
void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept;
void continue_with_site(Batch *b, const recording::SiteSettings &site);
void budget_decided(Waiter *waiter, bool admitted) noexcept;
void enrich_and_push(Batch *b);
void pushed(Waiter *waiter, Outcome outcome, uint64_t redis_time_us) noexcept;
void finish(Batch *b, Outcome outcome);

Waiter *waiter_of_batch(void *data)
{
    return &static_cast<Batch *>(data)->waiter;
}

// Resumes a batch when its Redis call completes; null when its owner is
// gone (the batch is then freed).
Batch *resume(Waiter *waiter)
{
    auto *b = reinterpret_cast<Batch *>(waiter);
    b->waiter.in_flight = false;
    if (b->waiter.request == nullptr) {
        delete b;
        return nullptr;
    }
    b->from_redis = true;
    return b;
}

// What the decoder and the validator say of what it was fed.
Outcome finish_decoding(Batch *b, recording::DecodeStatus status)
{
    if (status == recording::DecodeStatus::ok) {
        status = b->decoder->finish();
    }
    switch (status) {
    case recording::DecodeStatus::invalid:
        return Outcome::invalid_encoding;
    case recording::DecodeStatus::too_large:
        return Outcome::payload_too_large;
    case recording::DecodeStatus::ok:
        break;
    }
    b->decoded_bytes = b->decoder->decoded().size();
    ngx_http_recording_count(&ngx_http_recording_stats_t::decoded_bytes,
                             static_cast<ngx_atomic_int_t>(*b->decoded_bytes));

    recording::ValidationLimits limits;
    limits.max_events = b->conf->max_events;
    limits.max_depth = static_cast<unsigned>(b->conf->max_depth);
    b->validated = recording::validate_batch(b->decoder->decoded(), limits);
    return b->validated.valid ? Outcome::queued : b->validated.error;
}

// Decoded and valid: the rest of the way.
void go_on(Batch *b, Outcome decoded)
{
    if (decoded != Outcome::queued) {
        finish(b, decoded);
        return;
    }
    look_up_site(b);
}

// --- Site settings -----------------------------------------------------------

void look_up_site(Batch *b)
{
    recording::SiteSettings settings;
    switch (ngx_http_recording_site_look_up(b->conf, b->site_id, waiter_of_batch, b, &settings)) {
    case ngx_http_recording_site_answer_e::ready:
        continue_with_site(b, settings);
        break;
    case ngx_http_recording_site_answer_e::unavailable:
        finish(b, Outcome::queue_unavailable);
        break;
    case ngx_http_recording_site_answer_e::pending:
        break;  // site_found() goes on
    }
}

// The site lookup's word, when it had to ask Redis (the waiter's
// `site_found`); null settings: Redis could not answer.
void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept
{
    Batch *b = resume(waiter);
    if (b == nullptr) {
        return;
    }
    try {
        if (settings != nullptr) {
            continue_with_site(b, *settings);
        } else {
            finish(b, Outcome::queue_unavailable);
        }
    } catch (const std::exception &) {
        finish(b, Outcome::internal_error);
    }
}

// --- Sampling and the daily budget ---------------------------------------------

void continue_with_site(Batch *b, const recording::SiteSettings &site)
{
    if (site.status == recording::SiteStatus::unknown) {
        finish(b, Outcome::unknown_site);
        return;
    }
    if (site.status == recording::SiteStatus::disabled) {
        finish(b, Outcome::site_disabled);
        return;
    }

    b->bucket = recording::session_bucket(b->site_id, b->validated.session_id);
    if (!recording::is_sampled_in(b->bucket, site.sample_rate)) {
        finish(b, Outcome::sampled_out);
        return;
    }

    if (site.budget_unreadable) {
        ngx_http_recording_budget_warn_unreadable(b->request->connection->log, b->site_id);
    }
    if (site.budget) {
        switch (ngx_http_recording_budget_check(b->conf, b->site_id, b->validated.session_id, *site.budget,
                                                ngx_http_recording_now_ms(), waiter_of_batch, b))
        {
        case ngx_http_recording_budget_answer_e::refused:
            finish(b, Outcome::quota_exceeded);
            return;
        case ngx_http_recording_budget_answer_e::pending:
            return;  // budget_decided() goes on
        case ngx_http_recording_budget_answer_e::admitted:
            break;
        }
    }
    enrich_and_push(b);
}

// The budget's word, when it had to ask Redis (the waiter's `budget_decided`).
void budget_decided(Waiter *waiter, bool admitted) noexcept
{
    Batch *b = resume(waiter);
    if (b == nullptr) {
        return;
    }
    try {
        if (admitted) {
            enrich_and_push(b);
        } else {
            finish(b, Outcome::quota_exceeded);
        }
    } catch (const std::exception &) {
        finish(b, Outcome::internal_error);
    }
}

// --- Enrichment and queueing ---------------------------------------------------

std::string_view request_id_variable(ngx_http_request_t *r)
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_recording_module));
    ngx_http_variable_value_t *v = ngx_http_get_indexed_variable(r, rmcf->request_id_index);
    if (v == nullptr || v->not_found) {
        return {};
    }
    return {reinterpret_cast<const char *>(v->data), v->len};
}

void enrich_and_push(Batch *b)
{
    ngx_http_request_t *r = b->request;
    recording::IngestFields fields;
    fields.site_id = b->site_id;
    fields.received_at_ms = ngx_http_recording_now_ms();
    fields.ip = ngx_http_recording_view(r->connection->addr_text);
    if (r->headers_in.user_agent != nullptr) {
        fields.user_agent = ngx_http_recording_view(r->headers_in.user_agent->value);
    }
    fields.country = ngx_http_recording_complex_value(r, b->conf->country);

    // A WebSocket message's id: the upgrade's and the message's number,
    // unique per batch.
    std::string message_request_id;
    std::string_view request_id = request_id_variable(r);
    if (b->message != 0) {
        message_request_id.reserve(request_id.size() + 21);
        message_request_id.append(request_id).append(1, '-').append(std::to_string(b->message));
        request_id = message_request_id;
    }
    if (!request_id.empty()) {
        fields.request_id = request_id;
    }

    std::string ingest = recording::ingest_member(fields);
    recording::QueueElement element(b->decoder->decoded(), b->validated, ingest);
    unsigned shard = recording::queue_shard(b->bucket, static_cast<unsigned>(b->conf->queue_shards));
    b->queue = recording::queue_key(shard);
    // The decoded document goes with its element: a large one is sent to
    // Redis from where it is, a small one copied into the RPUSH. Either way
    // the batch itself need not keep it while Redis answers.
    size_t capacity = 0;
    std::unique_ptr<char[]> document = b->decoder->take_output(&capacity);
    if (!ngx_http_recording_queue_push(b->conf, b->queue, element, std::move(document), capacity, &b->waiter)) {
        finish(b, Outcome::queue_unavailable);
        return;
    }
    b->decoder.reset();
}

// The queue's word on the batch's element (the waiter's `pushed`).
void pushed(Waiter *waiter, Outcome outcome, uint64_t redis_time_us) noexcept
{
    Batch *b = resume(waiter);
    if (b == nullptr) {
        return;
    }
    if (outcome == Outcome::queued) {
        b->redis_time_us = redis_time_us;
    }
    finish(b, outcome);
}

// The owner is told; it may release the batch from `done`.
void finish(Batch *b, Outcome outcome)
{
    b->decoder.reset();
    b->done(b, outcome, b->from_redis);
}

// A step threw (std::bad_alloc) before any of them took the batch.
void fail(Batch *b, const std::exception &e)
{
    ngx_log_error(NGX_LOG_ERR, b->request->connection->log, 0, "recording: %s", e.what());
    if (!b->waiter.in_flight) {
        finish(b, Outcome::internal_error);
    }
}

}  // namespace

ngx_http_recording_batch_t *ngx_http_recording_batch_create(ngx_http_request_t *r,
    ngx_http_recording_loc_conf_t *conf, std::string_view site_id, uint64_t message,
    ngx_http_recording_batch_done_pt done, void *owner)
{
    auto *b = new Batch{};
    b->waiter = Waiter{r, false, pushed, site_found, budget_decided};
    b->conf = conf;
    b->request = r;
    b->site_id = site_id;
    b->message = message;
    b->done = done;
    b->owner = owner;
    return b;
}

void ngx_http_recording_batch_release(ngx_http_recording_batch_t *batch) noexcept
{
    if (batch->waiter.in_flight) {
        batch->waiter.request = nullptr;  // the step's answer frees it
    } else {
        delete batch;
    }
}

void ngx_http_recording_batch_take_body(ngx_http_recording_batch_t *batch,
    recording::ContentEncoding encoding) noexcept
{
    ngx_http_request_t *r = batch->request;
    ngx_http_recording_count(&ngx_http_recording_stats_t::received_bytes,
                             static_cast<ngx_atomic_int_t>(ngx_http_recording_body_size(r)));
    if (encoding == recording::ContentEncoding::unsupported) {
        finish(batch, Outcome::unsupported_encoding);
        return;
    }
    try {
        batch->decoder.emplace(encoding, batch->conf->max_decoded_size);
        if (ngx_http_recording_decode_body(r, *batch->decoder) != NGX_OK) {
            finish(batch, Outcome::internal_error);
            return;
        }
        go_on(batch, finish_decoding(batch, recording::DecodeStatus::ok));
    } catch (const std::exception &e) {
        fail(batch, e);
    }
}

void ngx_http_recording_batch_take_bytes(ngx_http_recording_batch_t *batch, recording::ContentEncoding encoding,
    std::string_view bytes) noexcept
{
    ngx_http_recording_count(&ngx_http_recording_stats_t::received_bytes,
                             static_cast<ngx_atomic_int_t>(bytes.size()));
    try {
        batch->decoder.emplace(encoding, batch->conf->max_decoded_size);
        batch->decoder->expect_input(bytes.size());
        go_on(batch, finish_decoding(batch, batch->decoder->feed(bytes.data(), bytes.size())));
    } catch (const std::exception &e) {
        fail(batch, e);
    }
}
