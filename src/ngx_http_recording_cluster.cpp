// Redis Cluster routing: the slot map, one RedisClient per node, and the
// redirections.
//
// The slot map (which master owns each of the 16384 hash slots) is read
// with CLUSTER SLOTS: on the first command, after a MOVED, and after a node
// failed to answer (at most every kMinRefreshInterval); from the known
// masters first, then the seeds, then nodes that failed. Each command goes
// to the owner of its key's slot over that node's RedisClient, which
// pipelines everything this worker sends to that node.
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
// lookup, so host names are logged and skipped.
//
// Each command is copied (it may have to be sent again) into a
// ClusterCommand, which the route owns until the caller has its reply.

#include "ngx_http_recording_cluster.h"

#include <hiredis/hiredis.h>

#include <deque>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cluster_slots.h"
#include "ngx_http_recording_conf.h"

namespace {

using recording::ClusterReplyKind;
using recording::NodeAddress;
using recording::SlotTable;

constexpr int kMaxRedirects = 5;
constexpr ngx_msec_t kRetryDelay = 100;            // after TRYAGAIN or CLUSTERDOWN
constexpr ngx_msec_t kMinRefreshInterval = 200;    // between two reads of the map
constexpr size_t kMaxWaiting = 1024;               // commands waiting for the map
constexpr size_t kMaxWaitingBytes = 64 * 1024 * 1024;
constexpr RedisTimeouts kDefaultTimeouts = {1000, 1000};

constexpr std::string_view kAsking = "*1\r\n$6\r\nASKING\r\n";
constexpr std::string_view kClusterSlots = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";


// A node of the cluster and this worker's connection to it.
struct Node {
    NodeAddress address;
    std::string name;       // for logs
    std::string host;       // NUL-terminated copy for hiredis
    RedisAddress redis_address{};
    std::unique_ptr<RedisClient> client;
    bool seed = false;
    bool failed = false;    // its last command got no reply: asked for the map last
    bool map_refused = false;  // its last answer to CLUSTER SLOTS was unusable (logged)
};

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
    Node *sent_to = nullptr;
    AskingCall asking{this};
    bool asking_pending = false;
    bool answered = false;  // the caller has its reply; freed after ASKING's
};

class ClusterRoute final : public RedisRoute {
public:
    // Throws std::bad_alloc.
    ClusterRoute(ngx_http_recording_redis_server_t *server, ngx_log_t *log, ngx_atomic_t *connections);
    ~ClusterRoute() override;
    ClusterRoute(const ClusterRoute &) = delete;
    ClusterRoute &operator=(const ClusterRoute &) = delete;

    bool add_seeds() noexcept;

    bool send(std::string_view key, std::string_view command, RedisCall *call,
              const RedisTimeouts &timeouts) noexcept override;
    bool available() noexcept override;
    void close() noexcept override;
    size_t in_flight() const noexcept override { return in_flight_; }

    void on_command_reply(ClusterCommand *cmd, const redisReply *reply) noexcept;

private:
    class SlotsCall final : public RedisCall {
    public:
        explicit SlotsCall(ClusterRoute *route) noexcept : route_(route) {}
        void on_reply(const redisReply *reply) noexcept override { route_->on_slots_reply(reply); }

    private:
        ClusterRoute *route_;
    };

    Node *find_node(const NodeAddress &address) noexcept;
    bool in_map(const Node &n) const noexcept;
    Node *node(const NodeAddress &address) noexcept;
    Node *owner(unsigned slot) noexcept;
    bool route(ClusterCommand *cmd) noexcept;
    bool dispatch(ClusterCommand *cmd, Node *to, bool asking) noexcept;
    void answer(ClusterCommand *cmd, const redisReply *reply) noexcept;
    void follow(ClusterCommand *cmd, Node *from, std::string_view error, const redisReply *reply) noexcept;
    void retry_later(ClusterCommand *cmd, std::string_view error, const redisReply *reply) noexcept;
    bool wait_for_map(ClusterCommand *cmd, ngx_msec_t deadline) noexcept;
    void dispatch_waiting() noexcept;
    void fail_all(std::deque<ClusterCommand *> &commands) noexcept;

