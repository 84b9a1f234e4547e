// A Redis Cluster's slot map as one worker knows it: the nodes it has met
// (one RedisClient each), which master owns each hash slot, and reading
// that map again with CLUSTER SLOTS when the route asks. The route that
// owns it hears of each new map, and of failing to get one, through the
// handlers it gives (ClusterMapHandlers): the map never calls the route.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cluster_slots.h"
#include "ngx_http_recording_redis.h"
#include "spell.h"

// A node of the cluster and this worker's connection to it.
struct ClusterNode {
    recording::NodeAddress address;
    std::string name;       // for logs
    std::string host;       // NUL-terminated copy for the address
    RedisAddress redis_address{};
    std::unique_ptr<RedisClient> client;
    bool seed = false;
    bool failed = false;    // its last command got no reply: asked for the map last
    recording::Spell map_refused;  // its last answer to CLUSTER SLOTS was unusable (logged)
};

// What became of a read of the map, for the map's owner: nginx style, a
// handler and its data.
using ngx_http_recording_cluster_map_pt = void (*)(void *data) noexcept;

struct ClusterMapHandlers {
    // A new map is in place: commands waiting for one can go.
    ngx_http_recording_cluster_map_pt map_applied;
    // No node gave a map (one known before is kept): commands waiting for
    // one fail.
    ngx_http_recording_cluster_map_pt map_unavailable;
    void *data;
};

class ClusterMap {
public:
    // Throws std::bad_alloc.
    ClusterMap(ngx_http_recording_redis_server_t *server, ngx_log_t *log, ngx_atomic_t *connections,
               const ClusterMapHandlers &handlers);
    ~ClusterMap();
    ClusterMap(const ClusterMap &) = delete;
    ClusterMap &operator=(const ClusterMap &) = delete;

    // The server's addresses become nodes; false when out of memory.
    bool add_seeds() noexcept;

    // The node at `address`, created (not connected) when new; null when out
    // of memory. `server_name` (NUL-terminated, outliving the map): what TLS
    // checks, when the node was named so (a seed); empty: its address.
    ClusterNode *node(const recording::NodeAddress &address, ngx_str_t server_name = {}) noexcept;

    // The node owning `slot`; null before the first map, when the map names
    // none, or when out of memory.
    ClusterNode *owner(unsigned slot) noexcept;

    // A MOVED: the slot is at `address` now, and the rest of the map is read
    // again.
    void moved(unsigned slot, const recording::NodeAddress &address) noexcept;

    // Reads the map soon: at once the first time, else no sooner than
    // kMinRefreshInterval after the last read. Always from a timer: never
    // within a caller's send() or a node's callback.
    void request_refresh() noexcept;

    // The map is read with the latest command's timeouts.
    void use_timeouts(const RedisTimeouts &timeouts) noexcept { timeouts_ = timeouts; }

    // Some node may take a command (or none is known yet).
    bool available() noexcept;

    // Drops every connection: each node's pending commands get their null
    // reply from its client.
    void close() noexcept;

private:
    class SlotsCall final : public RedisCall {
    public:
        explicit SlotsCall(ClusterMap *map) noexcept : map_(map) {}
        void on_reply(const redisReply *reply) noexcept override { map_->on_slots_reply(reply); }

    private:
        ClusterMap *map_;
    };

    ClusterNode *find_node(const recording::NodeAddress &address) noexcept;
    bool in_map(const ClusterNode &n) const noexcept;
    void tidy() noexcept;

    static void on_refresh_timer(ngx_event_t *ev) noexcept;
    void start_fetch() noexcept;
    void try_next_candidate() noexcept;
    void fetch_failed() noexcept;
    void on_slots_reply(const redisReply *reply) noexcept;
    void apply(recording::SlotMap &map, ClusterNode *from) noexcept;

    ngx_http_recording_redis_server_t *server_;
    RedisLogin login_;
    ngx_log_t *log_;
    ngx_atomic_t *connections_;
    ClusterMapHandlers handlers_;
    RedisTimeouts timeouts_;

    std::vector<std::unique_ptr<ClusterNode>> nodes_;
    recording::SlotTable table_;
    bool have_map_ = false;
    bool patched_ = false;               // a MOVED changed a slot since the last read
    std::vector<ClusterNode *> owners_;  // table_.nodes()[i]'s node, filled on demand

    // Reading the map: one read at a time, from the candidates in turn.
    SlotsCall slots_call_{this};
    bool fetching_ = false;
    bool refetch_ = false;  // asked again while reading
    bool fetched_before_ = false;
    ngx_msec_t last_fetch_ = 0;
    std::vector<ClusterNode *> candidates_;
    size_t next_candidate_ = 0;
    ClusterNode *fetching_from_ = nullptr;
    bool closing_ = false;

    recording::Spell fetch_failing_;  // no node gave a map (logged)
    size_t skipped_logged_ = 0;       // host-named ranges last warned of

    ngx_event_t refresh_timer_{};
};
