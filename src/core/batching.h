// When the queue seals a batch, and how much it may hold: the rules alone,
// without the timers and posted events that carry them out
// (ngx_http_recording_queue.cpp).
//
// An element joins the open batch of its Redis and key. A batch is sealed
// when it reaches `recording_batch_elements` or `recording_batch_size`;
// else, when no RPUSH of the key is in flight, at the end of the current
// pass of the event loop (no added wait: what that pass took goes
// together); else when the reply of the RPUSH ahead of it comes, or at the
// latest `recording_batch_delay` after its first element (0: no limit but
// the reply's timeout). So a lone batch goes at once, and under load each
// RPUSH carries what arrived while the one before it was out.
//
// A worker holds at most `recording_pending_limit` bytes for Redis. Without
// a spool an element that would pass it is refused; with one, the batch that
// passes it is sealed at once and goes to the spool.
//
// Every call here is a few comparisons: the queue asks on each element, so
// nothing allocates.
#pragma once

#include <cstddef>
#include <cstdint>

namespace recording {

// One location's limits on its batches.
struct BatchLimits {
    size_t max_elements = 0;  // recording_batch_elements
    size_t max_size = 0;      // recording_batch_size: bytes of the RPUSH command
    uint64_t delay_ms = 0;    // recording_batch_delay; 0: none
};

// A key's open batch just after an element joined it.
struct OpenBatch {
    size_t elements = 0;        // the new one included
    size_t bytes = 0;           // of its RPUSH command so far
    unsigned in_flight = 0;     // RPUSHes of the key sent and not answered yet
    bool delay_armed = false;   // its delay timer runs already
    bool over_pending = false;  // the worker holds more than recording_pending_limit
};

// What becomes of the open batch once an element joined it.
enum class JoinVerdict {
    seal_now,             // full: sealed, to be sent
    spool_now,            // over the memory bound: sealed, for the spool
    seal_at_end_of_pass,  // nothing ahead of it: it goes when this pass ends
    arm_delay,            // behind an RPUSH: until its reply, or delay_ms from now
    wait_for_reply,       // behind an RPUSH: until its reply (or the delay armed before)
};

JoinVerdict after_join(const BatchLimits& limits, const OpenBatch& batch) noexcept;

// A reply of the key's RPUSH came, and `in_flight` of them are still out:
// whether the open batch (when there is one) that gathered behind them is
// sealed and sent now.
bool seals_on_reply(unsigned in_flight, bool has_open_batch) noexcept;

// The bytes one worker holds for Redis (batches open, sealed or in flight)
// against `recording_pending_limit`.
class PendingMemory {
public:
    constexpr explicit PendingMemory(size_t limit) noexcept : limit_(limit) {}

    // Without a spool, an element is taken only if the worker stays within
    // the limit once it holds the element.
    bool admits(size_t element_size) const noexcept { return held_ + element_size <= limit_; }

    // Past the limit: with a spool, the batch that took it there goes there.
    bool over() const noexcept { return held_ > limit_; }

    void hold(size_t bytes) noexcept { held_ += bytes; }
    void release(size_t bytes) noexcept { held_ -= bytes; }
    size_t held() const noexcept { return held_; }

private:
    size_t limit_;
    size_t held_ = 0;
};

}  // namespace recording