    void request_refresh() noexcept;
    void start_fetch() noexcept;
    void try_next_candidate() noexcept;
    void fetch_failed() noexcept;
    void on_slots_reply(const redisReply *reply) noexcept;
    bool read_slots(const redisReply *reply, Node *from, SlotTable &table, size_t &skipped,
                    std::string &skipped_name, std::string &error);
    void apply(SlotTable &table, Node *from, size_t skipped, const std::string &skipped_name) noexcept;
    void tidy() noexcept;

    void arm(ngx_event_t *ev, ngx_msec_t due) noexcept;
    static void on_refresh_timer(ngx_event_t *ev) noexcept;
    static void on_retry_timer(ngx_event_t *ev) noexcept;
    static void on_wait_timer(ngx_event_t *ev) noexcept;

    ngx_http_recording_redis_server_t *server_;
    RedisLogin login_;
    ngx_log_t *log_;
    ngx_atomic_t *connections_;
    RedisTimeouts timeouts_ = kDefaultTimeouts;  // the latest command's, for reading the map

    std::vector<std::unique_ptr<Node>> nodes_;
    SlotTable table_;
    bool have_map_ = false;
    bool patched_ = false;        // a MOVED changed a slot since the last read
    std::vector<Node *> owners_;  // table_.nodes()[i]'s node, filled on demand

    // Reading the map: one read at a time, from the candidates in turn.
    SlotsCall slots_call_{this};
    bool fetching_ = false;
    bool refetch_ = false;         // asked again while reading
    bool fetched_before_ = false;
    ngx_msec_t last_fetch_ = 0;
    std::vector<Node *> candidates_;
    size_t next_candidate_ = 0;
    Node *fetching_from_ = nullptr;

    std::deque<ClusterCommand *> waiting_;  // for a map, oldest first
    size_t waiting_bytes_ = 0;
    std::deque<ClusterCommand *> retries_;  // after TRYAGAIN/CLUSTERDOWN, due in order
    size_t in_flight_ = 0;
    bool closing_ = false;

    // Logged once per change of state.
    bool fetch_failing_ = false;
    // Until a command that waited (for a map, or to be retried) is answered:
    bool cluster_trouble_ = false;  // TRYAGAIN or CLUSTERDOWN answered
    bool wait_trouble_ = false;     // commands found no master in time
    bool redirect_trouble_ = false; // a redirection could not be followed, until a redirected command succeeds
    size_t skipped_logged_ = 0;

    ngx_event_t refresh_timer_{};
    ngx_event_t retry_timer_{};
    ngx_event_t wait_timer_{};
};

void ClusterCommand::on_reply(const redisReply *reply) noexcept
{
    route->on_command_reply(this, reply);
}

ClusterRoute::ClusterRoute(ngx_http_recording_redis_server_t *server, ngx_log_t *log,
                           ngx_atomic_t *connections)
    : server_(server), login_(server->login), log_(log), connections_(connections)
{
    login_.db = -1;  // a cluster has database 0 only
    for (ngx_event_t *ev : {&refresh_timer_, &retry_timer_, &wait_timer_}) {
        ev->data = this;
        ev->log = log;
        // Nothing here may keep a worker that is shutting down alive:
        // whatever is still waiting gets a null reply in exit_process.
        ev->cancelable = 1;
    }
    refresh_timer_.handler = on_refresh_timer;
    retry_timer_.handler = on_retry_timer;
    wait_timer_.handler = on_wait_timer;
}

ClusterRoute::~ClusterRoute()
{
    close();
    for (ngx_event_t *ev : {&refresh_timer_, &retry_timer_, &wait_timer_}) {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }
    }
    nodes_.clear();
}

bool ClusterRoute::add_seeds() noexcept
{
    auto *seeds = static_cast<RedisAddress *>(server_->addresses.elts);
    for (ngx_uint_t i = 0; i < server_->addresses.nelts; i++) {
        const RedisAddress &seed = seeds[i];
        Node *n;
        try {
            NodeAddress address{std::string(reinterpret_cast<const char *>(seed.host.data), seed.host.len),
                                static_cast<uint16_t>(seed.port)};
            n = node(address);
        } catch (const std::bad_alloc &) {
            n = nullptr;
        }
        if (n == nullptr) {
            return false;
        }
        n->seed = true;
    }
    return true;
}

