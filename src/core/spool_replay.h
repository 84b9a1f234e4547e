// The spool replay's bookkeeping: which records read from the spool file
// are with Redis, which Redis answered, and up to where the file is
// replayed. The glue reads the file and sends; this decides how much may
// be in flight, what a reply means and what the replay does next.
//
// Records go out in file order, several at a time, within a window bounded
// in records and in bytes. Replies may come in any order (a cluster sends
// to several nodes), but the acknowledged offset, where a replay cut short
// resumes, only moves over the records Redis took from the front: one
// still waiting, or refused, holds it back. A refused record (or one that
// could not be sent) fails the replay: nothing more goes out, and once the
// replies in flight are in, the replay stops; a later one resumes at the
// acknowledged offset, sending again what followed the refused record.
//
// Each replay has a generation: replies to an earlier one (stopped while
// they were in flight) are ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace recording::spool {

class ReplayWindow {
public:
    struct Limits {
        size_t records;  // sent and not yet acknowledged
        size_t bytes;    // sent and not yet answered: none goes out at or over it
    };

    explicit ReplayWindow(Limits limits) noexcept : limits_(limits) {}

    // A replay of a file whose records before `acknowledged` Redis has.
    void start(uint64_t acknowledged) noexcept;

    // Ends the replay: replies still in flight belong to a generation gone.
    void stop() noexcept;

    unsigned generation() const noexcept { return generation_; }
    uint64_t next() const noexcept { return next_; }  // where the next record to send starts
    uint64_t acknowledged() const noexcept { return acknowledged_; }
    bool failed() const noexcept { return failed_; }

    // Whether another record may be sent now.
    bool has_room() const noexcept;

    // The record at next(), `size` bytes holding `elements` elements, went
    // out. Returns where it ends: what its reply names it by.
    uint64_t sent(size_t size, uint32_t elements);

    // The record at next() could not be sent: the rest waits for a later
    // replay.
    void fail() noexcept;

    struct Answer {
        bool current = false;   // false: a reply to an earlier replay, ignored
        uint32_t elements = 0;  // of the record answered
        bool advanced = false;  // acknowledged() moved: keep it in the file
    };

    // Redis answered the record ending at `end`, sent in `generation`: it
    // took it, or not (refused, or no reply came).
    Answer answer(unsigned generation, uint64_t end, bool taken);

    enum class Next {
        wait,    // replies are due: each one resumes the replay
        stop,    // failed, or the worker stops: a later replay resumes
        finish,  // everything read is acknowledged: see replayed()
    };

    // What the replay does once it sent what it could.
    Next after_sending(bool stopping) const noexcept;

    // Whether a file of `file_size` bytes is all in Redis: it may go.
    bool replayed(uint64_t file_size) const noexcept;

private:
    enum class State { waiting, taken, refused };
    struct Sent {
        uint64_t end;
        size_t size;
        uint32_t elements;
        State state;
    };

    bool waiting_for_replies() const noexcept;
    bool acknowledge_taken() noexcept;

    Limits limits_;
    uint64_t next_ = 0;
    uint64_t acknowledged_ = 0;
    bool failed_ = false;
    unsigned generation_ = 0;
    size_t bytes_in_flight_ = 0;
    std::deque<Sent> sent_;  // in file order, from acknowledged_ on
};

}  // namespace recording::spool
