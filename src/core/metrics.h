// The module's figures, as plain numbers, and their two renderings: JSON and
// the Prometheus text exposition format. The counters themselves live in
// shared memory (the glue's stats); this is what a reading of them shows.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "outcome.h"

namespace recording {

constexpr size_t kOutcomeCount = static_cast<size_t>(Outcome::internal_error) + 1;

// Upper bounds of the push round-trip histogram, in microseconds, and as
// Prometheus writes them (seconds); a last bucket takes everything above.
constexpr std::array<uint64_t, 12> kPushDurationBoundsUs = {
    500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000, 2000000};
constexpr std::array<std::string_view, 12> kPushDurationBoundLabels = {
    "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"};
constexpr size_t kPushDurationBuckets = kPushDurationBoundsUs.size() + 1;

// The histogram bucket (not cumulative) a round trip of `us` falls in.
size_t push_duration_bucket(uint64_t us) noexcept;

struct ServerMetrics {
    std::string name;          // as in recording_redis
    uint64_t connections = 0;  // workers connected to it now
};

struct MetricsSnapshot {
    std::string version;
    std::array<uint64_t, kOutcomeCount> batches{};  // by Outcome
    uint64_t preflights = 0;
    uint64_t received_bytes = 0;
    uint64_t decoded_bytes = 0;

    // Memory bound (recording_pending_limit).
    uint64_t pending_bytes = 0;           // held for Redis by the workers now
    uint64_t pending_limit_refusals = 0;  // batches refused: the bound was reached

    uint64_t rpush_commands = 0;
    uint64_t hmget_commands = 0;
    uint64_t pushed_elements = 0;
    uint64_t replies_ok = 0;
    uint64_t replies_error = 0;
    uint64_t replies_none = 0;  // no answer: refused, lost or timed out
    uint64_t reconnects = 0;
    uint64_t inflight_elements = 0;
    std::array<uint64_t, kPushDurationBuckets> push_duration{};  // per bucket
    uint64_t push_duration_sum_us = 0;
    std::vector<ServerMetrics> servers;

    // The disk spool (recording_spool).
    uint64_t spooled_elements = 0;      // written to the spool
    uint64_t replayed_elements = 0;     // replayed from it, acknowledged by Redis
    // Elements the spool sends again after an RPUSH of them went out and got
    // no reply (the connection dropped): Redis may have run it, so each may
    // be queued twice. Delivery is at least once; consumers drop duplicates
    // by _ingest.request_id.
    uint64_t resent_elements = 0;
    uint64_t spool_full_refusals = 0;   // elements refused: the spool was full
    uint64_t spool_write_failures = 0;  // writes to the spool that failed
    uint64_t spool_bytes = 0;           // the spool's size, as last seen by a worker
    uint64_t spool_files = 0;           // its files, as last seen by a worker

    uint64_t site_cache_hits = 0;
    uint64_t site_cache_misses = 0;
    uint64_t site_cache_entries = 0;

    uint64_t budget_commands = 0;     // sessions' first batches asked of Redis (a budget applies)
    uint64_t budget_unavailable = 0;  // ... that Redis could not answer: admitted (fail open)
    uint64_t websocket_connections = 0;       // WebSocket connections upgraded
    uint64_t websocket_connections_open = 0;  // ... open now
    uint64_t websocket_messages = 0;          // data messages read (each a batch)
};

std::string render_json(const MetricsSnapshot& m);
std::string render_prometheus(const MetricsSnapshot& m);

// Whether a status request asks for Prometheus's format: ?format=prometheus,
// or an Accept header naming the text exposition format (version=0.0.4) or
// OpenMetrics.
bool wants_prometheus(std::string_view format_argument, std::string_view accept) noexcept;

}  // namespace recording
