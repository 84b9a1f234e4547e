// One connection to one Redis server, on nginx's connection I/O.
//
// The socket is an nginx connection: its events come from nginx's event
// loop (edge-triggered epoll: reads and writes go on until EAGAIN), its
// bytes go through c->recv/c->send, which nginx's OpenSSL layer replaces
// with TLS once the handshake is done. hiredis only reads the protocol
// (redisReader). Commands are queued in one buffer and written when the
// current events are handled (a posted write event): the commands of one
// turn of the event loop leave in one write.
//
// A connection goes idle -> connecting -> (handshaking) -> ready. The login
// (AUTH, SELECT) is queued first; commands sent meanwhile wait in held_.
// When a connection is dropped, every call still pending is answered with a
// null reply, after the client forgot the connection.

#include "ngx_http_recording_redis.h"

#include <hiredis/hiredis.h>
#include <netinet/tcp.h>

#include <new>

#include "ngx_http_recording_redis_tls.h"
#include "ngx_http_recording_stats.h"
#include "redis_protocol.h"

namespace {

// The size of one read from the socket. Replies of the ingest path are
// small; a larger one takes several reads.
constexpr size_t kReadSize = 16384;
u_char read_buffer[kReadSize];  // a worker has one thread: shared by every client

// A pool for what nginx's OpenSSL layer allocates per connection.
constexpr size_t kTlsPoolSize = 1024;

}  // namespace

RedisClient::RedisClient(const RedisAddress &address, const RedisLogin &login,
                         const ngx_http_recording_redis_tls_t *tls, ngx_log_t *log,
                         ngx_atomic_t *connections) noexcept
    : address_(address), login_(login), tls_(tls), log_(log), connections_(connections)
{
    if (tls_ != nullptr) {
        tls_name_ = tls_->name.len != 0 ? tls_->name : address_.server_name;
    }
    connect_timer_.handler = on_connect_timeout;
    connect_timer_.data = this;
    connect_timer_.log = log;
    reply_timer_.handler = on_reply_timeout;
    reply_timer_.data = this;
    reply_timer_.log = log;
}

RedisClient::~RedisClient()
{
    close();
}

void RedisClient::close() noexcept
{
    if (state_ != State::idle) {
        drop();
    }
}

bool RedisClient::available() noexcept
{
    return !(unreachable_ && state_ == State::idle && ngx_http_recording_before(ngx_current_msec, retry_at_));
}

// Only timeouts and refused certificates make a server unreachable: a
// refused connect answers at once anyway, and the next attempt costs no
// more than a refusal.
void RedisClient::mark_unreachable() noexcept
{
    unreachable_ = true;
    retry_at_ = ngx_current_msec + kRetryInterval;
}

bool RedisClient::send(std::string_view, const RedisCommand &command, RedisCall *call,
                       const RedisTimeouts &timeouts) noexcept
{
    return send(command, call, timeouts);
}

bool RedisClient::send(const RedisCommand &command, RedisCall *call, const RedisTimeouts &timeouts) noexcept
{
    if (answering_drop_) {
        return false;
    }
    // Deadlines count from now, not from when this event began: decoding and
    // validating a large batch may have taken longer than the timeout.
    ngx_time_update();

    if (state_ == State::idle && (!available() || !connect(timeouts.connect))) {
        return false;
    }
    bool held = login_replies_ != 0;
    try {
        pending_.push_back({call, held ? kHeld : queued_, command.size(), timeouts.reply});
        (held ? held_ : out_).append(command.pieces(), command.count(), call->command_kept);
    } catch (const std::bad_alloc &) {
        if (!pending_.empty() && pending_.back().call == call) {
            pending_.pop_back();  // the append failed, not the push
        }
        return false;
    }
    if (!held) {
        queued_ += command.size();
        schedule_write();
    }
    call->deadline = ngx_current_msec + timeouts.reply;
    if (state_ == State::ready) {
        arm_reply_timer(timeouts.reply);
    }
    return true;
}

