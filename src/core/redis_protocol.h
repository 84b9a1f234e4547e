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

// RPUSH <key> <element>
std::string format_rpush(std::string_view key, const QueueElement& element);

// recording:site:<site_id>
std::string site_key(std::string_view site_id);

// HMGET recording:site:<site_id> enabled sample_rate
std::string format_site_lookup(std::string_view site_id);

// A command of plain arguments (AUTH, SELECT, PING, ...).
std::string format_command(std::initializer_list<std::string_view> args);

}  // namespace recording
