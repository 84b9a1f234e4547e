// Queueing: gathering elements into RPUSH commands, sending them, and
// falling back on the spool.
//
// An element joins the open batch of its Redis and key. When that batch is
// sealed (full; else at the end of the current pass of the event loop; else
// when the reply of the RPUSH ahead of it comes, or `recording_batch_delay`
// after its first element), and how much a worker may hold, is the core's
// batching policy (batching.h); this file carries out its verdicts with a
// posted event and a timer per key. Sealed batches are sent from that event
// or a timer, never from within a request's handler, so that every answer
// comes from one place. Replies come in the order the commands went out, so
// a session's batches, which share a key, reach Redis in the order they
// were taken.
//
// A batch that cannot be sent, or that gets no acknowledgement, goes to
// the spool when there is one (`recording_spool`), else its requests get
// 503. While the spool holds records, new batches go there too, behind
// them, until the spool is replayed: the order holds through an outage.

#include "ngx_http_recording_queue.h"

#include <memory>
#include <new>
#include <vector>

#include <hiredis/hiredis.h>

#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_spool.h"
#include "ngx_http_recording_stats.h"
#include "batching.h"
#include "redis_protocol.h"

namespace {

// What this worker holds for Redis, against recording_pending_limit (set
// by init_process).
recording::PendingMemory pending{0};

struct Slot;

struct Batch {
    Slot *slot = nullptr;
    ngx_http_recording_redis_server_t *server = nullptr;
    RedisTimeouts timeouts{};
    recording::RpushBuilder command;
    std::vector<ngx_http_recording_waiter_t *> waiters;
    std::string key;
    size_t held = 0;
    uint64_t sent_us = 0;
    bool to_spool = false;  // taken over the memory bound: not for Redis now
};

// The open batch of one Redis and key, and what seals it.
struct Slot {
    ngx_http_recording_redis_server_t *server;
    std::string key;
    std::unique_ptr<Batch> batch;
    recording::BatchLimits limits;
    bool due = false;     // to be sealed by the posted flush event
    unsigned in_flight = 0;  // its RPUSH sent and not answered yet
    ngx_event_t timer{};
};

void seal(Slot &slot) noexcept;

std::vector<std::unique_ptr<Slot>> slots;
std::vector<std::unique_ptr<Batch>> sealed;   // to be sent by the flush event
std::vector<std::unique_ptr<Batch>> spares;   // reused, with their buffers
constexpr size_t kMaxSpares = 16;
constexpr size_t kMaxSpareSize = 512 * 1024;
ngx_event_t flush_event;
bool flush_event_ready = false;

void dispatch(std::unique_ptr<Batch> batch) noexcept;

std::unique_ptr<Batch> new_batch(ngx_http_recording_redis_server_t *server, std::string_view key,
                                 const RedisTimeouts &timeouts)
{
    std::unique_ptr<Batch> batch;
    if (!spares.empty()) {
        batch = std::move(spares.back());
        spares.pop_back();
    } else {
        batch = std::make_unique<Batch>();
    }
    batch->server = server;
    batch->timeouts = timeouts;
    batch->key.assign(key);
    batch->command.reset(key);
    batch->waiters.clear();
    batch->held = 0;
    batch->to_spool = false;
    return batch;
}

void release(std::unique_ptr<Batch> batch) noexcept
{
    pending.release(batch->held);
    ngx_http_recording_count(&ngx_http_recording_stats_t::pending_bytes,
                             -static_cast<ngx_atomic_int_t>(batch->held));
    batch->waiters.clear();
    batch->command.reset(batch->key);  // lets go of the documents it kept
    // A spare keeps its buffer, so only small ones are kept: at most
    // kMaxSpares x kMaxSpareSize stay with a worker.
    if (spares.size() < kMaxSpares && batch->held <= kMaxSpareSize) {
        try {
            spares.push_back(std::move(batch));
        } catch (const std::bad_alloc &) {
        }
    }
}

// Tells every request of the batch its fate, then lets the batch go.
void answer(std::unique_ptr<Batch> batch, recording::Outcome outcome, uint64_t redis_time_us) noexcept
{
    std::vector<ngx_http_recording_waiter_t *> waiters;
    waiters.swap(batch->waiters);
    release(std::move(batch));
    for (ngx_http_recording_waiter_t *waiter : waiters) {
        waiter->pushed(waiter, outcome, redis_time_us);
    }
}

// The batch's RPUSH, in one piece, to the spool file.
bool spool_write(Batch &batch) noexcept
{
    try {
        std::string command = batch.command.joined();
        return ngx_http_recording_spool_write(batch.server, batch.key,
                                              static_cast<uint32_t>(batch.command.elements()), command);
    } catch (const std::bad_alloc &) {
        return false;
    }
}

// The batch did not reach Redis, or its RPUSH went out unanswered
// (`unconfirmed`: Redis may have it): to the spool, or 503.
void fall_back(std::unique_ptr<Batch> batch, bool unconfirmed = false) noexcept
{
    auto elements = static_cast<uint32_t>(batch->command.elements());
    if (ngx_http_recording_spool_enabled() && spool_write(*batch)) {
        if (unconfirmed) {
            // Replaying it may queue it twice: at least once, not exactly.
            ngx_http_recording_count(&ngx_http_recording_stats_t::resent_elements, elements);
        }
        answer(std::move(batch), recording::Outcome::queued, 0);
        return;
    }
    answer(std::move(batch), recording::Outcome::queue_unavailable, 0);
}

// The RPUSH of one batch, in flight.
class PushCall final : public RedisCall {
public:
    // The batch, and so its command's bytes, lives until the reply.
    PushCall() noexcept { command_kept = true; }

