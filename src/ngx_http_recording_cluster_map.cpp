// The cluster's slot map, read with CLUSTER SLOTS when the route asks (on
// the first command, after a MOVED, after a node failed to answer), at
// most every kMinRefreshInterval; from the known masters first, then the
// seeds, then the nodes that failed. The reply's rules are the core's
// (recording::read_slots); what is logged, and when, is here. Addresses in
// the map must be numeric: a worker never blocks on a name lookup, so
// ranges named by host name are skipped, with a warning.

#include "ngx_http_recording_cluster_map.h"

#include "ngx_http_recording_redis_conf.h"

#include <hiredis/hiredis.h>

#include <new>
#include <optional>
#include <utility>

namespace {

using recording::NodeAddress;
using recording::ReplyView;
using recording::SlotTable;

constexpr ngx_msec_t kMinRefreshInterval = 200;  // between two reads of the map
constexpr RedisTimeouts kDefaultTimeouts = {1000, 1000};  // until a command brings its own
constexpr std::string_view kClusterSlots = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";

// Deeper than this, read_slots looks at nothing: [range [master [host port]]].
constexpr int kSlotsReplyDepth = 3;

// hiredis's reply as the core reads it, as deep as it reads. Throws
// std::bad_alloc.
ReplyView view_of(const redisReply *reply, int depth = 0)
{
    ReplyView view;
    switch (reply->type) {
    case REDIS_REPLY_ARRAY:
        view.type = ReplyView::Type::array;
        if (depth < kSlotsReplyDepth) {
            view.elements.reserve(reply->elements);
            for (size_t i = 0; i < reply->elements; i++) {
                view.elements.push_back(view_of(reply->element[i], depth + 1));
            }
        }
        break;
    case REDIS_REPLY_INTEGER:
        view.type = ReplyView::Type::integer;
        view.integer = reply->integer;
        break;
    case REDIS_REPLY_STRING:
        view.type = ReplyView::Type::string;
        view.text = {reply->str, reply->len};
        break;
    case REDIS_REPLY_NIL:
        view.type = ReplyView::Type::nil;
        break;
    case REDIS_REPLY_ERROR:
        view.type = ReplyView::Type::error;
        view.text = {reply->str, reply->len};
        break;
    default:
        break;  // other
    }
    return view;
}

}  // namespace

ClusterMap::ClusterMap(ngx_http_recording_redis_server_t *server, ngx_log_t *log, ngx_atomic_t *connections,
                       const ClusterMapHandlers &handlers)
    : server_(server), login_(server->login), log_(log), connections_(connections), handlers_(handlers),
      timeouts_(kDefaultTimeouts)
{
    login_.db = -1;  // a cluster has database 0 only
    refresh_timer_.data = this;
    refresh_timer_.log = log;
    // Nothing here may keep a worker that is shutting down alive.
    refresh_timer_.cancelable = 1;
    refresh_timer_.handler = on_refresh_timer;
}

ClusterMap::~ClusterMap()
{
    if (refresh_timer_.timer_set) {
        ngx_del_timer(&refresh_timer_);
    }
    nodes_.clear();
}

