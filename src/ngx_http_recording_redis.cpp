// The event-loop adapter between hiredis and nginx.
//
// hiredis owns the socket: after a failed connect or a disconnect it calls
// every pending callback with a null reply, then cleanup(), then closes the
// fd itself. So the nginx connection wrapping that fd is released in
// cleanup() without closing it. Events are registered level-triggered: with
// nginx's edge-triggered epoll, hiredis (which reads at most 16 KiB per call)
// would leave replies unread in the socket.

#include "ngx_http_recording_redis.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <new>

#include "ngx_http_recording_stats.h"

RedisClient::RedisClient(const RedisAddress &address, const RedisLogin &login, ngx_log_t *log,
                         ngx_atomic_t *connections) noexcept
    : address_(address), login_(login), log_(log), connections_(connections)
{
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
    if (context_ != nullptr) {
        redisAsyncFree(context_);  // runs the pending callbacks, then cleanup()
    }
}

bool RedisClient::connect(ngx_msec_t timeout) noexcept
{
    if (attempted_before_) {
        ngx_http_recording_count(&ngx_http_recording_stats_t::reconnects);
    }
    attempted_before_ = true;
    redisAsyncContext *ac;
    if (address_.unix_path.len != 0) {
        ac = redisAsyncConnectUnix(reinterpret_cast<const char *>(address_.unix_path.data));
    } else {
        ac = redisAsyncConnect(reinterpret_cast<const char *>(address_.host.data),
                               static_cast<int>(address_.port));
    }
    if (ac == nullptr) {
        ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis %V: out of memory", &address_.name);
        return false;
    }
    if (ac->err) {
        if (failing_.begins()) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis %V: connect failed: %s",
                          &address_.name, ac->errstr);
        }
        redisAsyncFree(ac);
        return false;
    }

    ngx_connection_t *c = ngx_get_connection(ac->c.fd, log_);
    if (c == nullptr) {
        redisAsyncFree(ac);
        return false;
    }
    c->data = this;
    c->read->handler = on_readable;
    c->write->handler = on_writable;
    c->read->log = log_;
    c->write->log = log_;

    context_ = ac;
    connection_ = c;
    connected_ = false;

    ac->data = this;
    ac->ev.data = this;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    redisAsyncSetConnectCallback(ac, on_connected);
    redisAsyncSetDisconnectCallback(ac, on_disconnected);

    // Writability tells that the non-blocking connect finished.
    add_write(this);
    ngx_add_timer(&connect_timer_, timeout);
    if (!log_in()) {
        redisAsyncFree(ac);  // cleanup() follows
        return false;
    }
    return true;
}

// AUTH and SELECT go first on every connection, ahead of any command.
// Commands wait (held_) until both are answered: behind a refused SELECT,
// Redis would run them in database 0. A refusal is logged once per change
// of state and drops the connection: what waits gets no reply (503 or the
// spool), and for kRetryInterval no new attempt is made. False when the
// login cannot even be queued (out of memory): the connection is not used.
bool RedisClient::log_in() noexcept
{
    login_replies_ = 0;
    if (login_.password.len != 0) {
        int rc;
        if (login_.user.len != 0) {
            rc = redisAsyncCommand(context_, on_login_reply, nullptr, "AUTH %b %b", login_.user.data,
                                   login_.user.len, login_.password.data, login_.password.len);
        } else {
            rc = redisAsyncCommand(context_, on_login_reply, nullptr, "AUTH %b", login_.password.data,
                                   login_.password.len);
        }
        if (rc != REDIS_OK) {
            return false;
        }
        login_replies_++;
    }
    if (login_.db >= 0) {
        if (redisAsyncCommand(context_, on_login_reply, nullptr, "SELECT %lld", static_cast<long long>(login_.db))
            != REDIS_OK)
        {
            return false;
        }
        login_replies_++;
    }
    return true;
}

void RedisClient::on_login_reply(redisAsyncContext *ac, void *reply, void *) noexcept
{
    auto *self = static_cast<RedisClient *>(ac->data);
    auto *r = static_cast<const redisReply *>(reply);
    if (r == nullptr || self->login_replies_ == 0) {
        return;  // the connection is going: cleanup() answers what is held
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (self->login_refused_.begins()) {
            ngx_log_error(NGX_LOG_ERR, self->log_, 0, "recording: redis %V: login refused: %*s",
                          &self->address_.name, r->len, r->str);
        }
        self->failing_.begins();
        self->login_replies_ = 0;
        self->mark_unreachable();
        redisAsyncFree(ac);  // from a callback: once it returns
        return;
    }
    if (--self->login_replies_ == 0) {
        self->login_refused_.ends();
        self->send_held();
    }
}