// ---------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------

bool RedisClient::connect(ngx_msec_t timeout) noexcept
{
    if (attempted_before_) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::reconnects);
    }
    attempted_before_ = true;

    reader_ = redisReaderCreate();
    if (reader_ == nullptr || !queue_login() || !open_socket()) {
        drop();  // nothing is pending yet: answers nobody
        return false;
    }
    ngx_add_timer(&connect_timer_, timeout);
    return true;
}

// AUTH and SELECT go first on every connection, ahead of any command.
// Commands wait (held_) until both are answered: behind a refused SELECT,
// Redis would run them in database 0. A refusal is logged once per change
// of state and drops the connection: what waits gets no reply (503 or the
// spool), and for kRetryInterval no new attempt is made.
bool RedisClient::queue_login() noexcept
{
    login_replies_ = 0;
    out_.clear();
    try {
        if (login_.password.len != 0) {
            std::string_view password = ngx_http_recording_view(login_.password);
            out_.append(login_.user.len != 0
                            ? recording::format_command({"AUTH", ngx_http_recording_view(login_.user), password})
                            : recording::format_command({"AUTH", password}),
                        false);
            login_replies_++;
        }
        if (login_.db >= 0) {
            out_.append(recording::format_command({"SELECT", std::to_string(login_.db)}), false);
            login_replies_++;
        }
    } catch (const std::bad_alloc &) {
        return false;
    }
    queued_ = out_.size();
    return true;
}

// A non-blocking connect on a new nginx connection; false (logged once per
// change of state) when it failed at once.
bool RedisClient::open_socket() noexcept
{
    const sockaddr *sa = &address_.sockaddr.sockaddr;
    ngx_socket_t s = ngx_socket(sa->sa_family, SOCK_STREAM, 0);
    if (s == static_cast<ngx_socket_t>(-1)) {
        fail("connect failed", ngx_socket_errno, false);
        return false;
    }
    ngx_connection_t *c = ngx_get_connection(s, log_);
    if (c == nullptr) {
        ::close(s);
        return false;  // nginx logged "worker_connections are not enough"
    }
    connection_ = c;
    c->data = this;
    c->type = SOCK_STREAM;
    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;
    c->sendfile = 0;
    // nginx's OpenSSL layer logs what the peer did wrong at this level; the
    // client logs the change of state itself, once, at [error].
    c->log_error = NGX_ERROR_INFO;
    c->read->handler = on_event;
    c->write->handler = on_event;
    c->read->log = log_;
    c->write->log = log_;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    if (ngx_nonblocking(s) == -1) {
        fail("connect failed", ngx_socket_errno, false);
        return false;
    }
    if (sa->sa_family != AF_UNIX) {
        // Each command is written as soon as the event loop turns: Nagle's
        // delay would only wait for the reply to the previous one.
        int on = 1;
        (void) setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
    if (tls_ != nullptr) {
        c->pool = ngx_create_pool(kTlsPoolSize, log_);
        if (c->pool == nullptr) {
            return false;
        }
    }
    if (ngx_add_conn != nullptr) {
        if (ngx_add_conn(c) == NGX_ERROR) {
            return false;
        }
    } else {
        ngx_uint_t flags = NGX_LEVEL_EVENT;
        if (ngx_event_flags & NGX_USE_CLEAR_EVENT) {
            flags = NGX_CLEAR_EVENT;
        }
        if (ngx_add_event(c->read, NGX_READ_EVENT, flags) != NGX_OK
            || ngx_add_event(c->write, NGX_WRITE_EVENT, flags) != NGX_OK)
        {
            return false;
        }
    }

    state_ = State::connecting;
    if (::connect(s, sa, address_.socklen) == -1) {
        ngx_err_t err = ngx_socket_errno;
        if (err != NGX_EINPROGRESS) {
            fail("connect failed", err, false);
            return false;
        }
        return true;  // writability tells that it finished
    }
    // Connected at once (a unix socket, often): finished once this event is.
    ngx_post_event(c->write, &ngx_posted_events);
    return true;
}

void RedisClient::connect_done() noexcept
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(connection_->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
        err = ngx_socket_errno;
    }
    if (err != 0) {
        fail("connect failed", err, false);
        return;
    }
    if (tls_ == nullptr) {
        established();
        return;
    }
    state_ = State::handshaking;
    ngx_int_t rc = ngx_http_recording_redis_tls_handshake(connection_, tls_, tls_name_);
    if (rc == NGX_AGAIN) {
        connection_->ssl->handler = on_handshake;
        return;
    }
    handshake_done();
}