Node *ClusterRoute::find_node(const NodeAddress &address) noexcept
{
    for (auto &n : nodes_) {
        if (n->address == address) {
            return n.get();
        }
    }
    return nullptr;
}

bool ClusterRoute::in_map(const Node &n) const noexcept
{
    for (const NodeAddress &a : table_.nodes()) {
        if (a == n.address) {
            return true;
        }
    }
    return false;
}

// The node at `address`, created (not connected) when new; null when out
// of memory.
Node *ClusterRoute::node(const NodeAddress &address) noexcept
{
    Node *found = find_node(address);
    if (found != nullptr) {
        return found;
    }
    try {
        auto n = std::make_unique<Node>();
        n->address = address;
        n->name = address.name();
        n->host = address.host;
        n->redis_address.name = ngx_http_recording_str(n->name);
        n->redis_address.host = ngx_http_recording_str(n->host);  // c_str(): NUL-terminated
        n->redis_address.port = address.port;
        n->client.reset(new (std::nothrow) RedisClient(n->redis_address, login_, log_, connections_));
        if (n->client == nullptr) {
            return nullptr;
        }
        nodes_.push_back(std::move(n));
        return nodes_.back().get();
    } catch (const std::bad_alloc &) {
        return nullptr;
    }
}

// The node owning `slot` in the map; null when none does (or out of memory).
Node *ClusterRoute::owner(unsigned slot) noexcept
{
    int index = table_.owner(slot);
    if (index == SlotTable::kNone) {
        return nullptr;
    }
    auto i = static_cast<size_t>(index);
    try {
        if (owners_.size() <= i) {
            owners_.resize(table_.nodes().size(), nullptr);
        }
    } catch (const std::bad_alloc &) {
        return nullptr;
    }
    if (owners_[i] == nullptr) {
        owners_[i] = node(table_.nodes()[i]);
    }
    return owners_[i];
}

bool ClusterRoute::send(std::string_view key, std::string_view command, RedisCall *call,
                        const RedisTimeouts &timeouts) noexcept
{
    if (closing_) {
        return false;
    }
    ngx_time_update();
    timeouts_ = timeouts;

    ClusterCommand *cmd;
    try {
        cmd = new ClusterCommand(this, call, std::string(command), recording::key_slot(key), timeouts);
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
    if (!have_map_) {
        return false;
    }
    Node *to = owner(cmd->slot);
    if (to == nullptr) {
        return false;
    }
    if (!dispatch(cmd, to, false)) {
        to->failed = true;
        return false;
    }
    return true;
}

bool ClusterRoute::dispatch(ClusterCommand *cmd, Node *to, bool asking) noexcept
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
        redirect_trouble_ = false;
    }
    if (cmd->asking_pending) {
        cmd->answered = true;
    } else {
        delete cmd;
    }
    if (ok && waited && (cluster_trouble_ || wait_trouble_)) {
        ngx_log_error(NGX_LOG_NOTICE, log_, 0, "recording: redis cluster %V: serving again", &server_->name);
        cluster_trouble_ = false;
        wait_trouble_ = false;
    }
    caller->on_reply(reply);
}

