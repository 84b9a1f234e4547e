#include "spool_replay.h"

namespace recording::spool {

void ReplayWindow::start(uint64_t acknowledged) noexcept
{
    next_ = acknowledged;
    acknowledged_ = acknowledged;
    failed_ = false;
    sent_.clear();
    bytes_in_flight_ = 0;
    generation_++;
}

void ReplayWindow::stop() noexcept
{
    sent_.clear();
    bytes_in_flight_ = 0;
    generation_++;
}

bool ReplayWindow::has_room() const noexcept
{
    return !failed_ && sent_.size() < limits_.records && bytes_in_flight_ < limits_.bytes;
}

uint64_t ReplayWindow::sent(size_t size, uint32_t elements)
{
    uint64_t end = next_ + size;
    sent_.push_back({end, size, elements, State::waiting});
    bytes_in_flight_ += size;
    next_ = end;
    return end;
}

void ReplayWindow::fail() noexcept
{
    failed_ = true;
}

ReplayWindow::Answer ReplayWindow::answer(unsigned generation, uint64_t end, bool taken)
{
    Answer answer;
    if (generation != generation_) {
        return answer;
    }
    answer.current = true;
    for (Sent& sent : sent_) {
        if (sent.end == end) {
            bytes_in_flight_ -= sent.size;
            sent.state = taken ? State::taken : State::refused;
            answer.elements = sent.elements;
            break;
        }
    }
    if (!taken) {
        failed_ = true;
    }
    answer.advanced = acknowledge_taken();
    return answer;
}

// Moves the acknowledged offset over the records taken at the front.
bool ReplayWindow::acknowledge_taken() noexcept
{
    uint64_t before = acknowledged_;
    while (!sent_.empty() && sent_.front().state == State::taken) {
        acknowledged_ = sent_.front().end;
        sent_.pop_front();
    }
    return acknowledged_ != before;
}

bool ReplayWindow::waiting_for_replies() const noexcept
{
    for (const Sent& sent : sent_) {
        if (sent.state == State::waiting) {
            return true;
        }
    }
    return false;
}

ReplayWindow::Next ReplayWindow::after_sending(bool stopping) const noexcept
{
    if (waiting_for_replies()) {
        return Next::wait;
    }
    if (failed_ || stopping) {
        return Next::stop;
    }
    // Answered but not acknowledged: only a refused record holds the front,
    // and that failed the replay above.
    if (!sent_.empty()) {
        return Next::wait;
    }
    return Next::finish;
}

bool ReplayWindow::replayed(uint64_t file_size) const noexcept
{
    return sent_.empty() && acknowledged_ == next_ && file_size <= next_;
}

}  // namespace recording::spool
