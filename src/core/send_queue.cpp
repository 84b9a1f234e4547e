#include "send_queue.h"

#include <utility>

namespace recording {

void SendQueue::append(std::string_view bytes, bool kept)
{
    if (bytes.empty()) {
        return;
    }
    if (kept && bytes.size() >= kBorrowFrom) {
        Chunk chunk;
        chunk.borrowed = bytes;
        chunks_.push_back(std::move(chunk));
    } else if (!chunks_.empty() && chunks_.back().is_copy()) {
        chunks_.back().copy.append(bytes);  // strong guarantee: unchanged if it throws
        copied_ += bytes.size();
    } else {
        Chunk chunk;
        chunk.copy.swap(spare_);
        chunk.copy.assign(bytes.data(), bytes.size());
        chunks_.push_back(std::move(chunk));  // if this throws, the buffer is lost, not the bytes
        copied_ += bytes.size();
    }
    size_ += bytes.size();
}

void SendQueue::append(const std::string_view* pieces, size_t count, bool kept)
{
    size_t chunks = chunks_.size();
    size_t tail = chunks != 0 && chunks_.back().is_copy() ? chunks_.back().copy.size() : 0;
    size_t size = size_;
    uint64_t copied = copied_;
    try {
        for (size_t i = 0; i < count; i++) {
            append(pieces[i], kept);
        }
    } catch (...) {
        while (chunks_.size() > chunks) {
            chunks_.pop_back();
        }
        if (chunks != 0 && chunks_.back().is_copy()) {
            chunks_.back().copy.resize(tail);
        }
        size_ = size;
        copied_ = copied;
        throw;
    }
}

void SendQueue::splice(SendQueue &other)
{
    for (Chunk &chunk : other.chunks_) {
        chunks_.push_back(std::move(chunk));
    }
    size_ += other.size_;
    other.chunks_.clear();
    other.size_ = 0;
}

std::string_view SendQueue::front() const noexcept
{
    if (chunks_.empty()) {
        return {};
    }
    const Chunk &chunk = chunks_.front();
    return chunk.bytes().substr(chunk.written);
}

void SendQueue::consume(size_t n) noexcept
{
    size_ -= n;
    Chunk &chunk = chunks_.front();
    chunk.written += n;
    size_t total = chunk.bytes().size();
    if (chunk.written == total) {
        if (chunk.is_copy()) {
            chunk.copy.clear();  // keeps its capacity
            spare_.swap(chunk.copy);
        }
        chunks_.pop_front();
    } else if (chunk.is_copy() && chunk.written >= kCompactAt && chunk.written * 2 >= total) {
        chunk.copy.erase(0, chunk.written);
        chunk.written = 0;
    }
}

void SendQueue::clear() noexcept
{
    chunks_.clear();
    size_ = 0;
}

}  // namespace recording