    std::unique_ptr<Batch> batch;

    void on_reply(const redisReply *reply) noexcept override
    {
        Slot *slot = batch->slot;
        size_t elements = batch->command.elements();
        uint64_t round_trip = ngx_http_recording_now_us() - batch->sent_us;
        ngx_http_recording_count(&ngx_http_recording_stats_t::inflight_elements,
                                 -static_cast<ngx_atomic_int_t>(elements));
        if (reply != nullptr) {
            ngx_http_recording_count_push_duration(round_trip);
        }
        // RPUSH answers the list's new length; anything else pushed nothing.
        if (reply != nullptr && reply->type == REDIS_REPLY_INTEGER) {
            ngx_http_recording_count(&ngx_http_recording_stats_t::pushed_elements,
                                     static_cast<ngx_atomic_int_t>(elements));
            answer(std::move(batch), recording::Outcome::queued, round_trip);
        } else {
            fall_back(std::move(batch), reply == nullptr && unconfirmed);
        }
        delete this;
        // What gathered behind this RPUSH goes now.
        slot->in_flight--;
        if (recording::seals_on_reply(slot->in_flight, slot->batch != nullptr)) {
            seal(*slot);
        }
    }
};

void dispatch(std::unique_ptr<Batch> batch) noexcept
{
    RedisRoute *route = batch->server->route;
    // Behind records waiting in the spool, or while Redis is known down.
    if (batch->to_spool
        || (ngx_http_recording_spool_enabled()
            && (ngx_http_recording_spool_holds_records() || !route->available())))
    {
        fall_back(std::move(batch));
        return;
    }
    auto *call = new (std::nothrow) PushCall();
    if (call == nullptr) {
        fall_back(std::move(batch));
        return;
    }
    size_t elements = batch->command.elements();
    batch->sent_us = ngx_http_recording_now_us();
    call->batch = std::move(batch);
    Batch &sent = *call->batch;
    bool accepted = false;
    try {
        accepted = route->send(sent.key, RedisCommand(sent.command.pieces()), call, sent.timeouts);
    } catch (const std::bad_alloc &) {
    }
    if (!accepted) {
        batch = std::move(call->batch);
        delete call;
        fall_back(std::move(batch));
        return;
    }
    sent.slot->in_flight++;
    ngx_http_recording_count(&ngx_http_recording_stats_t::rpush_commands);
    ngx_http_recording_count(&ngx_http_recording_stats_t::inflight_elements,
                             static_cast<ngx_atomic_int_t>(elements));
}

void seal(Slot &slot) noexcept
{
    slot.due = false;
    if (slot.timer.timer_set) {
        ngx_del_timer(&slot.timer);
    }
    if (slot.batch != nullptr && slot.batch->command.elements() > 0) {
        dispatch(std::move(slot.batch));
    }
    slot.batch.reset();
}

void on_delay(ngx_event_t *ev) noexcept
{
    seal(*static_cast<Slot *>(ev->data));
}

void on_flush(ngx_event_t *) noexcept
{
    std::vector<std::unique_ptr<Batch>> ready;
    ready.swap(sealed);
    for (auto &batch : ready) {
        dispatch(std::move(batch));
    }
    for (auto &slot : slots) {
        if (slot->due) {
            seal(*slot);
        }
    }
}

void post_flush() noexcept
{
    if (!flush_event_ready) {
        flush_event.handler = on_flush;
        flush_event.data = &ngx_http_recording_no_connection;
        flush_event.log = ngx_cycle->log;
        flush_event_ready = true;
    }
    if (!flush_event.posted) {
        ngx_post_event(&flush_event, &ngx_posted_events);
    }
}

// Carries out the policy's verdict on the open batch an element just
// joined. `sealed` has room for it already: nothing here may fail.
void on_joined(Slot &slot) noexcept
{
    Batch &batch = *slot.batch;
    recording::OpenBatch joined;
    joined.elements = batch.command.elements();
    joined.bytes = batch.command.size();
    joined.in_flight = slot.in_flight;
    joined.delay_armed = slot.timer.timer_set;
    joined.over_pending = pending.over();
    recording::JoinVerdict verdict = recording::after_join(slot.limits, joined);
    switch (verdict) {
    case recording::JoinVerdict::spool_now:
    case recording::JoinVerdict::seal_now:
        if (slot.timer.timer_set) {
            ngx_del_timer(&slot.timer);
        }
        slot.due = false;
        batch.to_spool = verdict == recording::JoinVerdict::spool_now;
        sealed.push_back(std::move(slot.batch));
        post_flush();
        break;
    case recording::JoinVerdict::seal_at_end_of_pass:
        slot.due = true;
        post_flush();
        break;
    case recording::JoinVerdict::arm_delay:
        ngx_add_timer(&slot.timer, slot.limits.delay_ms);
        break;
    case recording::JoinVerdict::wait_for_reply:
        break;
    }
}

Slot &slot_for(ngx_http_recording_loc_conf_t *conf, std::string_view key)
{
    for (auto &slot : slots) {
        if (slot->server == conf->redis && slot->key == key) {
            return *slot;
        }
    }
    auto slot = std::make_unique<Slot>();
    slot->server = conf->redis;
    slot->key.assign(key);
    slot->limits = {conf->batch_elements, conf->batch_size, conf->batch_delay};
    slot->timer.handler = on_delay;
    slot->timer.data = slot.get();
    slot->timer.log = ngx_cycle->log;
    slots.push_back(std::move(slot));
    return *slots.back();
}

}  // namespace

