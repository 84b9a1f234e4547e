// Redis Cluster routing: each command goes to the owner of its key's slot
// over that node's RedisClient, which pipelines everything this worker
// sends to that node; and the cluster's redirections are followed. Which
// node owns a slot is the ClusterMap's (ngx_http_recording_cluster_map.h),
// which this route owns and asks to read the map again: after a MOVED,
// and after a node failed to answer.
//
// A command that cannot be sent (no map yet, no master for its slot, its
// master refusing connections or timed out lately) has not left the worker:
// it waits for the next map, at most its connect and reply timeouts, and a
// bounded number and size of them wait. If no node gives a map, they fail.
//
// Error replies of the cluster itself are handled here, never seen by the
// caller unless they persist:
//   MOVED slot host:port   the slot is owned elsewhere now: the slot is
//                          updated at once, the command sent there, and the
//                          whole map read again;
//   ASK slot host:port     the slot is being migrated and this key has gone:
//                          ASKING and the command go to that node, pipelined;
//   TRYAGAIN, CLUSTERDOWN  the command is sent again after kRetryDelay, for
//                          as long as its reply timeout allows.
// A command follows at most kMaxRedirects redirections; then the last reply
// is the caller's. No reply at all (the connection dropped or timed out
// after the command went out) is the caller's at once, as with one server:
// the command may have been executed, so it is not sent again. Addresses in
// the cluster's answers must be numeric: a worker never blocks on a name
// lookup, so a redirection to a host name is the caller's reply.
//
// Each command is copied (it may have to be sent again) into a
// ClusterCommand, which the route owns until the caller has its reply.

#include "ngx_http_recording_cluster.h"

#include <hiredis/hiredis.h>

#include <deque>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "cluster_slots.h"
#include "ngx_http_recording_cluster_map.h"
#include "spell.h"

namespace {

using recording::ClusterReplyKind;
using recording::NodeAddress;

constexpr int kMaxRedirects = 5;
constexpr ngx_msec_t kRetryDelay = 100;            // after TRYAGAIN or CLUSTERDOWN
constexpr size_t kMaxWaiting = 1024;               // commands waiting for the map
constexpr size_t kMaxWaitingBytes = 64 * 1024 * 1024;

constexpr std::string_view kAsking = "*1\r\n$6\r\nASKING\r\n";

class ClusterRoute;

// One caller's command, while it is the route's.
class ClusterCommand final : public RedisCall {
public:
    // ASKING goes just before the command on the same connection; its reply
    // (always before the command's) is ignored.
    class AskingCall final : public RedisCall {
    public:
        explicit AskingCall(ClusterCommand *command) noexcept : command_(command) {}
        void on_reply(const redisReply *) noexcept override
        {
            command_->asking_pending = false;
            if (command_->answered) {
                delete command_;
            }
        }

    private:
        ClusterCommand *command_;
    };

    ClusterCommand(ClusterRoute *route, RedisCall *caller, std::string command, unsigned slot,
                   const RedisTimeouts &timeouts) noexcept
        : route(route), caller(caller), command(std::move(command)), slot(slot), timeouts(timeouts)
    {}

    void on_reply(const redisReply *reply) noexcept override;

    ClusterRoute *route;
    RedisCall *caller;
    std::string command;
    unsigned slot;
    RedisTimeouts timeouts;
    ngx_msec_t retry_until = 0;  // no TRYAGAIN/CLUSTERDOWN retry after this
    ngx_msec_t wait_until = 0;   // no waiting for a map that routes it after this
    ngx_msec_t due = 0;          // when waiting: for a map, its deadline; to retry, the time
    int redirects = 0;
    bool waited = false;         // for a map, or to be retried: its reply ends a trouble
    ClusterNode *sent_to = nullptr;
    AskingCall asking{this};
    bool asking_pending = false;
    bool answered = false;  // the caller has its reply; freed after ASKING's
};

using Commands = std::deque<ClusterCommand *>;

class ClusterRoute final : public RedisRoute {
public:
    // Throws std::bad_alloc.
    ClusterRoute(ngx_http_recording_redis_server_t *server, ngx_log_t *log, ngx_atomic_t *connections);
    ~ClusterRoute() override;
    ClusterRoute(const ClusterRoute &) = delete;
    ClusterRoute &operator=(const ClusterRoute &) = delete;

