// WebSocket ingestion: the upgrade, then the connection's messages.
//
//   handshake and site check -> 101 -> frames (core's WebSocketReader)
//   -> each data message: decode -> validate -> site settings -> sample
//   -> daily budget -> enrich -> RPUSH -> its acknowledgement, in order.
//
// The connection is the upgraded request's: its pool holds the connection's
// state, its events come here (the client's read and write handlers are
// this file's). A message waiting for Redis when the connection goes
// outlives it: its step's answer then only frees it. While kMaxPending
// messages are unacknowledged, no more is read from the client.

#include "ngx_http_recording_websocket.h"

#include <deque>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>

#include "batch_validator.h"
#include "body_decoder.h"
#include "enrichment.h"
#include "ngx_http_recording_budget.h"
#include "ngx_http_recording_http.h"
#include "ngx_http_recording_queue.h"
#include "ngx_http_recording_site.h"
#include "ngx_http_recording_stats.h"
#include "outcome.h"
#include "redis_protocol.h"
#include "sampling.h"
#include "websocket.h"

using recording::Outcome;

namespace {

using Waiter = ngx_http_recording_waiter_t;

// Unacknowledged messages a connection may have before reading stops.
constexpr size_t kMaxPending = 64;
constexpr size_t kReadSize = 16384;
// Frames not yet written to a client that does not read (pongs to a flood
// of pings) before reading from it stops.
constexpr size_t kMaxUnsent = 256 * 1024;
constexpr std::string_view kWebSocketGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Connection;

// One data message on its way; its waiter is what the steps answer.
struct Message {
    Waiter waiter;             // first: the steps' answers find the message by it
    Connection *connection;    // null once the connection is gone
    uint64_t n;
    std::optional<recording::BodyDecoder> decoder;
    recording::ValidatedBatch batch;
    uint32_t bucket = 0;
    std::optional<Outcome> outcome;  // decided: its acknowledgement may go
};

struct Connection : ngx_http_recording_ctx_t {
    ngx_http_request_t *request;
    ngx_http_recording_loc_conf_t *conf;
    std::string_view site_id;
    recording::WebSocketReader reader;
    std::deque<Message *> messages;  // read, not yet acknowledged, in order
    uint64_t count = 0;              // data messages read
    std::string out;                 // frames to write: out[written..]
    size_t written = 0;
    // The connection ends with this close code once every message read is
    // acknowledged (0: not ending).
    uint16_t closing = 0;
    bool close_sent = false;
    bool finalized = false;
    bool reading = false;            // read_frames() is on the stack: not again
    bool read_stopped = false;       // by kMaxUnsent: goes on once the frames are out

    size_t unsent() const noexcept { return out.size() - written; }
    std::string_view key;            // Sec-WebSocket-Key, in the request's pool
    Waiter *site_waiter = nullptr;   // the handshake's site lookup, when it waited for Redis
    bool upgraded = false;           // counted in websocket_connections_open
    // The request is finalized from this timer (of 0 ms), never from
    // within the loops that read, acknowledge and write: they go on using
    // the connection's state after deciding that it ends. A timer, not a
    // posted event: an exiting worker waits for timers, not for posted
    // events, before it exits.
    ngx_event_t end_event{};
    ngx_int_t end_rc = NGX_DONE;

    Connection(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *c, std::string_view site)
        : ngx_http_recording_ctx_t{ngx_http_recording_ctx_kind_e::websocket}, request(r), conf(c), site_id(site),
          reader(c->max_decoded_size)
    {
    }

    ~Connection()
    {
        if (upgraded) {
            ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections_open, -1);
        }
        if (end_event.timer_set) {
            ngx_del_timer(&end_event);
        }
        if (site_waiter != nullptr) {
            if (site_waiter->in_flight) {
                site_waiter->request = nullptr;  // the lookup's answer frees it
            } else {
                delete site_waiter;
            }
        }
        for (Message *m : messages) {
            if (m->waiter.in_flight) {
                m->connection = nullptr;  // its step's answer frees it
            } else {
                delete m;
            }
        }
    }
};

