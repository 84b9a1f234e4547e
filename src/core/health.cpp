#include "health.h"

namespace recording {

HealthAnswer judge_health(const HealthFacts &facts) noexcept
{
    if (facts.shutting_down) {
        return {503, R"({"status":"unavailable","reason":"shutting_down"})"};
    }
    if (!facts.redis_failing) {
        return {200, R"({"status":"ok"})"};
    }
    // While Redis is away, a spool keeps accepting: batches wait on disk.
    if (facts.spool && facts.spool_has_room) {
        return {200, R"({"status":"ok"})"};
    }
    if (facts.spool) {
        return {503, R"({"status":"unavailable","reason":"redis_unreachable_spool_full"})"};
    }
    return {503, R"({"status":"unavailable","reason":"redis_unreachable"})"};
}

bool HealthProbe::should_ask(uint64_t now_ms) noexcept
{
    if (waiting_) {
        return false;
    }
    // Unsigned difference: right across a wrap of the clock.
    if (asked_ && now_ms - asked_at_ < interval_ms_) {
        return false;
    }
    asked_ = true;
    asked_at_ = now_ms;
    waiting_ = true;
    return true;
}

bool HealthProbe::failing(uint64_t now_ms) const noexcept
{
    return failing_ || (waiting_ && now_ms - asked_at_ >= interval_ms_);
}

void HealthProbe::answered(bool ok) noexcept
{
    waiting_ = false;
    failing_ = !ok;
}

}  // namespace recording
