// The Redis commands of the ingest path, encoded in RESP. Keys follow
// CONTRACT.md.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "send_queue.h"

namespace recording {

// The pieces of a command in one string (a copy).
std::string join_pieces(const std::string_view* pieces, size_t count);

class QueueElement;

// recording:queue:<shard>
std::string queue_key(unsigned shard);

// RPUSH <key> <element>: one element, as RpushBuilder encodes it.
std::string format_rpush(std::string_view key, const QueueElement& element);

// RPUSH <key> <e1> ... <en>, built an element at a time as batches are
// accepted. Small elements are copied into one buffer; the header, whose
// count is known last, is written into room kept for it at the front. A
// large element's document is kept instead (add_keeping): its large slices
// are referred to where the decoder left them, and the command is then a
// few pieces, written out in turn (the copy of a 700 KB snapshot here was
// 7.7% of the worker's CPU on it in `scripts/bench --profile-only`).
class RpushBuilder {
public:
    // Slices from this size on are referred to by add_keeping(), not copied:
    // what the Redis connection writes from where it is.
    static constexpr size_t kReferFrom = SendQueue::kBorrowFrom;

    RpushBuilder() = default;

    // Starts over for `key`, keeping the buffer's capacity; lets go of the
    // documents kept.
    void reset(std::string_view key);
    // Both leave the builder as it was when they throw (std::bad_alloc).
    void add(const QueueElement& element);
    // As add(), for an element whose document lies in `document`, of
    // `capacity` bytes (its decoder's buffer, handed over): kept until the
    // next reset().
    void add_keeping(const QueueElement& element, std::unique_ptr<char[]> document, size_t capacity);

    size_t elements() const noexcept { return elements_; }
    // The bytes the elements take so far (what a worker holds for Redis).
    size_t size() const noexcept { return buffer_.size() - room_ + referred_; }
    // Of which copied into the builder's buffer: what its tests count.
    size_t copied() const noexcept { return buffer_.size() - room_; }

    // The whole command, in order, in one piece or more; valid until the
    // next reset() or add().
    const std::vector<std::string_view>& pieces();
    // The whole command in one string (a copy: for the spool).
    std::string joined();

private:
    // `bytes`, kept elsewhere, come at buffer_[at] (before what follows).
    struct Referred {
        size_t at;
        std::string_view bytes;
    };

    void append_element(const QueueElement& element, const char* kept, size_t capacity);

    std::string key_;
    std::string buffer_;
    size_t room_ = 0;
    size_t elements_ = 0;
    size_t referred_ = 0;  // bytes in referred_slices_
    std::vector<Referred> referred_slices_;
    std::vector<std::unique_ptr<char[]>> documents_;
    std::vector<std::string_view> pieces_;
};

// recording:site:<site_id>
std::string site_key(std::string_view site_id);

// HMGET recording:site:<site_id> enabled sample_rate daily_sessions daily_sessions_pace
std::string format_site_lookup(std::string_view site_id);

// A command of plain arguments (AUTH, SELECT, PING, ...).
std::string format_command(std::initializer_list<std::string_view> args);

}  // namespace recording
