// `recording_health`: whether this worker can take batches now, as a load
// balancer reads it. The answer comes from what the worker already knows;
// Redis is asked again at most once an interval, never once per request.
#pragma once

#include <cstdint>
#include <string_view>

namespace recording {

// What the worker knows when a balancer asks.
struct HealthFacts {
    bool shutting_down = false;    // nginx -s quit / reload: the worker is draining
    bool redis_failing = false;    // a Redis of this configuration does not answer
    bool spool = false;            // recording_spool is configured ...
    bool spool_has_room = false;   // ... and can take another batch
};

struct HealthAnswer {
    int status;              // 200 or 503
    std::string_view body;   // static JSON text
};

// 200 while batches can be accepted: Redis answers, or the spool has room;
// 503 with the reason otherwise, and as soon as the worker shuts down.
HealthAnswer judge_health(const HealthFacts &facts) noexcept;

// One Redis as health sees it: asked (a PING) at most once per interval and
// one question at a time; the last answer holds until the next one. Times are
// a millisecond clock that may wrap around.
class HealthProbe {
public:
    explicit HealthProbe(uint64_t interval_ms = 1000) noexcept : interval_ms_(interval_ms) {}

    // True when a question should go now; the caller then sends it and
    // reports its answer with answered() (or sent_failed()).
    bool should_ask(uint64_t now_ms) noexcept;
    void answered(bool ok) noexcept;
    // The question could not even be sent: that is an answer too.
    void sent_failed() noexcept { answered(false); }

    // True once Redis failed to answer, until it answers again, and while a
    // question has waited longer than the interval: a Redis that stopped
    // answering is reported within about an interval, not after the reply
    // timeout. Before the first answer nothing is known against it.
    bool failing(uint64_t now_ms) const noexcept;
    bool waiting() const noexcept { return waiting_; }

private:
    uint64_t interval_ms_;
    uint64_t asked_at_ = 0;
    bool asked_ = false;
    bool waiting_ = false;
    bool failing_ = false;
};

}  // namespace recording