Connection *connection_of(ngx_http_request_t *r)
{
    return ngx_http_recording_ctx<Connection>(r, ngx_http_recording_ctx_kind_e::websocket);
}

// --- The handshake -----------------------------------------------------------

bool header_has_token(ngx_table_elt_t *h, std::string_view token)
{
    if (h == nullptr) {
        return false;
    }
    std::string_view value = ngx_http_recording_view(h->value);
    while (!value.empty()) {
        size_t comma = value.find(',');
        std::string_view item = value.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) {
            item.remove_prefix(1);
        }
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) {
            item.remove_suffix(1);
        }
        if (item.size() == token.size() && ngx_strncasecmp((u_char *) item.data(), (u_char *) token.data(),
                                                           token.size()) == 0) {
            return true;
        }
        if (comma == std::string_view::npos) {
            break;
        }
        value.remove_prefix(comma + 1);
    }
    return false;
}

// Sec-WebSocket-Accept: base64(SHA-1(key + the RFC's GUID)).
ngx_str_t accept_value(ngx_http_request_t *r, std::string_view key)
{
    ngx_sha1_t sha1;
    u_char digest[20];
    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key.data(), key.size());
    ngx_sha1_update(&sha1, kWebSocketGuid.data(), kWebSocketGuid.size());
    ngx_sha1_final(digest, &sha1);
    ngx_str_t raw = {sizeof(digest), digest};
    ngx_str_t encoded = {0, static_cast<u_char *>(ngx_pnalloc(r->pool, ngx_base64_encoded_length(sizeof(digest))))};
    if (encoded.data != nullptr) {
        ngx_encode_base64(&encoded, &raw);
    }
    return encoded;
}

// The contract's answer, without an upgrade; what to finalize with.
ngx_int_t refuse(ngx_http_request_t *r, Outcome outcome)
{
    ngx_http_recording_count_outcome(static_cast<size_t>(outcome));
    recording::Response response = recording::response_for(outcome);
    return ngx_http_recording_send(r, static_cast<ngx_uint_t>(response.status), "application/json", response.body);
}

// --- Writing -----------------------------------------------------------------

void finalize(Connection *ws, ngx_int_t rc);
void read_frames(Connection *ws);

void write_out(Connection *ws)
{
    if (ws->finalized) {
        return;  // ending: nothing more goes out
    }
    ngx_connection_t *c = ws->request->connection;
    while (ws->written < ws->out.size()) {
        ssize_t n = c->send(c, reinterpret_cast<u_char *>(ws->out.data()) + ws->written, ws->out.size() - ws->written);
        if (n > 0) {
            ws->written += static_cast<size_t>(n);
            continue;
        }
        if (n == NGX_AGAIN) {
            auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
                ngx_http_get_module_loc_conf(ws->request, ngx_http_core_module));
            ngx_add_timer(c->write, clcf->send_timeout);
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                finalize(ws, NGX_HTTP_CLIENT_CLOSED_REQUEST);
            }
            return;
        }
        finalize(ws, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }
    ws->out.clear();
    ws->written = 0;
    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }
    if (ws->close_sent) {
        finalize(ws, NGX_DONE);
        return;
    }
    if (ws->read_stopped) {
        ws->read_stopped = false;
        read_frames(ws);
    }
}

// Sends the acknowledgements that can go (their message and every earlier
// one decided), then the close frame once nothing is left to acknowledge.
void acknowledge(Connection *ws)
{
    bool was_full = ws->messages.size() >= kMaxPending;
    while (!ws->messages.empty() && ws->messages.front()->outcome) {
        Message *m = ws->messages.front();
        ws->messages.pop_front();
        Outcome outcome = *m->outcome;
        std::string text = "{\"n\":" + std::to_string(m->n);
        if (outcome == Outcome::queued || outcome == Outcome::sampled_out) {
            text += ",\"status\":\"";
        } else {
            text += ",\"error\":\"";
        }
        text.append(recording::outcome_name(outcome));
        text += "\"}";
        recording::append_websocket_text(ws->out, text);
        delete m;
    }
    if (ws->closing != 0 && ws->messages.empty() && !ws->close_sent) {
        recording::append_websocket_close(ws->out, ws->closing);
        ws->close_sent = true;
    }
    write_out(ws);
    if (!ws->finalized && was_full && ws->messages.size() < kMaxPending && ws->closing == 0) {
        read_frames(ws);  // reading had stopped: go on
    }
}