bool ngx_http_recording_queue_push(ngx_http_recording_loc_conf_t *conf, std::string_view key,
                                   const recording::QueueElement &element, std::unique_ptr<char[]> document,
                                   size_t capacity, ngx_http_recording_waiter_t *waiter) noexcept
{
    try {
        bool spool = ngx_http_recording_spool_enabled();
        if (!spool) {
            if (!pending.admits(element.size())) {
                ngx_http_recording_count(&ngx_http_recording_stats_t::pending_limit_refusals);
                return false;
            }
            if (!conf->redis->route->available()) {
                return false;
            }
        }

        // Every allocation first: once the element is in, nothing may fail.
        sealed.reserve(sealed.size() + 1);
        Slot &slot = slot_for(conf, key);
        if (slot.batch == nullptr) {
            slot.batch = new_batch(conf->redis, key, {conf->redis_connect_timeout, conf->redis_read_timeout});
            slot.batch->slot = &slot;
        }
        Batch &batch = *slot.batch;
        size_t before = batch.command.size();
        batch.waiters.push_back(waiter);
        try {
            if (document != nullptr && element.size() >= recording::RpushBuilder::kReferFrom) {
                batch.command.add_keeping(element, std::move(document), capacity);
            } else {
                batch.command.add(element);
            }
        } catch (...) {
            batch.waiters.pop_back();
            throw;
        }
        size_t added = batch.command.size() - before;
        batch.held += added;
        pending.hold(added);
        ngx_http_recording_count(&ngx_http_recording_stats_t::pending_bytes,
                                 static_cast<ngx_atomic_int_t>(added));
        waiter->in_flight = true;

        on_joined(slot);
        return true;
    } catch (const std::exception &) {
        return false;
    }
}

void ngx_http_recording_queue_init_process(size_t limit) noexcept
{
    pending = recording::PendingMemory(limit);
}

void ngx_http_recording_queue_exit() noexcept
{
    for (auto &slot : slots) {
        if (slot->timer.timer_set) {
            ngx_del_timer(&slot->timer);
        }
    }
    if (flush_event.posted) {
        ngx_delete_posted_event(&flush_event);
    }
    slots.clear();
    sealed.clear();
    spares.clear();
}
