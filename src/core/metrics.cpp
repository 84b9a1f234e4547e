#include "metrics.h"

#include <cstdio>

#include "enrichment.h"

namespace recording {

namespace {

constexpr std::array<std::string_view, 3> kReplyKinds = {"ok", "error", "none"};

std::array<uint64_t, 3> replies(const MetricsSnapshot& m)
{
    return {m.replies_ok, m.replies_error, m.replies_none};
}

// The histogram's buckets as both formats show them: cumulative, labelled
// by their upper bound.
struct Bucket {
    std::string_view bound;
    uint64_t count;
};

std::array<Bucket, kPushDurationBuckets> cumulative_buckets(const MetricsSnapshot& m)
{
    std::array<Bucket, kPushDurationBuckets> buckets;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kPushDurationBuckets; i++) {
        cumulative += m.push_duration[i];
        buckets[i] = {i < kPushDurationBoundLabels.size() ? kPushDurationBoundLabels[i] : "+Inf", cumulative};
    }
    return buckets;
}

uint64_t push_count(const MetricsSnapshot& m)
{
    return cumulative_buckets(m).back().count;
}

std::string seconds(uint64_t us)
{
    char text[32];
    std::snprintf(text, sizeof(text), "%llu.%06llu", static_cast<unsigned long long>(us / 1000000),
                  static_cast<unsigned long long>(us % 1000000));
    return text;
}

// --- JSON -------------------------------------------------------------------

class JsonObject {
public:
    explicit JsonObject(std::string& out) : out_(out) { out_ += '{'; }
    ~JsonObject() { out_ += '}'; }

    std::string& key(std::string_view name)
    {
        if (!first_) {
            out_ += ',';
        }
        first_ = false;
        append_json_string(out_, name);
        out_ += ':';
        return out_;
    }

    void number(std::string_view name, uint64_t value) { key(name) += std::to_string(value); }

private:
    std::string& out_;
    bool first_ = true;
};

// --- Prometheus -------------------------------------------------------------

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help)
{
    out.append("# HELP nginx_recording_").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE nginx_recording_").append(name).append(" ").append(type).append("\n");
}

void sample(std::string& out, std::string_view name, std::string_view labels, std::string_view value)
{
    out.append("nginx_recording_").append(name);
    if (!labels.empty()) {
        out.append("{").append(labels).append("}");
    }
    out.append(" ").append(value).append("\n");
}

void sample(std::string& out, std::string_view name, std::string_view labels, uint64_t value)
{
    sample(out, name, labels, std::to_string(value));
}

// A family of one sample without labels.
void single(std::string& out, std::string_view name, std::string_view type, std::string_view help, uint64_t value)
{
    family(out, name, type, help);
    sample(out, name, "", value);
}

std::string label(std::string_view name, std::string_view value)
{
    std::string out(name);
    out += "=\"";
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    out += '"';
    return out;
}

}  // namespace

size_t push_duration_bucket(uint64_t us) noexcept
{
    for (size_t i = 0; i < kPushDurationBoundsUs.size(); i++) {
        if (us <= kPushDurationBoundsUs[i]) {
            return i;
        }
    }
    return kPushDurationBoundsUs.size();
}

std::string render_json(const MetricsSnapshot& m)
{
    std::string out;
    {
        JsonObject root(out);
        append_json_string(root.key("version"), m.version);
        {
            JsonObject batches(root.key("batches"));
            for (size_t i = 0; i < kOutcomeCount; i++) {
                batches.number(outcome_name(static_cast<Outcome>(i)), m.batches[i]);
            }
        }
        root.number("preflights", m.preflights);
        root.number("received_bytes", m.received_bytes);
        root.number("decoded_bytes", m.decoded_bytes);
        root.number("pending_bytes", m.pending_bytes);
        root.number("pending_limit_refusals", m.pending_limit_refusals);
        {
            JsonObject redis(root.key("redis"));
            {
                JsonObject commands(redis.key("commands"));
                commands.number("rpush", m.rpush_commands);
                commands.number("hmget", m.hmget_commands);
            }
            redis.number("pushed_elements", m.pushed_elements);
            {
                JsonObject kinds(redis.key("replies"));
                auto counts = replies(m);
                for (size_t i = 0; i < kReplyKinds.size(); i++) {
                    kinds.number(kReplyKinds[i], counts[i]);
                }
            }
            redis.number("reconnects", m.reconnects);
            redis.number("inflight_elements", m.inflight_elements);
            {
                JsonObject servers(redis.key("servers"));
                for (const ServerMetrics& s : m.servers) {
                    JsonObject server(servers.key(s.name));
                    server.number("connections", s.connections);
                }
            }
            {
                JsonObject histogram(redis.key("push_duration_seconds"));
                {
                    JsonObject buckets(histogram.key("buckets"));
                    for (const Bucket& bucket : cumulative_buckets(m)) {
                        buckets.number(bucket.bound, bucket.count);
                    }
                }
                histogram.key("sum") += seconds(m.push_duration_sum_us);
                histogram.number("count", push_count(m));
            }
        }
        {
            JsonObject spool(root.key("spool"));
            spool.number("spooled_elements", m.spooled_elements);
            spool.number("replayed_elements", m.replayed_elements);
            spool.number("resent_elements", m.resent_elements);
            spool.number("full_refusals", m.spool_full_refusals);
            spool.number("write_failures", m.spool_write_failures);
            spool.number("bytes", m.spool_bytes);
            spool.number("files", m.spool_files);
        }
        {
            JsonObject cache(root.key("site_cache"));
            cache.number("hits", m.site_cache_hits);
            cache.number("misses", m.site_cache_misses);
            cache.number("entries", m.site_cache_entries);
        }
        {
            JsonObject budget(root.key("budget"));
            budget.number("commands", m.budget_commands);
            budget.number("unavailable", m.budget_unavailable);
        }
        {
            JsonObject websocket(root.key("websocket"));
            websocket.number("connections", m.websocket_connections);
            websocket.number("connections_open", m.websocket_connections_open);
            websocket.number("messages", m.websocket_messages);
        }
    }
    out += '\n';
    return out;
}