void RedisClient::on_handshake(ngx_connection_t *c) noexcept
{
    static_cast<RedisClient *>(c->data)->handshake_done();
}

// The certificate is checked before any byte of the login goes out: a
// password must not reach a server that is not the one named.
void RedisClient::handshake_done() noexcept
{
    ngx_connection_t *c = connection_;
    if (c->ssl == nullptr || !c->ssl->handshaked) {
        fail("TLS handshake failed", 0, true);
        return;
    }
    char reason[256];
    if (const char *refusal = ngx_http_recording_redis_tls_refusal(c, tls_, tls_name_, reason, sizeof(reason))) {
        fail(refusal, 0, true);
        return;
    }
    // nginx's handshake handlers stood in for the client's.
    c->read->handler = on_event;
    c->write->handler = on_event;
    established();
}

void RedisClient::established() noexcept
{
    state_ = State::ready;
    unreachable_ = false;
    if (connect_timer_.timer_set) {
        ngx_del_timer(&connect_timer_);
    }
    if (connections_ != nullptr) {
        (void) ngx_atomic_fetch_add(connections_, 1);
        counted_ = true;
    }
    restart_reply_deadlines();
    // Recovery is declared on the first reply: a server that accepts
    // connections but never answers has not recovered.
    uint64_t generation = generation_;
    write_out();
    // What the server said first (an error before it closes: maxclients)
    // came with the connect's readiness, whose edge is spent.
    if (generation == generation_ && connection_->read->ready) {
        read_in();
    }
}

// What waited for the connection (and the handshake, bounded by the
// connect timeout) has its whole read timeout from now on, when it can go
// out: the two timeouts do not eat into each other.
void RedisClient::restart_reply_deadlines() noexcept
{
    if (pending_.empty()) {
        return;
    }
    ngx_msec_t shortest = pending_.front().timeout;
    for (const Pending &p : pending_) {
        p.call->deadline = ngx_current_msec + p.timeout;
        shortest = ngx_min(shortest, p.timeout);
    }
    ngx_add_timer(&reply_timer_, shortest);
}

// ---------------------------------------------------------------------------
// Writing and reading
// ---------------------------------------------------------------------------

void RedisClient::schedule_write() noexcept
{
    if (state_ == State::ready && !connection_->write->posted) {
        ngx_post_event(connection_->write, &ngx_posted_events);
    }
}

void RedisClient::write_out() noexcept
{
    ngx_connection_t *c = connection_;
    while (!out_.empty()) {
        std::string_view next = out_.front();
        ssize_t n = c->send(c, reinterpret_cast<u_char *>(const_cast<char *>(next.data())), next.size());
        if (n > 0) {
            out_.consume(static_cast<size_t>(n));
            written_ += static_cast<uint64_t>(n);
            continue;
        }
        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                fail("connection lost", 0, false);
            }
            return;
        }
        fail("connection lost", 0, false);  // nginx logged why, at [info]
        return;
    }
    // select and poll report a registered write event at every turn.
    if (!(ngx_event_flags & NGX_USE_CLEAR_EVENT) && ngx_handle_write_event(c->write, 0) != NGX_OK) {
        fail("connection lost", 0, false);
    }
}

