#include "redis_protocol.h"

#include "enrichment.h"

#include <cstdint>
#include <utility>

namespace recording {

namespace {

void append_length(std::string& out, char prefix, size_t n)
{
    out += prefix;
    out += std::to_string(n);
    out += "\r\n";
}

void append_bulk(std::string& out, std::string_view arg)
{
    append_length(out, '$', arg.size());
    out.append(arg);
    out += "\r\n";
}

}  // namespace

std::string queue_key(unsigned shard)
{
    return "recording:queue:" + std::to_string(shard);
}

std::string format_rpush(std::string_view key, const QueueElement& element)
{
    // One RESP encoder for RPUSH: the builder the queue uses, with one element.
    RpushBuilder builder;
    builder.reset(key);
    builder.add(element);
    return builder.joined();
}

std::string site_key(std::string_view site_id)
{
    std::string key = "recording:site:";
    key.append(site_id);
    return key;
}

void RpushBuilder::reset(std::string_view key)
{
    key_.assign(key);
    // "*<count>\r\n$5\r\nRPUSH\r\n$<len>\r\n<key>\r\n", with room for any count.
    room_ = 1 + 20 + 2 + 11 + 1 + 20 + 2 + key.size() + 2;
    buffer_.assign(room_, ' ');
    elements_ = 0;
    referred_ = 0;
    referred_slices_.clear();
    documents_.clear();
}

void RpushBuilder::add(const QueueElement& element)
{
    append_element(element, nullptr, 0);
}

void RpushBuilder::add_keeping(const QueueElement& element, std::unique_ptr<char[]> document, size_t capacity)
{
    documents_.reserve(documents_.size() + 1);
    append_element(element, document.get(), capacity);
    documents_.push_back(std::move(document));  // room reserved: cannot throw
}

void RpushBuilder::append_element(const QueueElement& element, const char* kept, size_t capacity)
{
    auto inside_kept = [&](std::string_view slice) {
        auto begin = reinterpret_cast<uintptr_t>(kept);
        auto at = reinterpret_cast<uintptr_t>(slice.data());
        return kept != nullptr && at >= begin && at - begin <= capacity && slice.size() <= capacity - (at - begin);
    };
    size_t buffer_size = buffer_.size();
    size_t referred_count = referred_slices_.size();
    size_t referred = referred_;
    try {
        referred_slices_.reserve(referred_count + element.slice_count());
        append_length(buffer_, '$', element.size());
        for (size_t i = 0; i < element.slice_count(); i++) {
            std::string_view slice = element.slice(i);
            if (slice.size() >= kReferFrom && inside_kept(slice)) {
                referred_slices_.push_back({buffer_.size(), slice});
                referred_ += slice.size();
            } else {
                buffer_.append(slice);
            }
        }
        buffer_ += "\r\n";
    } catch (...) {
        // A part of an element would make the command wrong: none of it.
        buffer_.resize(buffer_size);
        referred_slices_.resize(referred_count);
        referred_ = referred;
        throw;
    }
    elements_++;
}

const std::vector<std::string_view>& RpushBuilder::pieces()
{
    std::string header;
    append_length(header, '*', elements_ + 2);
    append_bulk(header, "RPUSH");
    append_bulk(header, key_);
    size_t start = room_ - header.size();
    buffer_.replace(start, header.size(), header);

    pieces_.clear();
    std::string_view buffer(buffer_);
    size_t from = start;
    for (const Referred& slice : referred_slices_) {
        if (slice.at > from) {
            pieces_.push_back(buffer.substr(from, slice.at - from));
        }
        pieces_.push_back(slice.bytes);
        from = slice.at;
    }
    pieces_.push_back(buffer.substr(from));
    return pieces_;
}

std::string RpushBuilder::joined()
{
    const std::vector<std::string_view>& all = pieces();
    return join_pieces(all.data(), all.size());
}

std::string join_pieces(const std::string_view* pieces, size_t count)
{
    size_t size = 0;
    for (size_t i = 0; i < count; i++) {
        size += pieces[i].size();
    }
    std::string out;
    out.reserve(size);
    for (size_t i = 0; i < count; i++) {
        out.append(pieces[i]);
    }
    return out;
}

std::string format_site_lookup(std::string_view site_id)
{
    return format_command({"HMGET", site_key(site_id), "enabled", "sample_rate", "daily_sessions",
                           "daily_sessions_pace"});
}

std::string format_command(std::initializer_list<std::string_view> args)
{
    std::string out;
    append_length(out, '*', args.size());
    for (std::string_view arg : args) {
        append_bulk(out, arg);
    }
    return out;
}

}  // namespace recording
