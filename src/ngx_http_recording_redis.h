// The worker's way to Redis: a route takes commands and answers each once.
// RedisClient is one connection to one server: an nginx connection (its
// events, its c->recv/c->send, and nginx's OpenSSL layer for TLS) with
// hiredis's reply reader for the protocol, and nginx timers for the connect
// (with the TLS handshake) and reply timeouts. A cluster route
// (ngx_http_recording_cluster.h) keeps one RedisClient per master and sends
// each command to the master owning its key.
#pragma once

#include "ngx_http_recording_conf.h"
#include "redis_protocol.h"
#include "send_queue.h"
#include "spell.h"

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

struct redisReader;
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
    // The command's bytes stay where they are, unchanged, until on_reply():
    // a large one is then written from there rather than copied.
    bool command_kept = false;
};

// A command's RESP bytes: one piece, or several in order (a large RPUSH
// refers to its batches' documents where they are: core's RpushBuilder).
// A view: taken by reference for the time of a send() call.
class RedisCommand {
public:
    RedisCommand(std::string_view whole) noexcept : one_(whole), pieces_(&one_), count_(1), size_(whole.size()) {}
    RedisCommand(const std::string &whole) noexcept : RedisCommand(std::string_view(whole)) {}
    explicit RedisCommand(const std::vector<std::string_view> &pieces) noexcept
        : pieces_(pieces.data()), count_(pieces.size())
    {
        for (std::string_view piece : pieces) {
            size_ += piece.size();
        }
    }
    RedisCommand(const RedisCommand &) = delete;
    RedisCommand &operator=(const RedisCommand &) = delete;

    const std::string_view *pieces() const noexcept { return pieces_; }
    size_t count() const noexcept { return count_; }
    size_t size() const noexcept { return size_; }
    // In one string (a copy); throws std::bad_alloc.
    std::string joined() const { return recording::join_pieces(pieces_, count_); }

private:
    std::string_view one_;
    const std::string_view *pieces_;
    size_t count_;
    size_t size_ = 0;
};

class RedisRoute {
public:
    virtual ~RedisRoute() = default;

    // Queues a RESP-encoded command that touches only `key` (which picks
    // the node in a cluster), connecting first if needed. Returns false,
    // without calling `call`, when it cannot be sent now.
    virtual bool send(std::string_view key, const RedisCommand &command, RedisCall *call,
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
    // `tls` null: plain TCP. `connections` counts the workers connected to
    // this server (or null).
    RedisClient(const RedisAddress &address, const RedisLogin &login, const ngx_http_recording_redis_tls_t *tls,
                ngx_log_t *log, ngx_atomic_t *connections) noexcept;
    ~RedisClient() override;
    RedisClient(const RedisClient &) = delete;
    RedisClient &operator=(const RedisClient &) = delete;

    bool send(std::string_view key, const RedisCommand &command, RedisCall *call,
              const RedisTimeouts &timeouts) noexcept override;
    bool available() noexcept override;
    void close() noexcept override;
    size_t in_flight() const noexcept override { return pending_.size(); }

    // As send(), for callers that know the node: `key` is not needed.
    bool send(const RedisCommand &command, RedisCall *call, const RedisTimeouts &timeouts) noexcept;

    const ngx_str_t &name() const noexcept { return address_.name; }

    // The connection is established (TCP and TLS): commands may go out.
    bool connected() const noexcept { return state_ == State::ready; }

    // After a connect, a handshake or a reply timed out, or the server's
    // certificate was refused, attempts wait this long: meanwhile send()
    // fails at once.
    static constexpr ngx_msec_t kRetryInterval = 1000;

private:
    enum class State { idle, connecting, handshaking, ready };

    // A command sent and not answered: where its bytes begin in what this
    // connection queued (kHeld while it waits for the login).
    struct Pending {
        RedisCall *call;
        uint64_t begin;
        size_t length;
        ngx_msec_t timeout;  // for its reply, counted from when it can go out
    };
    static constexpr uint64_t kHeld = UINT64_MAX;

    bool connect(ngx_msec_t timeout) noexcept;
    bool open_socket() noexcept;
    bool queue_login() noexcept;
    void connect_done() noexcept;
    void handshake_done() noexcept;
    void established() noexcept;
    void restart_reply_deadlines() noexcept;
    void release_held() noexcept;
    void schedule_write() noexcept;
    void write_out() noexcept;
    void read_in() noexcept;
    bool deliver(const redisReply *reply) noexcept;
    void drop() noexcept;
    void fail(const char *what, ngx_err_t err, bool unreachable) noexcept;
    void mark_unreachable() noexcept;
    void arm_reply_timer(ngx_msec_t timeout) noexcept;
    void note_reply(const redisReply *reply) noexcept;

    static void on_event(ngx_event_t *ev) noexcept;
    static void on_handshake(ngx_connection_t *c) noexcept;
    static void on_connect_timeout(ngx_event_t *ev) noexcept;
    static void on_reply_timeout(ngx_event_t *ev) noexcept;

    RedisAddress address_;
    RedisLogin login_;
    const ngx_http_recording_redis_tls_t *tls_;
    ngx_str_t tls_name_{};   // the name the certificate must carry
    ngx_log_t *log_;

    State state_ = State::idle;
    ngx_connection_t *connection_ = nullptr;
    redisReader *reader_ = nullptr;
    // Bumped whenever a connection is dropped: a reply's callback may drop
    // it, and whoever was reading from it must then stop.
    uint64_t generation_ = 0;
    // While a dropped connection's calls are answered, send() refuses:
    // none of them may reconnect from within the teardown.
    bool answering_drop_ = false;

    recording::SendQueue out_; // queued, not yet written
    uint64_t queued_ = 0;      // bytes queued on this connection, in all
    uint64_t written_ = 0;     // of which written to the socket
    std::deque<Pending> pending_;

    // Redis is failing (connect, loss, timeout): errors are logged once per
    // change of state, and the recovery when a reply comes again.
    recording::Spell failing_;
    bool attempted_before_ = false;  // later attempts to connect are reconnects
    // A connect or a reply timed out: no attempt before this time.
    bool unreachable_ = false;
    ngx_msec_t retry_at_ = 0;
    ngx_atomic_t *connections_;
    bool counted_ = false;     // in connections_

    // While the login (AUTH, SELECT) of a new connection is unanswered,
    // commands wait here (their calls in pending_, as kHeld): none may run
    // unauthenticated, or in database 0 because a SELECT was refused.
    recording::SendQueue held_;
    unsigned login_replies_ = 0;   // login replies still to come
    recording::Spell login_refused_;

    ngx_event_t connect_timer_{};
    ngx_event_t reply_timer_{};
};
