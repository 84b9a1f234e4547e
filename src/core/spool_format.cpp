#include "spool_format.h"

#include <zlib.h>

namespace recording::spool {

namespace {

constexpr std::string_view kMagic = "RECSPOOL";
constexpr uint32_t kVersion = 1;

void put_le(std::string& out, uint64_t value, size_t bytes)
{
    for (size_t i = 0; i < bytes; i++) {
        out += static_cast<char>((value >> (8 * i)) & 0xFF);
    }
}

uint64_t get_le(std::string_view in, size_t at, size_t bytes)
{
    uint64_t value = 0;
    for (size_t i = 0; i < bytes; i++) {
        value |= static_cast<uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
    }
    return value;
}

uint32_t crc(uint32_t running, std::string_view bytes)
{
    return static_cast<uint32_t>(
        crc32(running, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

}  // namespace

std::string file_header()
{
    std::string header(kMagic);
    put_le(header, kVersion, 4);
    put_le(header, 0, 4);
    put_le(header, kFileHeaderSize, 8);
    return header;
}

bool read_file_header(std::string_view header, uint64_t* replayed_offset)
{
    if (header.size() < kFileHeaderSize || header.substr(0, kMagic.size()) != kMagic
        || get_le(header, 8, 4) != kVersion)
    {
        return false;
    }
    *replayed_offset = get_le(header, kReplayedOffsetAt, 8);
    return *replayed_offset >= kFileHeaderSize;
}

std::string encode_offset(uint64_t offset)
{
    std::string out;
    put_le(out, offset, 8);
    return out;
}

std::string record_prefix(const Record& record)
{
    std::string payload_start;
    put_le(payload_start, record.elements, 4);
    put_le(payload_start, record.server.size(), 2);
    payload_start.append(record.server);
    put_le(payload_start, record.key.size(), 2);
    payload_start.append(record.key);

    uint32_t checksum = crc(crc(0, payload_start), record.command);
    std::string prefix;
    put_le(prefix, payload_start.size() + record.command.size(), 4);
    put_le(prefix, checksum, 4);
    return prefix + payload_start;
}

ReadStatus record_size(std::string_view header, size_t* size)
{
    if (header.size() < kRecordHeaderSize) {
        return ReadStatus::incomplete;
    }
    uint64_t payload = get_le(header, 0, 4);
    if (payload > kMaxPayload || payload < 4 + 2 + 2) {
        return ReadStatus::corrupt;
    }
    *size = kRecordHeaderSize + payload;
    return ReadStatus::ok;
}

ReadStatus parse_record(std::string_view bytes, Record* record)
{
    size_t size;
    ReadStatus status = record_size(bytes, &size);
    if (status != ReadStatus::ok) {
        return status;
    }
    if (bytes.size() < size) {
        return ReadStatus::incomplete;
    }
    std::string_view payload = bytes.substr(kRecordHeaderSize, size - kRecordHeaderSize);
    if (crc(0, payload) != get_le(bytes, 4, 4)) {
        return ReadStatus::corrupt;
    }
    size_t at = 0;
    record->elements = static_cast<uint32_t>(get_le(payload, at, 4));
    at += 4;
    size_t server_len = get_le(payload, at, 2);
    at += 2;
    if (at + server_len + 2 > payload.size()) {
        return ReadStatus::corrupt;
    }
    record->server = payload.substr(at, server_len);
    at += server_len;
    size_t key_len = get_le(payload, at, 2);
    at += 2;
    if (at + key_len > payload.size()) {
        return ReadStatus::corrupt;
    }
    record->key = payload.substr(at, key_len);
    at += key_len;
    record->command = payload.substr(at);
    return ReadStatus::ok;
}

}  // namespace recording::spool