void ClusterRoute::on_command_reply(ClusterCommand *cmd, const redisReply *reply) noexcept
{
    Node *from = cmd->sent_to;
    cmd->sent_to = nullptr;
    if (closing_ || reply == nullptr) {
        // No reply: the node failed (and its client logged why); its slots
        // may have a new master by now. A command that went out may have
        // been executed, so it is not sent again; one whose connection
        // never came up did not leave: it waits for a map that routes it.
        if (!closing_ && from != nullptr) {
            from->failed = true;
            if (!from->client->connected() && ngx_http_recording_before(ngx_current_msec, cmd->wait_until)
                && wait_for_map(cmd, cmd->wait_until))
            {
                return;
            }
            request_refresh();
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

void ClusterRoute::follow(ClusterCommand *cmd, Node *from, std::string_view error,
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
        if (!redirect_trouble_) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: %s: %*s", &server_->name,
                          problem, error.size(), error.data());
            redirect_trouble_ = true;
        }
        answer(cmd, reply);
        return;
    }

    Node *to = node(address);
    if (to == nullptr) {
        answer(cmd, nullptr);
        return;
    }
    cmd->redirects++;
    bool ask = redirect->kind == ClusterReplyKind::ask;
    if (!ask) {
        // The slot is there now; the rest of the map is read again.
        try {
            table_.assign(redirect->slot, redirect->slot, address);
            patched_ = true;
        } catch (const std::bad_alloc &) {
            // The map stays as it was; the refresh fixes it.
        }
        request_refresh();
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
    if (!cluster_trouble_) {
        ngx_log_error(NGX_LOG_WARN, log_, 0, "recording: redis cluster %V: %*s, retrying", &server_->name,
                      error.size(), error.data());
        cluster_trouble_ = true;
    }
    // "CLUSTERDOWN Hash slot not served": perhaps served elsewhere now.
    request_refresh();
    if (!retry_timer_.timer_set) {
        arm(&retry_timer_, due);
    }
}

void ClusterRoute::on_retry_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterRoute *>(ev->data);
    std::deque<ClusterCommand *> due;
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
        self->arm(&self->retry_timer_, self->retries_.front()->due);
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
    request_refresh();
    return true;
}

void ClusterRoute::on_wait_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterRoute *>(ev->data);
    std::deque<ClusterCommand *> late, still;
    try {
        for (ClusterCommand *cmd : self->waiting_) {
            (ngx_http_recording_before(ngx_current_msec, cmd->due) ? still : late).push_back(cmd);
        }
    } catch (const std::bad_alloc &) {
        self->arm(&self->wait_timer_, ngx_current_msec + 1);
        return;
    }
    self->waiting_.swap(still);
    self->waiting_bytes_ = 0;
    ngx_msec_t next = 0;
    for (ClusterCommand *cmd : self->waiting_) {
        self->waiting_bytes_ += cmd->command.size();
        if (next == 0 || ngx_http_recording_before(cmd->due, next)) {
            next = cmd->due;
        }
    }
    if (!self->waiting_.empty()) {
        self->arm(&self->wait_timer_, next);
    }
    if (!late.empty() && !self->wait_trouble_) {
        ngx_log_error(NGX_LOG_ERR, self->log_, 0, "recording: redis cluster %V: no master could take a command in time",
                      &self->server_->name);
        self->wait_trouble_ = true;
    }
    self->fail_all(late);
}

