// Whole-session sampling, decided the same way by every server.
#pragma once

#include <cstdint>
#include <string_view>

namespace recording {

// CRC-32 (zlib's, nginx's ngx_crc32_long) of "<site_id>:<session_id>".
uint32_t session_bucket(std::string_view site_id, std::string_view session_id) noexcept;

// bucket % 10000 < floor(sample_rate * 10000 + 0.5), in IEEE doubles.
bool is_sampled_in(uint32_t bucket, double sample_rate) noexcept;

// The index n of the queue recording:queue:<n> a session's batches go to.
unsigned queue_shard(uint32_t bucket, unsigned shards) noexcept;

}  // namespace recording