// --- A message's steps ---------------------------------------------------------

Message *resume(Waiter *waiter)
{
    auto *m = reinterpret_cast<Message *>(waiter);
    m->waiter.in_flight = false;
    if (m->connection == nullptr) {
        delete m;
        return nullptr;
    }
    return m;
}

void decide(Message *m, Outcome outcome)
{
    m->outcome = outcome;
    m->decoder.reset();
    ngx_http_recording_count_outcome(static_cast<size_t>(outcome));
    if (outcome != Outcome::queued && outcome != Outcome::sampled_out) {
        Connection *ws = m->connection;
        ngx_log_error(NGX_LOG_INFO, ws->request->connection->log, 0,
                      "recording: websocket message %uL refused: %s, site \"%*s\", session \"%*s\"", m->n,
                      recording::outcome_name(outcome).data(), ws->site_id.size(), ws->site_id.data(),
                      m->batch.session_id.size(), m->batch.session_id.data());
    }
}

void decided(Message *m, Outcome outcome)
{
    Connection *ws = m->connection;
    decide(m, outcome);
    acknowledge(ws);
}

Waiter *waiter_of_message(void *data)
{
    return &static_cast<Message *>(data)->waiter;
}

int64_t now_ms()
{
    ngx_time_t *tp = ngx_timeofday();
    return static_cast<int64_t>(tp->sec) * 1000 + static_cast<int64_t>(tp->msec);
}

std::optional<std::string_view> complex_value(ngx_http_request_t *r, ngx_http_complex_value_t *cv)
{
    ngx_str_t value;
    if (cv == nullptr || ngx_http_complex_value(r, cv, &value) != NGX_OK) {
        return std::nullopt;
    }
    return ngx_http_recording_view(value);
}

void enrich_and_push(Message *m)
{
    Connection *ws = m->connection;
    ngx_http_request_t *r = ws->request;
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_recording_module));

    // The upgrade's request id and the message's number: unique per batch.
    std::string request_id;
    ngx_http_variable_value_t *v = ngx_http_get_indexed_variable(r, rmcf->request_id_index);
    if (v != nullptr && !v->not_found) {
        request_id.assign(reinterpret_cast<const char *>(v->data), v->len);
    }
    request_id += '-';
    request_id += std::to_string(m->n);

    recording::IngestFields fields;
    fields.site_id = ws->site_id;
    fields.received_at_ms = now_ms();
    fields.ip = ngx_http_recording_view(r->connection->addr_text);
    if (r->headers_in.user_agent != nullptr) {
        fields.user_agent = ngx_http_recording_view(r->headers_in.user_agent->value);
    }
    fields.country = complex_value(r, ws->conf->country);
    fields.request_id = request_id;

    std::string ingest = recording::ingest_member(fields);
    recording::QueueElement element(m->decoder->decoded(), m->batch, ingest);
    unsigned shard = recording::queue_shard(m->bucket, static_cast<unsigned>(ws->conf->queue_shards));
    std::string key = recording::queue_key(shard);
    if (!ngx_http_recording_queue_push(ws->conf, key, element, &m->waiter)) {
        decided(m, Outcome::queue_unavailable);
        return;
    }
    m->decoder.reset();  // the element was copied into its RPUSH
}

