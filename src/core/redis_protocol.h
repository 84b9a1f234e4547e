// The Redis commands of the ingest path, encoded in RESP. Keys follow
// CONTRACT.md.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace recording {

class QueueElement;

// recording:queue:<shard>
std::string queue_key(unsigned shard);

// RPUSH <key> <element>: one element, as RpushBuilder encodes it.
std::string format_rpush(std::string_view key, const QueueElement& element);

// RPUSH <key> <e1> ... <en>, built an element at a time as batches are
// accepted. The elements go straight into one buffer; the header, whose
// count is known last, is written into room kept for it at the front, so
// nothing is copied twice.
class RpushBuilder {
public:
    RpushBuilder() = default;

    // Starts over for `key`, keeping the buffer's capacity.
    void reset(std::string_view key);
    void add(const QueueElement& element);

    size_t elements() const noexcept { return elements_; }
    // The bytes the elements take so far (what a worker holds for Redis).
    size_t size() const noexcept { return buffer_.size() - room_; }

    // The whole command; valid until the next reset() or add().
    std::string_view command();

private:
    std::string key_;
    std::string buffer_;
    size_t room_ = 0;
    size_t elements_ = 0;
};

// recording:site:<site_id>
std::string site_key(std::string_view site_id);

// HMGET recording:site:<site_id> enabled sample_rate daily_sessions daily_sessions_pace
std::string format_site_lookup(std::string_view site_id);

// A command of plain arguments (AUTH, SELECT, PING, ...).
std::string format_command(std::initializer_list<std::string_view> args);

}  // namespace recording
