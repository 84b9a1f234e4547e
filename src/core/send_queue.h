// The bytes a connection has yet to write, in order: small commands copied
// together, so that many go out in one write, and large ones the caller
// keeps (an RPUSH of a snapshot, until its reply) referred to where they
// are rather than copied. A 700 KB snapshot's RPUSH was copied once more
// here: 3.5% of the worker's CPU on that batch (`scripts/bench
// --profile-only`), and 2.78 documents of RSS per snapshot held while Redis
// stalls instead of 1.04 (t/181-pending-memory.t).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

namespace recording {

class SendQueue {
public:
    // Bytes kept by their owner from this size on are referred to, not
    // copied: below it a copy costs less than the extra write it saves.
    static constexpr size_t kBorrowFrom = 16 * 1024;
    // A copied chunk that has been written this far, and at least half of
    // it, is cut to what is left: memory is let go of while a slow server
    // reads, without moving bytes at every write.
    static constexpr size_t kCompactAt = 1024 * 1024;

    // Queues `bytes` after what is queued. `kept`: the caller keeps them
    // unchanged until they are written or clear() is called, so that from
    // kBorrowFrom on they need not be copied. May throw std::bad_alloc,
    // and then queues nothing.
    void append(std::string_view bytes, bool kept);
    // The pieces of one command, in order: all of them, or (when it throws)
    // none.
    void append(const std::string_view* pieces, size_t count, bool kept);

    // Moves everything `other` holds to the end of this queue, in order.
    void splice(SendQueue &other);

    // The next bytes to write, in one piece (empty when nothing is queued).
    std::string_view front() const noexcept;

    // `n` bytes of front() were written.
    void consume(size_t n) noexcept;

    bool empty() const noexcept { return chunks_.empty(); }
    size_t size() const noexcept { return size_; }
    void clear() noexcept;

    // Bytes copied into the queue since it was made: what its tests count.
    uint64_t copied_bytes() const noexcept { return copied_; }

private:
    struct Chunk {
        std::string copy;          // the bytes, when copied
        std::string_view borrowed; // else where they are
        size_t written = 0;        // of the chunk's bytes
        bool is_copy() const noexcept { return borrowed.data() == nullptr; }
        std::string_view bytes() const noexcept { return is_copy() ? std::string_view(copy) : borrowed; }
    };

    std::deque<Chunk> chunks_;
    std::string spare_;  // a written copy's buffer, for the next copies
    size_t size_ = 0;    // not yet written
    uint64_t copied_ = 0;
};

}  // namespace recording