void continue_with_site(Message *m, const recording::SiteSettings &site)
{
    Connection *ws = m->connection;
    if (site.status == recording::SiteStatus::unknown) {
        decided(m, Outcome::unknown_site);
        return;
    }
    if (site.status == recording::SiteStatus::disabled) {
        decided(m, Outcome::site_disabled);
        return;
    }
    m->bucket = recording::session_bucket(ws->site_id, m->batch.session_id);
    if (!recording::is_sampled_in(m->bucket, site.sample_rate)) {
        decided(m, Outcome::sampled_out);
        return;
    }
    if (site.budget_unreadable) {
        ngx_http_recording_budget_warn_unreadable(ws->request->connection->log, ws->site_id);
    }
    if (site.budget) {
        switch (ngx_http_recording_budget_check(ws->conf, ws->site_id, m->batch.session_id, *site.budget, now_ms(),
                                                waiter_of_message, m))
        {
        case ngx_http_recording_budget_answer_e::refused:
            decided(m, Outcome::quota_exceeded);
            return;
        case ngx_http_recording_budget_answer_e::pending:
            return;
        case ngx_http_recording_budget_answer_e::admitted:
            break;
        }
    }
    enrich_and_push(m);
}

void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept
{
    Message *m = resume(waiter);
    if (m == nullptr) {
        return;
    }
    try {
        if (settings != nullptr) {
            continue_with_site(m, *settings);
        } else {
            decided(m, Outcome::queue_unavailable);
        }
    } catch (const std::exception &) {
        decided(m, Outcome::internal_error);
    }
}

void budget_decided(Waiter *waiter, bool admitted) noexcept
{
    Message *m = resume(waiter);
    if (m == nullptr) {
        return;
    }
    try {
        if (admitted) {
            enrich_and_push(m);
        } else {
            decided(m, Outcome::quota_exceeded);
        }
    } catch (const std::exception &) {
        decided(m, Outcome::internal_error);
    }
}

void pushed(Waiter *waiter, Outcome outcome, uint64_t) noexcept
{
    Message *m = resume(waiter);
    if (m == nullptr) {
        return;
    }
    decided(m, outcome);
}

Outcome decode_and_validate(Message *m, bool binary, std::string_view payload)
{
    ngx_http_recording_loc_conf_t *conf = m->connection->conf;
    m->decoder.emplace(binary ? recording::ContentEncoding::compressed : recording::ContentEncoding::identity,
                       conf->max_decoded_size);
    m->decoder->expect_input(payload.size());
    recording::DecodeStatus status = m->decoder->feed(payload.data(), payload.size());
    if (status == recording::DecodeStatus::ok) {
        status = m->decoder->finish();
    }
    switch (status) {
    case recording::DecodeStatus::invalid:
        return Outcome::invalid_encoding;
    case recording::DecodeStatus::too_large:
        return Outcome::payload_too_large;
    case recording::DecodeStatus::ok:
        break;
    }
    ngx_http_recording_count(&ngx_http_recording_stats_t::decoded_bytes,
                             static_cast<ngx_atomic_int_t>(m->decoder->decoded().size()));
    recording::ValidationLimits limits;
    limits.max_events = conf->max_events;
    limits.max_depth = static_cast<unsigned>(conf->max_depth);
    m->batch = recording::validate_batch(m->decoder->decoded(), limits);
    return m->batch.valid ? Outcome::queued : m->batch.error;
}

// A data message read whole: its way through the steps begins.
void take_message(Connection *ws, bool binary, std::string_view payload)
{
    ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_messages);
    auto *m = new Message{};
    m->waiter = Waiter{ws->request, false, pushed, site_found, budget_decided};
    m->connection = ws;
    m->n = ++ws->count;
    try {
        ws->messages.push_back(m);
    } catch (const std::bad_alloc &) {
        delete m;
        throw;
    }
    ngx_http_recording_count(&ngx_http_recording_stats_t::received_bytes,
                             static_cast<ngx_atomic_int_t>(payload.size()));
    try {
        Outcome outcome = decode_and_validate(m, binary, payload);
        if (outcome != Outcome::queued) {
            decided(m, outcome);
            return;
        }
        recording::SiteSettings settings;
        switch (ngx_http_recording_site_look_up(ws->conf, ws->site_id, waiter_of_message, m, &settings)) {
        case ngx_http_recording_site_answer_e::ready:
            continue_with_site(m, settings);
            break;
        case ngx_http_recording_site_answer_e::unavailable:
            decided(m, Outcome::queue_unavailable);
            break;
        case ngx_http_recording_site_answer_e::pending:
            break;
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ws->request->connection->log, 0, "recording: %s", e.what());
        if (!m->waiter.in_flight && !m->outcome) {
            decided(m, Outcome::internal_error);
        }
    }
}

