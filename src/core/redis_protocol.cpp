#include "redis_protocol.h"

#include "enrichment.h"

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
    return std::string(builder.command());
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
}

void RpushBuilder::add(const QueueElement& element)
{
    append_length(buffer_, '$', element.size());
    element.append_to(buffer_);
    buffer_ += "\r\n";
    elements_++;
}

std::string_view RpushBuilder::command()
{
    std::string header;
    append_length(header, '*', elements_ + 2);
    append_bulk(header, "RPUSH");
    append_bulk(header, key_);
    size_t start = room_ - header.size();
    buffer_.replace(start, header.size(), header);
    return std::string_view(buffer_).substr(start);
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