    bool add_seeds() noexcept { return map_.add_seeds(); }

    bool send(std::string_view key, const RedisCommand &command, RedisCall *call,
              const RedisTimeouts &timeouts) noexcept override;
    bool available() noexcept override { return map_.available(); }
    void close() noexcept override;
    size_t in_flight() const noexcept override { return in_flight_; }

    void on_command_reply(ClusterCommand *cmd, const redisReply *reply) noexcept;

private:
    bool route(ClusterCommand *cmd) noexcept;
    bool dispatch(ClusterCommand *cmd, ClusterNode *to, bool asking) noexcept;
    void answer(ClusterCommand *cmd, const redisReply *reply) noexcept;
    void fail_all(Commands &commands) noexcept;

    void follow(ClusterCommand *cmd, ClusterNode *from, std::string_view error, const redisReply *reply) noexcept;
    void retry_later(ClusterCommand *cmd, std::string_view error, const redisReply *reply) noexcept;
    static void on_retry_timer(ngx_event_t *ev) noexcept;

    bool wait_for_map(ClusterCommand *cmd, ngx_msec_t deadline) noexcept;
    Commands take_waiting() noexcept;
    void keep_waiting(Commands &still) noexcept;
    static void on_wait_timer(ngx_event_t *ev) noexcept;
    void dispatch_waiting() noexcept;
    static void on_map(void *data) noexcept;
    static void on_no_map(void *data) noexcept;

    ngx_http_recording_redis_server_t *server_;
    ngx_log_t *log_;
    ClusterMap map_;

    Commands waiting_;  // for a map, oldest first; each due at its own deadline
    size_t waiting_bytes_ = 0;
    Commands retries_;  // after TRYAGAIN/CLUSTERDOWN, due in order
    size_t in_flight_ = 0;
    bool closing_ = false;

    // Logged once per change of state. Until a command that waited (for a
    // map, or to be retried) is answered:
    recording::Spell cluster_trouble_;   // TRYAGAIN or CLUSTERDOWN answered
    recording::Spell wait_trouble_;      // commands found no master in time
    // Until a redirected command succeeds (its end is not logged):
    recording::Spell redirect_trouble_;  // a redirection could not be followed

    ngx_event_t retry_timer_{};
    ngx_event_t wait_timer_{};
};

void arm(ngx_event_t *ev, ngx_msec_t due) noexcept
{
    ngx_add_timer(ev, ngx_http_recording_left(due));
}

void ClusterCommand::on_reply(const redisReply *reply) noexcept
{
    route->on_command_reply(this, reply);
}

ClusterRoute::ClusterRoute(ngx_http_recording_redis_server_t *server, ngx_log_t *log,
                           ngx_atomic_t *connections)
    : server_(server), log_(log), map_(server, log, connections, {on_map, on_no_map, this})
{
    for (ngx_event_t *ev : {&retry_timer_, &wait_timer_}) {
        ev->data = this;
        ev->log = log;
        // Nothing here may keep a worker that is shutting down alive:
        // whatever is still waiting gets a null reply in exit_process.
        ev->cancelable = 1;
    }
    retry_timer_.handler = on_retry_timer;
    wait_timer_.handler = on_wait_timer;
}

ClusterRoute::~ClusterRoute()
{
    close();
    for (ngx_event_t *ev : {&retry_timer_, &wait_timer_}) {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }
    }
}