// --- Reading -----------------------------------------------------------------

// Ends the connection once what was read is acknowledged: `code` goes in
// the close frame.
void begin_closing(Connection *ws, uint16_t code)
{
    if (ws->closing == 0) {
        ws->closing = code;
    }
    acknowledge(ws);
}

void pong(Connection *ws, std::string_view payload)
{
    recording::append_websocket_pong(ws->out, payload);
    write_out(ws);
}

// Handles what the reader has; false when the connection stops reading.
bool handle_events(Connection *ws)
{
    using Kind = recording::WebSocketEvent::Kind;
    while (recording::WebSocketEvent event = ws->reader.next()) {
        switch (event.kind) {
        case Kind::text:
        case Kind::binary:
            take_message(ws, event.kind == Kind::binary, event.payload);
            break;
        case Kind::ping:
            pong(ws, event.payload);
            break;
        case Kind::pong:
        case Kind::none:
            break;
        case Kind::close:
            begin_closing(ws, event.code == recording::websocket_status::no_status
                                  ? recording::websocket_status::normal : event.code);
            return false;
        case Kind::error:
            ngx_log_error(NGX_LOG_INFO, ws->request->connection->log, 0,
                          "recording: websocket closed with %ui: %s", static_cast<ngx_uint_t>(event.code),
                          event.error);
            begin_closing(ws, event.code);
            return false;
        }
        if (ws->finalized) {
            return false;
        }
    }
    return true;
}

bool feed(Connection *ws, const u_char *data, size_t size)
{
    size_t used = 0;
    // What one read brings is handled whole: at most kReadSize of pings,
    // whose pongs are as large.
    while (used < size && !ws->finalized && ws->closing == 0) {
        used += ws->reader.feed(data + used, size - used);
        if (!handle_events(ws)) {
            return false;
        }
    }
    return !ws->finalized && ws->closing == 0;
}

void read_frames_now(Connection *ws);

// Reads what the client sent, unless it is being read already: an
// acknowledgement given while a message is taken must not read again from
// under the loop that took it.
void read_frames(Connection *ws)
{
    if (ws->reading) {
        return;
    }
    ws->reading = true;
    read_frames_now(ws);
    ws->reading = false;
}

void read_frames_now(Connection *ws)
{
    static u_char buffer[kReadSize];
    ngx_http_request_t *r = ws->request;
    ngx_connection_t *c = r->connection;

    // Bytes the client sent right behind its handshake.
    if (r->header_in != nullptr && r->header_in->pos < r->header_in->last) {
        const u_char *data = r->header_in->pos;
        size_t size = static_cast<size_t>(r->header_in->last - r->header_in->pos);
        r->header_in->pos = r->header_in->last;
        if (!feed(ws, data, size)) {
            return;
        }
    }
    while (ws->messages.size() < kMaxPending) {
        if (ws->unsent() >= kMaxUnsent) {
            ws->read_stopped = true;  // the client reads nothing: neither do we
            return;
        }
        ssize_t n = c->recv(c, buffer, kReadSize);
        if (n == NGX_AGAIN) {
            if (c->read->timer_set) {
                ngx_del_timer(c->read);
            }
            ngx_add_timer(c->read, ws->conf->websocket_idle_timeout);
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                finalize(ws, NGX_HTTP_CLIENT_CLOSED_REQUEST);
            }
            return;
        }
        if (n == 0 || n == NGX_ERROR) {
            finalize(ws, NGX_HTTP_CLIENT_CLOSED_REQUEST);
            return;
        }
        if (!feed(ws, buffer, static_cast<size_t>(n))) {
            return;
        }
    }
}

