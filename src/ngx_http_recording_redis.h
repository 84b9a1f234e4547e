// The worker's way to Redis: a route takes commands and answers each once.
// RedisClient is one connection to one server (hiredis's async API driven
// by nginx's event loop, with nginx timers for connect and reply timeouts);
// a cluster route (ngx_http_recording_cluster.h) keeps one RedisClient per
// master and sends each command to the master owning its key.
#pragma once

#include "ngx_http_recording_conf.h"
#include "spell.h"

#include <deque>
#include <string>
#include <string_view>

struct redisAsyncContext;
struct redisReply;

// A command waiting for its reply. on_reply() runs exactly once for every
// command send() accepted, never from within send(); a null reply means no
// answer came (connection refused, dropped or timed out). The route never
// deletes a call.
class RedisCall {
public:
    virtual ~RedisCall() = default;
    virtual void on_reply(const redisReply *reply) noexcept = 0;

    ngx_msec_t deadline = 0;
    // Set with a null reply when the command went out on an established
    // connection: Redis may have run it, and sending it again may run it
    // twice. False: it never left the worker.
    bool unconfirmed = false;
};

class RedisRoute {
public:
    virtual ~RedisRoute() = default;

    // Queues a RESP-encoded command that touches only `key` (which picks
    // the node in a cluster), connecting first if needed. Returns false,
    // without calling `call`, when it cannot be sent now.
    virtual bool send(std::string_view key, std::string_view command, RedisCall *call,
                      const RedisTimeouts &timeouts) noexcept = 0;

    // False while Redis is known to be unreachable (a connect or a reply
    // timed out recently): callers answer at once rather than wait for
    // another timeout. send() then fails too.
    virtual bool available() noexcept = 0;

    // Drops every connection; pending calls get a null reply.
    virtual void close() noexcept = 0;

    // Commands sent and not answered yet.
    virtual size_t in_flight() const noexcept = 0;
};

class RedisClient final : public RedisRoute {
public:
    // `connections` counts the workers connected to this server (or null).
    RedisClient(const RedisAddress &address, const RedisLogin &login, ngx_log_t *log,
                ngx_atomic_t *connections) noexcept;
    ~RedisClient() override;
    RedisClient(const RedisClient &) = delete;
    RedisClient &operator=(const RedisClient &) = delete;

    bool send(std::string_view key, std::string_view command, RedisCall *call,
              const RedisTimeouts &timeouts) noexcept override;
    bool available() noexcept override;
    void close() noexcept override;
    size_t in_flight() const noexcept override { return pending_.size(); }

    // As send(), for callers that know the node: `key` is not needed.
    bool send(std::string_view command, RedisCall *call, const RedisTimeouts &timeouts) noexcept;

    const ngx_str_t &name() const noexcept { return address_.name; }

    // The connection is (or, within the null replies of its teardown, was)
    // established: false there means the command never left the worker.
    bool connected() const noexcept { return connected_; }

    // After a connect or a reply timed out, attempts wait this long:
    // meanwhile send() fails at once.
    static constexpr ngx_msec_t kRetryInterval = 1000;

private:
    bool connect(ngx_msec_t timeout) noexcept;
    bool log_in() noexcept;
    void send_held() noexcept;
    void mark_unreachable() noexcept;
    void watch(ngx_event_t *ev, ngx_int_t event, bool on) noexcept;
    void release_connection() noexcept;
    void arm_reply_timer(ngx_msec_t timeout) noexcept;
    void note_reply(const redisReply *reply) noexcept;

    static void on_connected(const redisAsyncContext *ac, int status) noexcept;
    static void on_disconnected(const redisAsyncContext *ac, int status) noexcept;
    static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept;
    static void on_login_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept;
    static void on_readable(ngx_event_t *ev) noexcept;
    static void on_writable(ngx_event_t *ev) noexcept;
    static void on_connect_timeout(ngx_event_t *ev) noexcept;
    static void on_reply_timeout(ngx_event_t *ev) noexcept;

    static void add_read(void *self) noexcept;
    static void del_read(void *self) noexcept;
    static void add_write(void *self) noexcept;
    static void del_write(void *self) noexcept;
    static void cleanup(void *self) noexcept;

    RedisAddress address_;
    RedisLogin login_;
    ngx_log_t *log_;

    redisAsyncContext *context_ = nullptr;
    ngx_connection_t *connection_ = nullptr;
    bool connected_ = false;
    // Redis is failing (connect, loss, timeout): errors are logged once per
    // change of state, and the recovery when a reply comes again.
    recording::Spell failing_;
    bool attempted_before_ = false;  // later attempts to connect are reconnects
    // A connect or a reply timed out: no attempt before this time.
    bool unreachable_ = false;
    ngx_msec_t retry_at_ = 0;
    ngx_atomic_t *connections_;
    std::deque<RedisCall *> pending_;

    // While the login (AUTH, SELECT) of a new connection is unanswered,
    // commands wait here (and in pending_): none may run unauthenticated or
    // in database 0 because a SELECT was refused.
    struct HeldCommand {
        std::string command;
        RedisCall *call;
    };
    std::deque<HeldCommand> held_;
    unsigned login_replies_ = 0;   // login replies still to come
    recording::Spell login_refused_;

    ngx_event_t connect_timer_{};
    ngx_event_t reply_timer_{};
};