bool ClusterRoute::send(std::string_view key, const RedisCommand &command, RedisCall *call,
                        const RedisTimeouts &timeouts) noexcept
{
    if (closing_) {
        return false;
    }
    ngx_time_update();
    map_.use_timeouts(timeouts);

    ClusterCommand *cmd;
    try {
        // A copy: a redirection may send it again after the caller's bytes are gone.
        cmd = new ClusterCommand(this, call, command.joined(), recording::key_slot(key), timeouts);
    } catch (const std::bad_alloc &) {
        return false;
    }
    cmd->retry_until = ngx_current_msec + timeouts.reply;
    cmd->wait_until = ngx_current_msec + timeouts.connect + timeouts.reply;

    // Without a map, or when the slot's master cannot be sent to, the
    // command waits for the next map: it has not been sent anywhere, so
    // sending it later cannot duplicate it.
    if (!route(cmd) && !wait_for_map(cmd, cmd->wait_until)) {
        delete cmd;
        return false;
    }
    in_flight_++;
    return true;
}

// Sends a command to the master of its slot; false when the map names
// none, or that node cannot take it now (refused, or timed out lately).
bool ClusterRoute::route(ClusterCommand *cmd) noexcept
{
    ClusterNode *to = map_.owner(cmd->slot);
    if (to == nullptr) {
        return false;
    }
    if (!dispatch(cmd, to, false)) {
        to->failed = true;
        return false;
    }
    return true;
}

bool ClusterRoute::dispatch(ClusterCommand *cmd, ClusterNode *to, bool asking) noexcept
{
    RedisClient *client = to->client.get();
    if (asking) {
        if (!client->send(kAsking, &cmd->asking, cmd->timeouts)) {
            return false;
        }
        cmd->asking_pending = true;
    }
    // Should this fail after ASKING went out, the ASKING reply still comes
    // and frees the command once the caller has been answered.
    if (!client->send(cmd->command, cmd, cmd->timeouts)) {
        return false;
    }
    cmd->sent_to = to;
    return true;
}

// Gives the caller its reply and forgets the command.
void ClusterRoute::answer(ClusterCommand *cmd, const redisReply *reply) noexcept
{
    in_flight_--;
    RedisCall *caller = cmd->caller;
    caller->unconfirmed = reply == nullptr && cmd->unconfirmed;
    bool waited = cmd->waited;
    bool ok = reply != nullptr && reply->type != REDIS_REPLY_ERROR;
    if (ok && cmd->redirects != 0) {
        redirect_trouble_.ends();
    }
    if (cmd->asking_pending) {
        cmd->answered = true;
    } else {
        delete cmd;
    }
    if (ok && waited) {
        // Both end: neither may stay on.
        bool retried = cluster_trouble_.ends();
        bool late = wait_trouble_.ends();
        if (retried || late) {
            ngx_log_error(NGX_LOG_NOTICE, log_, 0, "recording: redis cluster %V: serving again", &server_->name);
        }
    }
    caller->on_reply(reply);
}

void ClusterRoute::fail_all(Commands &commands) noexcept
{
    Commands failing;
    failing.swap(commands);
    for (ClusterCommand *cmd : failing) {
        answer(cmd, nullptr);
    }
}

void ClusterRoute::on_command_reply(ClusterCommand *cmd, const redisReply *reply) noexcept
{
    ClusterNode *from = cmd->sent_to;
    cmd->sent_to = nullptr;
    if (closing_ || reply == nullptr) {
        // No reply: the node failed (and its client logged why); its slots
        // may have a new master by now. A command that went out may have
        // been executed, so it is not sent again; one whose connection
        // never came up did not leave: it waits for a map that routes it.
        if (!closing_ && from != nullptr) {
            from->failed = true;
            if (!cmd->unconfirmed && ngx_http_recording_before(ngx_current_msec, cmd->wait_until)
                && wait_for_map(cmd, cmd->wait_until))
            {
                return;
            }
            map_.request_refresh();
        }
        answer(cmd, reply);
        return;
    }
    if (reply->type != REDIS_REPLY_ERROR) {
        answer(cmd, reply);
        return;
    }
    std::string_view error(reply->str, reply->len);
    switch (recording::classify_cluster_error(error)) {
    case ClusterReplyKind::moved:
    case ClusterReplyKind::ask:
        follow(cmd, from, error, reply);
        return;
    case ClusterReplyKind::tryagain:
    case ClusterReplyKind::clusterdown:
        retry_later(cmd, error, reply);
        return;
    case ClusterReplyKind::other:
        break;
    }
    answer(cmd, reply);
}