// --- The connection's events ---------------------------------------------------

void on_read(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *r = static_cast<ngx_http_request_t *>(c->data);
    auto *ws = connection_of(r);
    try {
        if (ws->finalized) {
            // ending: end_connection() comes
        } else if (c->close) {
            // The worker is exiting (reload, quit): what was read is
            // acknowledged, then 1001 says why the connection ends.
            c->close = 0;
            c->idle = 0;
            begin_closing(ws, recording::websocket_status::going_away);
        } else if (ev->timedout) {
            ev->timedout = 0;
            if (ws->messages.empty()) {
                begin_closing(ws, recording::websocket_status::normal);
            } else {
                ngx_add_timer(c->read, ws->conf->websocket_idle_timeout);
            }
        } else if (ws->closing == 0) {
            read_frames(ws);
        } else if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            finalize(ws, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "recording: %s", e.what());
        finalize(ws, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
    ngx_http_run_posted_requests(c);
}

void on_write(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *r = static_cast<ngx_http_request_t *>(c->data);
    auto *ws = connection_of(r);
    if (ws->finalized) {
        // ending: end_connection() comes
    } else if (ev->timedout) {
        c->timedout = 1;
        finalize(ws, NGX_HTTP_REQUEST_TIME_OUT);
    } else {
        write_out(ws);
    }
    ngx_http_run_posted_requests(c);
}

void end_connection(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *r = static_cast<ngx_http_request_t *>(c->data);
    auto *ws = connection_of(r);
    ngx_http_finalize_request(r, ws->end_rc);  // frees ws
    ngx_http_run_posted_requests(c);
}

// The connection ends once the current event is handled (end_event).
void finalize(Connection *ws, ngx_int_t rc)
{
    if (ws->finalized) {
        return;
    }
    ws->finalized = true;
    ngx_http_request_t *r = ws->request;
    ngx_connection_t *c = r->connection;
    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }
    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }
    c->idle = 0;
    ws->end_rc = rc;
    ws->end_event.handler = end_connection;
    ws->end_event.data = c;  // nginx's timer logging reads a connection there
    ws->end_event.log = c->log;
    ngx_add_timer(&ws->end_event, 0);
}

void destroy_connection(void *data) noexcept
{
    static_cast<Connection *>(data)->~Connection();
}

ngx_int_t upgrade(ngx_http_request_t *r, std::string_view key);

// The site decides: the contract's refusal, or the upgrade (NGX_DONE).
ngx_int_t after_site(Connection *ws, const recording::SiteSettings *settings)
{
    if (settings == nullptr) {
        return refuse(ws->request, Outcome::queue_unavailable);
    }
    if (settings->status == recording::SiteStatus::unknown) {
        return refuse(ws->request, Outcome::unknown_site);
    }
    if (settings->status == recording::SiteStatus::disabled) {
        return refuse(ws->request, Outcome::site_disabled);
    }
    ngx_int_t rc = upgrade(ws->request, ws->key);
    if (rc == NGX_DONE) {
        ws->upgraded = true;
        ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections);
        ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections_open);
    }
    return rc;
}

void handshake_site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept
{
    waiter->in_flight = false;
    ngx_http_request_t *r = waiter->request;
    if (r == nullptr) {
        delete waiter;
        return;
    }
    auto *ws = connection_of(r);
    ngx_connection_t *c = r->connection;
    ngx_int_t rc;
    try {
        rc = after_site(ws, settings);
    } catch (const std::exception &) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
    ngx_http_run_posted_requests(c);  // from Redis's event, not the client's
}