// Hands the commands that waited for the login to hiredis, in order.
void RedisClient::send_held() noexcept
{
    while (!held_.empty()) {
        HeldCommand &held = held_.front();
        if (redisAsyncFormattedCommand(context_, on_reply, held.call, held.command.data(), held.command.size())
            != REDIS_OK)
        {
            redisAsyncFree(context_);  // cleanup() answers the rest
            return;
        }
        held_.pop_front();
    }
}

// Only timeouts make a server unreachable: a refused connect answers at
// once anyway, and the next attempt costs no more than a refusal.
void RedisClient::mark_unreachable() noexcept
{
    unreachable_ = true;
    retry_at_ = ngx_current_msec + kRetryInterval;
}

bool RedisClient::available() noexcept
{
    return !(unreachable_ && context_ == nullptr && ngx_http_recording_before(ngx_current_msec, retry_at_));
}

bool RedisClient::send(std::string_view, std::string_view command, RedisCall *call,
                       const RedisTimeouts &timeouts) noexcept
{
    return send(command, call, timeouts);
}

bool RedisClient::send(std::string_view command, RedisCall *call, const RedisTimeouts &timeouts) noexcept
{
    // Deadlines count from now, not from when this event began: decoding and
    // validating a large batch may have taken longer than the timeout.
    ngx_time_update();

    if (context_ == nullptr && (!available() || !connect(timeouts.connect))) {
        return false;
    }
    // While hiredis tears a context down, it takes no new commands.
    if (context_->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) {
        return false;
    }
    // The slot is taken first: once hiredis has the command, nothing may fail.
    try {
        pending_.push_back(call);
        if (login_replies_ != 0) {
            held_.push_back({std::string(command), call});
        }
    } catch (const std::bad_alloc &) {
        if (!pending_.empty() && pending_.back() == call) {
            pending_.pop_back();
        }
        return false;
    }
    if (login_replies_ == 0
        && redisAsyncFormattedCommand(context_, on_reply, call, command.data(), command.size()) != REDIS_OK)
    {
        pending_.pop_back();
        return false;
    }
    call->deadline = ngx_current_msec + timeouts.reply;
    arm_reply_timer(timeouts.reply);
    return true;
}

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

void RedisClient::on_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept
{
    auto *self = static_cast<RedisClient *>(ac->data);
    auto *call = static_cast<RedisCall *>(privdata);

    // hiredis answers in the order the commands went out.
    if (!self->pending_.empty() && self->pending_.front() == call) {
        self->pending_.pop_front();
    }
    if (self->pending_.empty() && self->reply_timer_.timer_set) {
        ngx_del_timer(&self->reply_timer_);
    }
    self->note_reply(static_cast<const redisReply *>(reply));
    call->unconfirmed = reply == nullptr && self->connected_;
    call->on_reply(static_cast<const redisReply *>(reply));
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

void RedisClient::on_connected(const redisAsyncContext *ac, int status) noexcept
{
    auto *self = static_cast<RedisClient *>(ac->data);
    if (status != REDIS_OK) {
        // hiredis frees the context after this returns: cleanup() follows.
        if (self->failing_.begins()) {
            ngx_log_error(NGX_LOG_ERR, self->log_, 0, "recording: redis %V: connect failed: %s",
                          &self->address_.name, ac->errstr);
        }
        return;
    }
    self->connected_ = true;
    self->unreachable_ = false;
    if (self->connections_ != nullptr) {
        (void) ngx_atomic_fetch_add(self->connections_, 1);
    }
    if (self->connect_timer_.timer_set) {
        ngx_del_timer(&self->connect_timer_);
    }
    // Recovery is declared on the first reply: a server that accepts
    // connections but never answers has not recovered.
}

void RedisClient::on_disconnected(const redisAsyncContext *ac, int status) noexcept
{
    auto *self = static_cast<RedisClient *>(ac->data);
    if (status != REDIS_OK) {
        if (self->failing_.begins()) {
            ngx_log_error(NGX_LOG_ERR, self->log_, 0, "recording: redis %V: connection lost: %s",
                          &self->address_.name, ac->errstr);
        }
    }
}

void RedisClient::on_readable(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *self = static_cast<RedisClient *>(c->data);
    if (self->context_ != nullptr) {
        redisAsyncHandleRead(self->context_);  // may free the context and c
    }
}

void RedisClient::on_writable(ngx_event_t *ev) noexcept
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *self = static_cast<RedisClient *>(c->data);
    if (self->context_ != nullptr) {
        redisAsyncHandleWrite(self->context_);  // may free the context and c
    }
}