void RedisClient::read_in() noexcept
{
    ngx_connection_t *c = connection_;
    uint64_t generation = generation_;
    for (;;) {
        ssize_t n = c->recv(c, read_buffer, kReadSize);
        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                fail("connection lost", 0, false);
            }
            return;
        }
        if (n == 0 || n == NGX_ERROR) {
            fail("connection lost", 0, false);
            return;
        }
        if (redisReaderFeed(reader_, reinterpret_cast<const char *>(read_buffer), static_cast<size_t>(n))
            != REDIS_OK)
        {
            fail("connection lost: out of memory", 0, false);
            return;
        }
        for (;;) {
            void *reply = nullptr;
            if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
                fail("connection lost: a reply that is not RESP", 0, false);
                return;
            }
            if (reply == nullptr) {
                break;
            }
            bool kept = deliver(static_cast<const redisReply *>(reply));
            freeReplyObject(reply);
            if (!kept || generation != generation_) {
                return;  // the connection was dropped meanwhile
            }
        }
    }
}

// One reply, to the login or to the oldest pending call; false when it
// dropped the connection.
bool RedisClient::deliver(const redisReply *reply) noexcept
{
    if (login_replies_ != 0) {
        if (reply->type == REDIS_REPLY_ERROR) {
            if (login_refused_.begins()) {
                ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis %V: login refused: %*s", &address_.name,
                              reply->len, reply->str);
            }
            failing_.begins();
            mark_unreachable();
            drop();
            return false;
        }
        if (--login_replies_ == 0) {
            login_refused_.ends();
            release_held();
        }
        return true;
    }
    if (pending_.empty()) {
        fail("connection lost: a reply to no command", 0, false);
        return false;
    }
    RedisCall *call = pending_.front().call;
    pending_.pop_front();
    if (pending_.empty() && reply_timer_.timer_set) {
        ngx_del_timer(&reply_timer_);
    }
    note_reply(reply);
    call->unconfirmed = false;
    call->on_reply(reply);
    return true;
}

// The login was answered: what waited for it goes out, in order.
void RedisClient::release_held() noexcept
{
    try {
        out_.splice(held_);
    } catch (const std::bad_alloc &) {
        fail("connection dropped: out of memory", 0, false);
        return;
    }
    for (Pending &p : pending_) {
        if (p.begin == kHeld) {
            p.begin = queued_;
            queued_ += p.length;
        }
    }
    schedule_write();
}

void RedisClient::on_event(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *self = static_cast<RedisClient *>(c->data);
    // worker_shutdown_timeout: nginx closes what is left of an exiting
    // worker's connections through their handlers.
    if (c->close) {
        self->close();
        return;
    }
    switch (self->state_) {
    case State::connecting:
        self->connect_done();
        return;
    case State::ready:
        if (ev->write) {
            self->write_out();
        } else {
            self->read_in();
        }
        return;
    case State::idle:
    case State::handshaking:  // nginx's handshake handler has the events
        return;
    }
}

// ---------------------------------------------------------------------------
// Timeouts, failures, and dropping a connection
// ---------------------------------------------------------------------------

// One timer covers every pending reply: it is set for the earliest
// deadline known when it was armed, and re-armed when it fires early.
void RedisClient::arm_reply_timer(ngx_msec_t timeout) noexcept
{
    if (reply_timer_.timer_set
        && !ngx_http_recording_before(ngx_current_msec + timeout, reply_timer_.timer.key))
    {
        return;
    }
    ngx_add_timer(&reply_timer_, timeout);
}

void RedisClient::on_connect_timeout(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<RedisClient *>(ev->data);
    if (self->state_ == State::connecting) {
        self->fail("connect timed out", NGX_ETIMEDOUT, true);
    } else if (self->state_ == State::handshaking) {
        self->fail("TLS handshake timed out", NGX_ETIMEDOUT, true);
    }
}