void ClusterRoute::follow(ClusterCommand *cmd, ClusterNode *from, std::string_view error,
                          const redisReply *reply) noexcept
{
    std::optional<recording::Redirect> redirect;
    NodeAddress address;
    try {
        redirect = recording::parse_redirect(error);
        if (redirect) {
            // An empty endpoint: the node that answered, on the port given.
            address.host = redirect->host.empty() && from != nullptr ? from->address.host : redirect->host;
            address.port = redirect->port;
        }
    } catch (const std::bad_alloc &) {
        redirect.reset();
    }
    const char *problem = nullptr;
    if (!redirect) {
        problem = "a malformed redirection";
    } else if (cmd->redirects >= kMaxRedirects) {
        problem = "too many redirections";
    } else if (!recording::is_ip_literal(address.host)) {
        problem = "a redirection to a host name (not resolved in a worker)";
    }
    if (problem != nullptr) {
        if (redirect_trouble_.begins()) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: %s: %*s", &server_->name,
                          problem, error.size(), error.data());
        }
        answer(cmd, reply);
        return;
    }

    ClusterNode *to = map_.node(address);
    if (to == nullptr) {
        answer(cmd, nullptr);
        return;
    }
    cmd->redirects++;
    bool ask = redirect->kind == ClusterReplyKind::ask;
    if (!ask) {
        map_.moved(redirect->slot, address);
    }
    ngx_log_error(NGX_LOG_DEBUG, log_, 0, "recording: redis cluster %V: %s slot %ui to %V", &server_->name,
                  ask ? "ASK" : "MOVED", static_cast<ngx_uint_t>(redirect->slot), &to->redis_address.name);
    if (!dispatch(cmd, to, ask)) {
        answer(cmd, nullptr);
    }
}

void ClusterRoute::retry_later(ClusterCommand *cmd, std::string_view error, const redisReply *reply) noexcept
{
    ngx_msec_t due = ngx_current_msec + kRetryDelay;
    if (ngx_http_recording_before(cmd->retry_until, due)) {
        answer(cmd, reply);
        return;
    }
    try {
        retries_.push_back(cmd);
    } catch (const std::bad_alloc &) {
        answer(cmd, reply);
        return;
    }
    cmd->due = due;
    cmd->waited = true;
    if (cluster_trouble_.begins()) {
        ngx_log_error(NGX_LOG_WARN, log_, 0, "recording: redis cluster %V: %*s, retrying", &server_->name,
                      error.size(), error.data());
    }
    // "CLUSTERDOWN Hash slot not served": perhaps served elsewhere now.
    map_.request_refresh();
    if (!retry_timer_.timer_set) {
        arm(&retry_timer_, due);
    }
}

void ClusterRoute::on_retry_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterRoute *>(ev->data);
    Commands due;
    // Every retry waits kRetryDelay: the list is in the order they are due.
    while (!self->retries_.empty() && !ngx_http_recording_before(ngx_current_msec, self->retries_.front()->due)) {
        ClusterCommand *cmd = self->retries_.front();
        try {
            due.push_back(cmd);
        } catch (const std::bad_alloc &) {
            break;
        }
        self->retries_.pop_front();
    }
    if (!self->retries_.empty()) {
        arm(&self->retry_timer_, self->retries_.front()->due);
    }
    for (ClusterCommand *cmd : due) {
        if (!self->route(cmd) && !self->wait_for_map(cmd, cmd->retry_until)) {
            self->answer(cmd, nullptr);
        }
    }
}

// Keeps a command until a map can route it, at most until `deadline`;
// false when too many wait.
bool ClusterRoute::wait_for_map(ClusterCommand *cmd, ngx_msec_t deadline) noexcept
{
    if (waiting_.size() >= kMaxWaiting || waiting_bytes_ + cmd->command.size() > kMaxWaitingBytes) {
        return false;
    }
    try {
        waiting_.push_back(cmd);
    } catch (const std::bad_alloc &) {
        return false;
    }
    waiting_bytes_ += cmd->command.size();
    cmd->due = deadline;
    cmd->waited = true;
    if (!wait_timer_.timer_set || ngx_http_recording_before(cmd->due, wait_timer_.timer.key)) {
        arm(&wait_timer_, cmd->due);
    }
    map_.request_refresh();
    return true;
}

