// WebSocket ingestion: an upgraded connection's frames and messages.
//
//   frames (core's WebSocketReader) -> each data message: a batch
//   (ngx_http_recording_batch: decode, validate, site settings, sample,
//   daily budget, enrich, RPUSH) -> its acknowledgement, in message order.
//
// The connection is the upgraded request's: its pool holds the connection's
// state, its events come here (the client's read and write handlers are
// this file's). A message's batch still waiting for Redis when the
// connection goes is released: its step's answer then only frees it. While
// kMaxPending messages are unacknowledged, no more is read from the client.

#include "ngx_http_recording_websocket.h"

#include <deque>
#include <exception>
#include <new>
#include <optional>
#include <string>

#include "ngx_http_recording_batch.h"
#include "ngx_http_recording_stats.h"
#include "outcome.h"
#include "websocket.h"

using recording::Outcome;

namespace {

// Unacknowledged messages a connection may have before reading stops.
constexpr size_t kMaxPending = 64;
constexpr size_t kReadSize = 16384;
// Frames not yet written to a client that does not read (pongs to a flood
// of pings) before reading from it stops.
constexpr size_t kMaxUnsent = 256 * 1024;

struct Connection;

// One data message, read and not yet acknowledged.
struct Message {
    Connection *connection;
    ngx_http_recording_batch_t *batch;  // on its way through the steps
    std::optional<Outcome> outcome;     // decided: its acknowledgement may go

    uint64_t n() const noexcept { return batch->message; }
};

struct Connection : ngx_http_recording_ctx_t {
    ngx_http_request_t *request;
    ngx_http_recording_loc_conf_t *conf;
    std::string_view site_id;
    recording::WebSocketReader reader;
    // Read, not yet acknowledged, in order. A deque: a message stays where
    // it is while others come and go at the ends, and its batch's `owner`
    // points at it.
    std::deque<Message> messages;
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
        ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections_open, -1);
        if (end_event.timer_set) {
            ngx_del_timer(&end_event);
        }
        for (Message &m : messages) {
            ngx_http_recording_batch_release(m.batch);
        }
    }
};

Connection *connection_of(ngx_http_request_t *r)
{
    return ngx_http_recording_ctx<Connection>(r, ngx_http_recording_ctx_kind_e::websocket);
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
    while (!ws->messages.empty() && ws->messages.front().outcome) {
        Message &m = ws->messages.front();
        Outcome outcome = *m.outcome;
        std::string text = "{\"n\":" + std::to_string(m.n());
        if (outcome == Outcome::queued || outcome == Outcome::sampled_out) {
            text += ",\"status\":\"";
        } else {
            text += ",\"error\":\"";
        }
        text.append(recording::outcome_name(outcome));
        text += "\"}";
        recording::append_websocket_text(ws->out, text);
        ngx_http_recording_batch_release(m.batch);
        ws->messages.pop_front();
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

// --- A message's way ---------------------------------------------------------

// Counts the outcome and logs a refusal, as for a POST.
void decide(Message &m, Outcome outcome)
{
    m.outcome = outcome;
    ngx_http_recording_count_outcome(static_cast<size_t>(outcome));
    if (outcome != Outcome::queued && outcome != Outcome::sampled_out) {
        Connection *ws = m.connection;
        const std::string &session = m.batch->validated.session_id;
        ngx_log_error(NGX_LOG_INFO, ws->request->connection->log, 0,
                      "recording: websocket message %uL refused: %s, site \"%*s\", session \"%*s\"", m.n(),
                      recording::outcome_name(outcome).data(), ws->site_id.size(), ws->site_id.data(),
                      session.size(), session.data());
    }
}

// The batch's steps are done with a message (its batch's `done`).
void batch_done(ngx_http_recording_batch_t *batch, Outcome outcome, bool) noexcept
{
    Message &m = *static_cast<Message *>(batch->owner);
    Connection *ws = m.connection;
    decide(m, outcome);
    try {
        acknowledge(ws);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ws->request->connection->log, 0, "recording: %s", e.what());
        finalize(ws, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}

// A data message read whole: its way through the steps begins.
void take_message(Connection *ws, bool binary, std::string_view payload)
{
    ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_messages);
    ws->messages.push_back(Message{ws, nullptr, std::nullopt});
    Message &m = ws->messages.back();
    try {
        m.batch = ngx_http_recording_batch_create(ws->request, ws->conf, ws->site_id, ++ws->count, batch_done, &m);
    } catch (const std::bad_alloc &) {
        ws->messages.pop_back();
        throw;
    }
    ngx_http_recording_batch_take_bytes(m.batch, binary ? recording::ContentEncoding::compressed
                                                        : recording::ContentEncoding::identity, payload);
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

ngx_int_t get_messages(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t) noexcept
{
    Connection *ws = connection_of(r);
    if (ws == nullptr) {
        v->not_found = 1;
        return NGX_OK;
    }
    auto *text = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (text == nullptr) {
        return NGX_ERROR;
    }
    v->data = text;
    v->len = static_cast<unsigned>(ngx_sprintf(text, "%uL", ws->count) - text);
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

}  // namespace

ngx_int_t ngx_http_recording_websocket_serve(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                             std::string_view site_id) noexcept
{
    try {
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(Connection));
        if (cln == nullptr) {
            return NGX_ERROR;
        }
        auto *ws = new (cln->data) Connection(r, conf, site_id);
        cln->handler = destroy_connection;
        ngx_http_set_ctx(r, ws, ngx_http_recording_module);
        ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections);
        ngx_http_recording_count(&ngx_http_recording_stats_t::websocket_connections_open);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        return NGX_ERROR;
    }

    ngx_connection_t *c = r->connection;
    // Acknowledgements are small frames, often several in flight: with
    // Nagle's algorithm one would wait for the client's (delayed, up to
    // 40 ms) ACK of the one before. nginx sets TCP_NODELAY when a connection
    // goes keep-alive, which an upgraded one never does; its proxy sets it
    // on upgrade, as here.
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        return NGX_ERROR;
    }
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

ngx_int_t ngx_http_recording_websocket_add_variables(ngx_conf_t *cf) noexcept
{
    static ngx_str_t name = ngx_string("recording_websocket_messages");
    ngx_http_variable_t *v = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (v == nullptr) {
        return NGX_ERROR;
    }
    v->get_handler = get_messages;
    return NGX_OK;
}