bool ClusterMap::add_seeds() noexcept
{
    auto *seeds = static_cast<RedisAddress *>(server_->addresses.elts);
    for (ngx_uint_t i = 0; i < server_->addresses.nelts; i++) {
        const RedisAddress &seed = seeds[i];
        ClusterNode *n;
        try {
            NodeAddress address{std::string(ngx_http_recording_view(seed.host)), static_cast<uint16_t>(seed.port)};
            // The seed's host as written: what its certificate names.
            n = node(address, seed.server_name);
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

ClusterNode *ClusterMap::find_node(const NodeAddress &address) noexcept
{
    for (auto &n : nodes_) {
        if (n->address == address) {
            return n.get();
        }
    }
    return nullptr;
}

bool ClusterMap::in_map(const ClusterNode &n) const noexcept
{
    for (const NodeAddress &a : table_.nodes()) {
        if (a == n.address) {
            return true;
        }
    }
    return false;
}

ClusterNode *ClusterMap::node(const NodeAddress &address, ngx_str_t server_name) noexcept
{
    ClusterNode *found = find_node(address);
    if (found != nullptr) {
        return found;
    }
    try {
        auto n = std::make_unique<ClusterNode>();
        n->address = address;
        n->name = address.name();
        n->host = address.host;
        // c_str(): NUL-terminated, as the address wants them.
        if (!ngx_http_recording_numeric_redis_address(&n->redis_address, ngx_http_recording_str(n->name),
                                                      ngx_http_recording_str(n->host), address.port))
        {
            return nullptr;  // the map holds IP addresses only
        }
        if (server_name.len != 0) {
            n->redis_address.server_name = server_name;
        }
        n->client.reset(new (std::nothrow) RedisClient(n->redis_address, login_, server_->tls, log_, connections_));
        if (n->client == nullptr) {
            return nullptr;
        }
        nodes_.push_back(std::move(n));
        return nodes_.back().get();
    } catch (const std::bad_alloc &) {
        return nullptr;
    }
}

ClusterNode *ClusterMap::owner(unsigned slot) noexcept
{
    if (!have_map_) {
        return nullptr;
    }
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

void ClusterMap::moved(unsigned slot, const NodeAddress &address) noexcept
{
    try {
        table_.assign(slot, slot, address);
        patched_ = true;
    } catch (const std::bad_alloc &) {
        // The map stays as it was; the refresh fixes it.
    }
    request_refresh();
}

bool ClusterMap::available() noexcept
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

void ClusterMap::close() noexcept
{
    closing_ = true;
    if (refresh_timer_.timer_set) {
        ngx_del_timer(&refresh_timer_);
    }
    for (auto &n : nodes_) {
        n->client->close();
    }
    fetching_ = false;
    fetching_from_ = nullptr;
    refetch_ = false;
    closing_ = false;
}

// --- Reading the map -------------------------------------------------------

void ClusterMap::request_refresh() noexcept
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
    ngx_add_timer(&refresh_timer_, ngx_http_recording_left(due));
}

void ClusterMap::on_refresh_timer(ngx_event_t *ev) noexcept
{
    auto *self = static_cast<ClusterMap *>(ev->data);
    if (self->fetching_ || self->closing_) {
        return;
    }
    self->tidy();
    self->start_fetch();
}

// Drops the connections to nodes that are neither in the map nor seeds and
// have nothing in flight (a master that failed over, an ASK target). Runs
// from the refresh timer only: nothing else is using them then.
void ClusterMap::tidy() noexcept
{
    size_t kept = 0;
    for (size_t i = 0; i < nodes_.size(); i++) {
        ClusterNode *n = nodes_[i].get();
        if (in_map(*n) || n->seed || n->client->in_flight() != 0) {
            if (kept != i) {
                nodes_[kept] = std::move(nodes_[i]);
            }
            kept++;
        }
    }
    nodes_.resize(kept);  // deletes the others' clients: their connections close
}

void ClusterMap::start_fetch() noexcept
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

void ClusterMap::try_next_candidate() noexcept
{
    while (next_candidate_ < candidates_.size()) {
        ClusterNode *n = candidates_[next_candidate_++];
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

void ClusterMap::fetch_failed() noexcept
{
    fetching_ = false;
    fetching_from_ = nullptr;
    if (fetch_failing_.begins()) {
        ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: no node gave the slot map",
                      &server_->name);
    }
    // A map already known is kept: it is still the best guess.
    if (refetch_) {
        request_refresh();
    }
    // Last: the waiting commands' callers may send again.
    handlers_.map_unavailable(handlers_.data);
}

void ClusterMap::on_slots_reply(const redisReply *reply) noexcept
{
    ClusterNode *from = fetching_from_;
    fetching_from_ = nullptr;
    if (closing_) {
        fetching_ = false;
        return;
    }
    if (from == nullptr) {
        return;  // cannot happen: one read at a time, and close() ends it
    }
    if (reply == nullptr) {
        from->failed = true;  // its client logged why
        try_next_candidate();
        return;
    }
    std::optional<recording::SlotMap> map;
    std::string error;
    bool ok;
    try {
        map.emplace();
        ok = recording::read_slots(view_of(reply), from->address.host, *map, error);
    } catch (const std::bad_alloc &) {
        ok = false;
        error.clear();
    }
    if (!ok) {
        if (from->map_refused.begins()) {
            ngx_log_error(NGX_LOG_ERR, log_, 0, "recording: redis cluster %V: no slot map from %V: %s",
                          &server_->name, &from->redis_address.name,
                          error.empty() ? "out of memory" : error.c_str());
        }
        try_next_candidate();
        return;
    }
    from->failed = false;
    from->map_refused.ends();  // not logged: the map's notice says enough
    apply(*map, from);
    fetching_ = false;
    handlers_.map_applied(handlers_.data);
    if (refetch_) {
        request_refresh();
    }
}

void ClusterMap::apply(recording::SlotMap &map, ClusterNode *from) noexcept
{
    bool changed = !have_map_ || patched_ || !map.table.same_owners(table_);
    table_ = std::move(map.table);
    patched_ = false;
    owners_.clear();
    have_map_ = true;
    bool recovered = fetch_failing_.ends();
    if (changed || recovered) {
        size_t masters;
        try {
            masters = table_.masters();
        } catch (const std::bad_alloc &) {
            masters = 0;
        }
        ngx_log_error(NGX_LOG_NOTICE, log_, 0,
                      "recording: redis cluster %V: slot map from %V: %uz masters, %uz of 16384 slots served",
                      &server_->name, &from->redis_address.name, masters, table_.covered());
    }
    if (map.skipped != skipped_logged_) {
        if (map.skipped != 0) {
            ngx_log_error(NGX_LOG_WARN, log_, 0,
                          "recording: redis cluster %V: %uz slot ranges skipped: their masters are named "
                          "by host name (\"%s\"), which a worker does not resolve; announce IP addresses",
                          &server_->name, map.skipped, map.skipped_name.c_str());
        }
        skipped_logged_ = map.skipped;
    }
    // A new map: every node is worth asking again.
    for (auto &n : nodes_) {
        n->failed = false;
    }
}
