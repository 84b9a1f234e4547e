#include "sampling.h"

#include <zlib.h>

#include <cmath>

namespace recording {

uint32_t session_bucket(std::string_view site_id, std::string_view session_id) noexcept
{
    auto feed = [](uLong crc, std::string_view bytes) {
        return crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size()));
    };
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = feed(crc, site_id);
    crc = feed(crc, ":");
    crc = feed(crc, session_id);
    return static_cast<uint32_t>(crc);
}

bool is_sampled_in(uint32_t bucket, double sample_rate) noexcept
{
    double threshold = std::floor(sample_rate * 10000 + 0.5);
    return static_cast<double>(bucket % 10000) < threshold;
}

unsigned queue_shard(uint32_t bucket, unsigned shards) noexcept
{
    return shards == 0 ? 0 : bucket % shards;
}

}  // namespace recording