// The waiting commands, all taken out (the wait timer stopped): to be
// routed, or failed.
Commands ClusterRoute::take_waiting() noexcept
{
    Commands waiting;
    waiting.swap(waiting_);
    waiting_bytes_ = 0;
    if (wait_timer_.timer_set) {
        ngx_del_timer(&wait_timer_);
    }
    return waiting;
}

// `still` wait again, replacing the waiting commands (taken out before):
// the wait timer is set for the earliest of their deadlines.
void ClusterRoute::keep_waiting(Commands &still) noexcept
{
    waiting_.swap(still);
    waiting_bytes_ = 0;
    if (waiting_.empty()) {
        return;
    }
    ngx_msec_t next = waiting_.front()->due;
    for (ClusterCommand *cmd : waiting_) {
        waiting_bytes_ += cmd->command.size();
        if (ngx_http_recording_before(cmd->due, next)) {
            next = cmd->due;
        }
    }
    arm(&wait_timer_, next);
}

void ClusterRoute::on_wait_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterRoute *>(ev->data);
    Commands late, still;
    try {
        for (ClusterCommand *cmd : self->waiting_) {
            (ngx_http_recording_before(ngx_current_msec, cmd->due) ? still : late).push_back(cmd);
        }
    } catch (const std::bad_alloc &) {
        arm(&self->wait_timer_, ngx_current_msec + 1);
        return;
    }
    self->keep_waiting(still);
    if (!late.empty() && self->wait_trouble_.begins()) {
        ngx_log_error(NGX_LOG_ERR, self->log_, 0, "recording: redis cluster %V: no master could take a command in time",
                      &self->server_->name);
    }
    self->fail_all(late);
}

void ClusterRoute::on_map(void *data) noexcept
{
    static_cast<ClusterRoute *>(data)->dispatch_waiting();
}

// A new map: the commands waiting for one go where it says. Those it
// cannot route yet wait for the next one, until their deadline.
void ClusterRoute::dispatch_waiting() noexcept
{
    Commands waiting = take_waiting();
    Commands still, late;
    for (ClusterCommand *cmd : waiting) {
        if (route(cmd)) {
            continue;
        }
        bool kept = false;
        if (ngx_http_recording_before(ngx_current_msec, cmd->due)) {
            try {
                still.push_back(cmd);
                kept = true;
            } catch (const std::bad_alloc &) {
                // answered now
            }
        }
        if (!kept) {
            try {
                late.push_back(cmd);
            } catch (const std::bad_alloc &) {
                answer(cmd, nullptr);
            }
        }
    }
    keep_waiting(still);
    if (!waiting_.empty()) {
        map_.request_refresh();
    }
    // Last: their callers may send again.
    fail_all(late);
}

// No map to be had: the waiting commands fail (their callers may send again).
void ClusterRoute::on_no_map(void *data) noexcept
{
    auto *self = static_cast<ClusterRoute *>(data);
    Commands waiting = self->take_waiting();
    self->fail_all(waiting);
}

void ClusterRoute::close() noexcept
{
    if (closing_) {
        return;
    }
    closing_ = true;
    for (ngx_event_t *ev : {&retry_timer_, &wait_timer_}) {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }
    }
    Commands waiting = take_waiting();
    fail_all(waiting);
    fail_all(retries_);
    // Each node's pending commands get their null reply from its client.
    map_.close();
    closing_ = false;
}

}  // namespace

RedisRoute *ngx_http_recording_cluster_create(ngx_http_recording_redis_server_t *server, ngx_log_t *log,
                                              ngx_atomic_t *connections) noexcept
{
    ClusterRoute *route;
    try {
        route = new ClusterRoute(server, log, connections);
    } catch (const std::bad_alloc &) {
        route = nullptr;
    }
    if (route == nullptr || !route->add_seeds()) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "recording: redis cluster %V: out of memory", &server->name);
        delete route;
        return nullptr;
    }
    return route;
}
