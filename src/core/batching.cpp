#include "batching.h"

namespace recording {

JoinVerdict after_join(const BatchLimits& limits, const OpenBatch& batch) noexcept
{
    // Over the memory bound wins over full: either way it is sealed now,
    // but then it must not take Redis more memory.
    if (batch.over_pending) {
        return JoinVerdict::spool_now;
    }
    if (batch.elements >= limits.max_elements || batch.bytes >= limits.max_size) {
        return JoinVerdict::seal_now;
    }
    if (batch.in_flight == 0) {
        // With whatever else this pass takes for the key.
        return JoinVerdict::seal_at_end_of_pass;
    }
    // An RPUSH for the key is out: gather behind it until its reply comes,
    // or the delay passes (then pipelined behind it).
    if (limits.delay_ms != 0 && !batch.delay_armed) {
        return JoinVerdict::arm_delay;
    }
    return JoinVerdict::wait_for_reply;
}

bool seals_on_reply(unsigned in_flight, bool has_open_batch) noexcept
{
    return in_flight == 0 && has_open_batch;
}

}  // namespace recording