void RedisClient::on_reply_timeout(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<RedisClient *>(ev->data);
    // Until the connection is up, the connect timer bounds the wait; the
    // read timeout starts again once it is (restart_reply_deadlines).
    if (self->pending_.empty() || self->state_ != State::ready) {
        return;
    }
    ngx_msec_t earliest = self->pending_.front().call->deadline;
    for (const Pending &p : self->pending_) {
        if (ngx_http_recording_before(p.call->deadline, earliest)) {
            earliest = p.call->deadline;
        }
    }
    if (ngx_msec_t left = ngx_http_recording_left(earliest); left > 0) {
        ngx_add_timer(&self->reply_timer_, left);
        return;
    }
    // Replies come in order, so nothing after the late one can come either;
    // a server that does not answer is as good as unreachable.
    self->fail("no reply in time, dropping the connection", NGX_ETIMEDOUT, true);
}

// Logs `what` once per change of state, then drops the connection;
// `unreachable`: no new attempt for kRetryInterval.
void RedisClient::fail(const char *what, ngx_err_t err, bool unreachable) noexcept
{
    if (failing_.begins()) {
        ngx_log_error(NGX_LOG_ERR, log_, err, "recording: redis %V: %s", &address_.name, what);
    }
    if (unreachable) {
        mark_unreachable();
    }
    drop();
}

// Counts a reply by kind, and logs a change between answering and failing:
// an error reply once, not once per command, then the recovery.
void RedisClient::note_reply(const redisReply *reply) noexcept
{
    if (reply == nullptr) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::replies_none);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::replies_error);
        // A cluster's redirections are its routing, not this node failing:
        // the cluster route follows them and logs what matters.
        std::string_view text(reply->str, reply->len);
        if (text.substr(0, 6) == "MOVED " || text.substr(0, 4) == "ASK ") {
            return;
        }
        if (failing_.begins()) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis %V: error reply: %*s", &address_.name,
                          reply->len, reply->str);
        }
        return;
    }
    ngx_http_recording_count(&ngx_http_recording_stats_t::replies_ok);
    if (failing_.ends()) {
        ngx_log_error(NGX_LOG_NOTICE, log_, 0, "recording: redis %V: answering again", &address_.name);
    }
}

// Closes the connection and forgets it, then answers every pending call
// with a null reply (`unconfirmed` when some of its bytes were written:
// Redis may have run it).
void RedisClient::drop() noexcept
{
    generation_++;
    if (connect_timer_.timer_set) {
        ngx_del_timer(&connect_timer_);
    }
    if (reply_timer_.timer_set) {
        ngx_del_timer(&reply_timer_);
    }
    if (ngx_connection_t *c = connection_) {
        if (c->ssl != nullptr) {
            // close_notify if it can go at once; never wait for the peer's.
            c->ssl->no_wait_shutdown = 1;
            if (ngx_ssl_shutdown(c) == NGX_AGAIN) {
                c->error = 1;  // a quiet shutdown: done at once
                (void) ngx_ssl_shutdown(c);
            }
        }
        ngx_pool_t *pool = c->pool;
        ngx_close_connection(c);
        if (pool != nullptr) {
            ngx_destroy_pool(pool);
        }
    }
    if (reader_ != nullptr) {
        redisReaderFree(reader_);
    }
    if (counted_) {
        (void) ngx_atomic_fetch_add(connections_, -1);
        counted_ = false;
    }
    connection_ = nullptr;
    reader_ = nullptr;
    state_ = State::idle;
    login_replies_ = 0;
    // Before any call is answered: a call may free the bytes it kept.
    out_.clear();
    held_.clear();
    uint64_t written = written_;
    queued_ = 0;
    written_ = 0;

    std::deque<Pending> pending;
    pending.swap(pending_);
    answering_drop_ = true;
    for (const Pending &p : pending) {
        note_reply(nullptr);
        p.call->unconfirmed = p.begin != kHeld && written > p.begin;
        p.call->on_reply(nullptr);
    }
    answering_drop_ = false;
}