// A new map: the commands waiting for one go where it says. Those it
// cannot route yet wait for the next one, until their deadline.
void ClusterRoute::dispatch_waiting() noexcept
{
    std::deque<ClusterCommand *> waiting, late;
    waiting.swap(waiting_);
    waiting_bytes_ = 0;
    if (wait_timer_.timer_set) {
        ngx_del_timer(&wait_timer_);
    }
    for (ClusterCommand *cmd : waiting) {
        if (route(cmd)) {
            continue;
        }
        bool kept = false;
        if (ngx_http_recording_before(ngx_current_msec, cmd->due)) {
            try {
                waiting_.push_back(cmd);
                waiting_bytes_ += cmd->command.size();
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
    if (!waiting_.empty()) {
        ngx_msec_t next = waiting_.front()->due;
        for (ClusterCommand *cmd : waiting_) {
            if (ngx_http_recording_before(cmd->due, next)) {
                next = cmd->due;
            }
        }
        arm(&wait_timer_, next);
        request_refresh();
    }
    // Last: their callers may send again.
    fail_all(late);
}

void ClusterRoute::fail_all(std::deque<ClusterCommand *> &commands) noexcept
{
    std::deque<ClusterCommand *> failing;
    failing.swap(commands);
    for (ClusterCommand *cmd : failing) {
        answer(cmd, nullptr);
    }
}

void ClusterRoute::arm(ngx_event_t *ev, ngx_msec_t due) noexcept
{
    ngx_add_timer(ev, ngx_http_recording_left(due));
}

// --- The slot map ----------------------------------------------------------

// Reads the map soon: at once the first time, else no sooner than
// kMinRefreshInterval after the last read.
void ClusterRoute::request_refresh() noexcept
{
    if (closing_) {
        return;
    }
    if (fetching_) {
        refetch_ = true;
        return;
    }
    if (refresh_timer_.timer_set) {
        return;
    }
    ngx_msec_t due = fetched_before_ ? last_fetch_ + kMinRefreshInterval : ngx_current_msec;
    // Always from the timer: never within a caller's send() or a node's
    // callback.
    arm(&refresh_timer_, due);
}

void ClusterRoute::on_refresh_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterRoute *>(ev->data);
    if (self->fetching_ || self->closing_) {
        return;
    }
    self->tidy();
    self->start_fetch();
}

// Drops the connections to nodes that are neither in the map nor seeds and
// have nothing in flight (a master that failed over, an ASK target). Runs
// from the refresh timer only: nothing else is using them then.
void ClusterRoute::tidy() noexcept
{
    size_t kept = 0;
    for (size_t i = 0; i < nodes_.size(); i++) {
        Node *n = nodes_[i].get();
        if (in_map(*n) || n->seed || n->client->in_flight() != 0) {
            if (kept != i) {
                nodes_[kept] = std::move(nodes_[i]);
            }
            kept++;
        }
    }
    nodes_.resize(kept);  // deletes the others' clients: their connections close
}

void ClusterRoute::start_fetch() noexcept
{
    fetching_ = true;
    refetch_ = false;
    fetched_before_ = true;
    last_fetch_ = ngx_current_msec;
    candidates_.clear();
    next_candidate_ = 0;
    try {
        // The masters that answer, the seeds, then the nodes that failed.
        candidates_.reserve(nodes_.size());
        for (int pass = 0; pass < 3; pass++) {
            for (auto &n : nodes_) {
                bool listed = in_map(*n);
                bool take = pass == 0 ? listed && !n->failed
                          : pass == 1 ? !listed && !n->failed
                          : n->failed;
                if (take) {
                    candidates_.push_back(n.get());
                }
            }
        }
    } catch (const std::bad_alloc &) {
        // Ask those listed so far.
    }
    try_next_candidate();
}

void ClusterRoute::try_next_candidate() noexcept
{
    while (next_candidate_ < candidates_.size()) {
        Node *n = candidates_[next_candidate_++];
        if (!n->client->available()) {
            continue;
        }
        if (n->client->send(kClusterSlots, &slots_call_, timeouts_)) {
            fetching_from_ = n;
            return;
        }
    }
    fetch_failed();
}

void ClusterRoute::fetch_failed() noexcept
{
    fetching_ = false;
    fetching_from_ = nullptr;
    if (!fetch_failing_) {
        ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: no node gave the slot map",
                      &server_->name);
        fetch_failing_ = true;
    }
    // A map already known is kept: it is still the best guess.
    std::deque<ClusterCommand *> waiting;
    waiting.swap(waiting_);
    waiting_bytes_ = 0;
    if (wait_timer_.timer_set) {
        ngx_del_timer(&wait_timer_);
    }
    if (refetch_) {
        request_refresh();
    }
    // Last: their callers may send again.
    fail_all(waiting);
}

void ClusterRoute::on_slots_reply(const redisReply *reply) noexcept
{
    Node *from = fetching_from_;
    fetching_from_ = nullptr;
    if (closing_) {
        fetching_ = false;
        return;
    }
    if (from == nullptr) {
        return;  // cannot happen: one read at a time, and close() ends it
    }
    std::optional<SlotTable> table;
    size_t skipped = 0;
    std::string skipped_name, error;
    bool ok;
    try {
        table.emplace();
        ok = read_slots(reply, from, *table, skipped, skipped_name, error);
    } catch (const std::bad_alloc &) {
        ok = false;
        error.clear();
    }
    if (!ok) {
        if (reply == nullptr) {
            from->failed = true;  // its client logged why
        } else if (!from->map_refused) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: no slot map from %V: %s",
                          &server_->name, &from->redis_address.name,
                          error.empty() ? "out of memory" : error.c_str());
            from->map_refused = true;
        }
        try_next_candidate();
        return;
    }
    from->failed = false;
    from->map_refused = false;
    apply(*table, from, skipped, skipped_name);
    fetching_ = false;
    dispatch_waiting();
    if (refetch_) {
        request_refresh();
    }
}