std::string render_prometheus(const MetricsSnapshot& m)
{
    std::string out;
    family(out, "build_info", "gauge", "The module's version.");
    sample(out, "build_info", label("version", m.version), 1);

    family(out, "batches_total", "counter", "Batches by outcome: queued, sampled_out or the error answered.");
    for (size_t i = 0; i < kOutcomeCount; i++) {
        sample(out, "batches_total", label("outcome", outcome_name(static_cast<Outcome>(i))), m.batches[i]);
    }
    single(out, "preflights_total", "counter", "CORS preflight (OPTIONS) requests answered.", m.preflights);
    single(out, "received_bytes_total", "counter", "Request body bytes received, before decoding.",
           m.received_bytes);
    single(out, "decoded_bytes_total", "counter", "Request body bytes after decoding.", m.decoded_bytes);
    single(out, "pending_bytes", "gauge",
           "Bytes the workers hold for Redis now: gathered into RPUSH commands or in flight.", m.pending_bytes);
    single(out, "pending_limit_refusals_total", "counter",
           "Batches refused because their worker held recording_pending_limit already.",
           m.pending_limit_refusals);

    family(out, "redis_commands_total", "counter", "Commands sent to Redis.");
    sample(out, "redis_commands_total", label("command", "rpush"), m.rpush_commands);
    sample(out, "redis_commands_total", label("command", "hmget"), m.hmget_commands);
    single(out, "redis_pushed_elements_total", "counter", "Queue elements Redis acknowledged.",
           m.pushed_elements);
    family(out, "redis_replies_total", "counter",
           "Replies from Redis: ok, error (an error reply) or none (refused, lost or timed out).");
    auto counts = replies(m);
    for (size_t i = 0; i < kReplyKinds.size(); i++) {
        sample(out, "redis_replies_total", label("kind", kReplyKinds[i]), counts[i]);
    }
    single(out, "redis_reconnects_total", "counter", "Attempts to connect to Redis after each worker's first.",
           m.reconnects);
    family(out, "redis_connections", "gauge", "Workers connected to each Redis server now.");
    for (const ServerMetrics& s : m.servers) {
        sample(out, "redis_connections", label("server", s.name), s.connections);
    }
    single(out, "redis_inflight_elements", "gauge", "Queue elements sent to Redis and not yet acknowledged.",
           m.inflight_elements);

    family(out, "redis_push_duration_seconds", "histogram", "Round trip of RPUSH, from sending to the reply.");
    for (const Bucket& bucket : cumulative_buckets(m)) {
        sample(out, "redis_push_duration_seconds_bucket", label("le", bucket.bound), bucket.count);
    }
    sample(out, "redis_push_duration_seconds_sum", "", seconds(m.push_duration_sum_us));
    sample(out, "redis_push_duration_seconds_count", "", push_count(m));

    single(out, "spool_spooled_elements_total", "counter", "Queue elements written to the spool.",
           m.spooled_elements);
    single(out, "spool_replayed_elements_total", "counter",
           "Queue elements replayed from the spool and acknowledged by Redis.", m.replayed_elements);
    single(out, "spool_resent_elements_total", "counter",
           "Queue elements the spool sends again after an RPUSH of them went out and got no reply: "
           "Redis may hold them twice.",
           m.resent_elements);
    single(out, "spool_full_refusals_total", "counter",
           "Queue elements the spool refused because it had reached its max_size.", m.spool_full_refusals);
    single(out, "spool_write_failures_total", "counter", "Writes to the spool that failed.",
           m.spool_write_failures);
    single(out, "spool_bytes", "gauge", "Size of the spool's files, as last seen by a worker.", m.spool_bytes);
    single(out, "spool_files", "gauge", "Files in the spool, as last seen by a worker.", m.spool_files);

    single(out, "site_cache_hits_total", "counter", "Batches whose site settings came from the shared cache.",
           m.site_cache_hits);
    single(out, "site_cache_misses_total", "counter", "Batches that waited for site settings from Redis.",
           m.site_cache_misses);
    single(out, "site_cache_entries", "gauge", "Sites in the shared cache.", m.site_cache_entries);

    single(out, "budget_commands_total", "counter",
           "Sessions whose first batch of the day asked Redis for the site's daily budget.", m.budget_commands);
    single(out, "budget_unavailable_total", "counter",
           "Budget decisions Redis could not answer: the session was admitted (fail open).", m.budget_unavailable);
    single(out, "websocket_connections_total", "counter", "WebSocket connections upgraded.",
           m.websocket_connections);
    single(out, "websocket_connections_open", "gauge", "WebSocket connections open now.",
           m.websocket_connections_open);
    single(out, "websocket_messages_total", "counter", "WebSocket data messages read, each a batch.",
           m.websocket_messages);
    return out;
}

bool wants_prometheus(std::string_view format_argument, std::string_view accept) noexcept
{
    if (format_argument == "prometheus") {
        return true;
    }
    // Prometheus asks for "text/plain;version=0.0.4" or OpenMetrics; a bare
    // text/plain (as many HTTP clients send among others) is not a request
    // for the exposition format.
    return accept.find("version=0.0.4") != std::string_view::npos
           || accept.find("application/openmetrics-text") != std::string_view::npos;
}

}  // namespace recording
