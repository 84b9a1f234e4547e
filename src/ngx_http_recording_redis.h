// One worker's connection to one Redis server: hiredis's async API driven by
// nginx's event loop, with nginx timers for connect and reply timeouts.
#pragma once

#include "ngx_http_recording_nginx.h"

#include <deque>
#include <string_view>

struct redisAsyncContext;
struct redisReply;

// A command waiting for its reply. on_reply() runs exactly once for every
// command send() accepted, never from within send(); a null reply means no
// answer came (connection refused, dropped or timed out). The client never
// deletes a call.
class RedisCall {
public:
    virtual ~RedisCall() = default;
    virtual void on_reply(const redisReply *reply) noexcept = 0;

    ngx_msec_t deadline = 0;
};

class RedisClient {
public:
    // `connections` counts the workers connected to this server (or null).
    RedisClient(ngx_str_t name, ngx_str_t host, ngx_int_t port, ngx_str_t unix_path,
                ngx_log_t *log, ngx_atomic_t *connections) noexcept;
    ~RedisClient();
    RedisClient(const RedisClient &) = delete;
    RedisClient &operator=(const RedisClient &) = delete;

    // Queues a RESP-encoded command, connecting first if needed. Returns
    // false, without calling `call`, when it cannot be sent now.
    bool send(std::string_view command, RedisCall *call, ngx_msec_t connect_timeout,
              ngx_msec_t reply_timeout) noexcept;

    // Drops the connection; pending calls get a null reply.
    void close() noexcept;

    const ngx_str_t &name() const noexcept { return name_; }

private:
    bool connect(ngx_msec_t timeout) noexcept;
    void watch(ngx_event_t *ev, ngx_int_t event, bool on) noexcept;
    void release_connection() noexcept;
    void arm_reply_timer(ngx_msec_t timeout) noexcept;
    void note_reply(const redisReply *reply) noexcept;

    static void on_connected(const redisAsyncContext *ac, int status) noexcept;
    static void on_disconnected(const redisAsyncContext *ac, int status) noexcept;
    static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept;
    static void on_readable(ngx_event_t *ev) noexcept;
    static void on_writable(ngx_event_t *ev) noexcept;
    static void on_connect_timeout(ngx_event_t *ev) noexcept;
    static void on_reply_timeout(ngx_event_t *ev) noexcept;

    static void add_read(void *self) noexcept;
    static void del_read(void *self) noexcept;
    static void add_write(void *self) noexcept;
    static void del_write(void *self) noexcept;
    static void cleanup(void *self) noexcept;

    ngx_str_t name_;
    ngx_str_t host_;
    ngx_int_t port_;
    ngx_str_t unix_path_;
    ngx_log_t *log_;

    redisAsyncContext *context_ = nullptr;
    ngx_connection_t *connection_ = nullptr;
    bool connected_ = false;
    // Redis is failing (connect, loss, timeout): errors are logged once per
    // change of state, and the recovery when a reply comes again.
    bool failing_ = false;
    bool attempted_before_ = false;  // later attempts to connect are reconnects
    ngx_atomic_t *connections_;
    std::deque<RedisCall *> pending_;

    ngx_event_t connect_timer_{};
    ngx_event_t reply_timer_{};
};