// The map in a CLUSTER SLOTS reply:
//   [[start, end, [host, port, id, ...], replicas...], ...]
// host is NULL (or empty) for "the node you asked", and a host name when
// the cluster announces names: those ranges are skipped.
bool ClusterRoute::read_slots(const redisReply *reply, Node *from, SlotTable &table, size_t &skipped,
                              std::string &skipped_name, std::string &error)
{
    if (reply == nullptr) {
        error = "no reply";
        return false;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        return false;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        error = "not an array";
        return false;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *range = reply->element[i];
        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3
            || range->element[0]->type != REDIS_REPLY_INTEGER || range->element[1]->type != REDIS_REPLY_INTEGER
            || range->element[2]->type != REDIS_REPLY_ARRAY || range->element[2]->elements < 2)
        {
            error = "a malformed slot range";
            return false;
        }
        const redisReply *master = range->element[2];
        const redisReply *host = master->element[0];
        const redisReply *port = master->element[1];
        if ((host->type != REDIS_REPLY_STRING && host->type != REDIS_REPLY_NIL)
            || port->type != REDIS_REPLY_INTEGER || port->integer <= 0 || port->integer > 65535)
        {
            error = "a malformed node address";
            return false;
        }
        NodeAddress address;
        if (host->type == REDIS_REPLY_NIL || host->len == 0) {
            address.host = from->address.host;
        } else {
            address.host.assign(host->str, host->len);
        }
        address.port = static_cast<uint16_t>(port->integer);
        if (!recording::is_ip_literal(address.host)) {
            if (skipped++ == 0) {
                skipped_name = address.host;
            }
            continue;
        }
        long long start = range->element[0]->integer;
        long long end = range->element[1]->integer;
        if (start < 0 || end < 0 || !table.assign(static_cast<unsigned>(start), static_cast<unsigned>(end), address)) {
            error = "a slot range out of bounds";
            return false;
        }
    }
    if (table.empty()) {
        error = skipped != 0 ? "every master is named by a host name, which a worker does not resolve"
                             : "no slot is assigned";
        return false;
    }
    return true;
}

void ClusterRoute::apply(SlotTable &table, Node *from, size_t skipped, const std::string &skipped_name) noexcept
{
    bool changed = !have_map_ || patched_ || !table.same_owners(table_);
    table_ = std::move(table);
    patched_ = false;
    owners_.clear();
    have_map_ = true;
    if (changed || fetch_failing_) {
        size_t masters;
        try {
            masters = table_.masters();
        } catch (const std::bad_alloc &) {
            masters = 0;
        }
        ngx_log_error(NGX_LOG_NOTICE, log_, 0,
                      "recording: redis cluster %V: slot map from %V: %uz masters, %uz of 16384 slots served",
                      &server_->name, &from->redis_address.name, masters, table_.covered());
        fetch_failing_ = false;
    }
    if (skipped != skipped_logged_) {
        if (skipped != 0) {
            ngx_log_error(NGX_LOG_WARN, log_, 0,
                          "recording: redis cluster %V: %uz slot ranges skipped: their masters are named "
                          "by host name (\"%s\"), which a worker does not resolve; announce IP addresses",
                          &server_->name, skipped, skipped_name.c_str());
        }
        skipped_logged_ = skipped;
    }
    // A new map: every node is worth asking again.
    for (auto &n : nodes_) {
        n->failed = false;
    }
}

bool ClusterRoute::available() noexcept
{
    if (nodes_.empty()) {
        return true;
    }
    for (auto &n : nodes_) {
        if (n->client->available()) {
            return true;
        }
    }
    return false;
}

void ClusterRoute::close() noexcept
{
    if (closing_) {
        return;
    }
    closing_ = true;
    for (ngx_event_t *ev : {&refresh_timer_, &retry_timer_, &wait_timer_}) {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }
    }
    waiting_bytes_ = 0;
    fail_all(waiting_);
    fail_all(retries_);
    // Each node's pending commands get their null reply from its client.
    for (auto &n : nodes_) {
        n->client->close();
    }
    fetching_ = false;
    fetching_from_ = nullptr;
    refetch_ = false;
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