Waiter *waiter_of_handshake(void *data)
{
    auto *ws = static_cast<Connection *>(data);
    if (ws->site_waiter == nullptr) {
        ws->site_waiter = new Waiter{ws->request, false, nullptr, handshake_site_found, nullptr};
    }
    return ws->site_waiter;
}

// The site is known and enabled: 101, and the connection is served here.
ngx_int_t upgrade(ngx_http_request_t *r, std::string_view key)
{
    ngx_str_t accept = accept_value(r, key);
    if (accept.data == nullptr || !ngx_http_recording_add_header(r, "Upgrade", "websocket")
        || !ngx_http_recording_add_header(r, "Sec-WebSocket-Accept", accept))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;
    r->header_only = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }
    ngx_connection_t *c = r->connection;
    c->read->handler = on_read;
    c->write->handler = on_write;
    // Reload and quit close idle connections through their handler: this
    // one then says goodbye (1001) instead.
    c->idle = 1;
    if (c->buffered) {
        // The 101 is not all written yet: nginx's output chain has it.
        (void) ngx_http_output_filter(r, nullptr);
    }
    // Frames are read once the handler has returned: the connection may end
    // while they are, and the request must not be freed under its handler.
    ngx_post_event(c->read, &ngx_posted_events);
    return NGX_DONE;
}

}  // namespace

bool ngx_http_recording_websocket_requested(ngx_http_request_t *r) noexcept
{
    if (r->method != NGX_HTTP_GET) {
        return false;
    }
    ngx_uint_t count;
    return header_has_token(ngx_http_recording_find_header(r, "upgrade", &count), "websocket");
}

ngx_int_t ngx_http_recording_websocket_start(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                             std::string_view site_id) noexcept
{
    try {
        ngx_uint_t count;
        ngx_table_elt_t *version = ngx_http_recording_find_header(r, "sec-websocket-version", &count);
        if (version == nullptr || !recording::valid_websocket_version(ngx_http_recording_view(version->value))) {
            if (!ngx_http_recording_add_header(r, "Sec-WebSocket-Version", "13")) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
            return ngx_http_recording_send(r, 426, "application/json", "{\"error\":\"bad_websocket_handshake\"}");
        }
        ngx_table_elt_t *key = ngx_http_recording_find_header(r, "sec-websocket-key", &count);
        ngx_uint_t connections;
        if (key == nullptr || count != 1 || !recording::valid_websocket_key(ngx_http_recording_view(key->value))
            || !header_has_token(ngx_http_recording_find_header(r, "connection", &connections), "upgrade") || r->http_version != NGX_HTTP_VERSION_11)
        {
            return ngx_http_recording_send(r, NGX_HTTP_BAD_REQUEST, "application/json",
                                           "{\"error\":\"bad_websocket_handshake\"}");
        }

        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(Connection));
        if (cln == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        auto *ws = new (cln->data) Connection(r, conf, site_id);
        cln->handler = destroy_connection;
        ngx_http_set_ctx(r, ws, ngx_http_recording_module);
        ws->key = ngx_http_recording_view(key->value);

        // The site, before any upgrade: from the cache, else from Redis.
        recording::SiteSettings settings;
        ngx_int_t rc;
        switch (ngx_http_recording_site_look_up(conf, site_id, waiter_of_handshake, ws, &settings)) {
        case ngx_http_recording_site_answer_e::ready:
            rc = after_site(ws, &settings);
            break;
        case ngx_http_recording_site_answer_e::unavailable:
            rc = after_site(ws, nullptr);
            break;
        case ngx_http_recording_site_answer_e::pending:
        default:
            r->main->count++;  // handshake_site_found() goes on
            return NGX_DONE;
        }
        if (rc == NGX_DONE) {
            r->main->count++;  // the connection is served here from now on
        }
        return rc;
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

int64_t ngx_http_recording_websocket_messages(ngx_http_request_t *r) noexcept
{
    Connection *ws = connection_of(r);
    return ws != nullptr ? static_cast<int64_t>(ws->count) : -1;
}