void RedisClient::on_connect_timeout(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<RedisClient *>(ev->data);
    if (self->context_ == nullptr || self->connected_) {
        return;
    }
    if (self->failing_.begins()) {
        ngx_log_error(NGX_LOG_ERR, self->log_, NGX_ETIMEDOUT, "recording: redis %V: connect timed out",
                      &self->address_.name);
    }
    self->mark_unreachable();
    redisAsyncFree(self->context_);
}

void RedisClient::on_reply_timeout(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<RedisClient *>(ev->data);
    if (self->pending_.empty() || self->context_ == nullptr) {
        return;
    }
    ngx_msec_t earliest = self->pending_.front()->deadline;
    for (RedisCall *call : self->pending_) {
        if (ngx_http_recording_before(call->deadline, earliest)) {
            earliest = call->deadline;
        }
    }
    if (ngx_msec_t left = ngx_http_recording_left(earliest); left > 0) {
        ngx_add_timer(&self->reply_timer_, left);
        return;
    }
    // Replies come in order, so nothing after the late one can come either.
    if (self->failing_.begins()) {
        ngx_log_error(NGX_LOG_ERR, self->log_, NGX_ETIMEDOUT,
                      "recording: redis %V: no reply in time, dropping the connection", &self->address_.name);
    }
    // A server that does not answer is as good as unreachable.
    self->mark_unreachable();
    redisAsyncFree(self->context_);
}

void RedisClient::watch(ngx_event_t *ev, ngx_int_t event, bool on) noexcept
{
    if (connection_ == nullptr || ev->active == static_cast<unsigned>(on)) {
        return;
    }
    // NGX_LEVEL_EVENT: see the comment at the top of this file.
    if (on) {
        ngx_add_event(ev, event, NGX_LEVEL_EVENT);
    } else {
        ngx_del_event(ev, event, NGX_LEVEL_EVENT);
    }
}

void RedisClient::add_read(void *self) noexcept
{
    auto *client = static_cast<RedisClient *>(self);
    if (client->connection_ != nullptr) {
        client->watch(client->connection_->read, NGX_READ_EVENT, true);
    }
}

void RedisClient::del_read(void *self) noexcept
{
    auto *client = static_cast<RedisClient *>(self);
    if (client->connection_ != nullptr) {
        client->watch(client->connection_->read, NGX_READ_EVENT, false);
    }
}

void RedisClient::add_write(void *self) noexcept
{
    auto *client = static_cast<RedisClient *>(self);
    if (client->connection_ != nullptr) {
        client->watch(client->connection_->write, NGX_WRITE_EVENT, true);
    }
}

void RedisClient::del_write(void *self) noexcept
{
    auto *client = static_cast<RedisClient *>(self);
    if (client->connection_ != nullptr) {
        client->watch(client->connection_->write, NGX_WRITE_EVENT, false);
    }
}

// hiredis is about to close the fd: forget it on nginx's side without
// closing it a second time.
void RedisClient::cleanup(void *self) noexcept
{
    static_cast<RedisClient *>(self)->release_connection();
}

void RedisClient::release_connection() noexcept
{
    if (connect_timer_.timer_set) {
        ngx_del_timer(&connect_timer_);
    }
    if (reply_timer_.timer_set) {
        ngx_del_timer(&reply_timer_);
    }
    ngx_connection_t *c = connection_;
    if (c != nullptr) {
        if (c->read->active) {
            ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }
        if (c->write->active) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }
        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }
        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }
        ngx_free_connection(c);
        c->fd = static_cast<ngx_socket_t>(-1);
    }
    if (context_ != nullptr) {
        // hiredis may call cleanup() again for this context, possibly after
        // a pending callback made a new connection: keep it away from that.
        context_->ev = {};
    }
    if (connected_ && connections_ != nullptr) {
        (void) ngx_atomic_fetch_add(connections_, -1);
    }
    connection_ = nullptr;
    context_ = nullptr;
    connected_ = false;
    login_replies_ = 0;
    pending_.clear();  // hiredis has answered every one it had with a null reply
    // Those that waited for the login never reached hiredis: answered here,
    // after hiredis's (they came later). A call may send again meanwhile.
    std::deque<HeldCommand> held;
    held.swap(held_);
    for (HeldCommand &h : held) {
        note_reply(nullptr);
        h.call->unconfirmed = false;
        h.call->on_reply(nullptr);
    }
}
