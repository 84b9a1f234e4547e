// The disk spool's file format. A spool file is a header, then records
// appended one after another, each holding one RPUSH command as it would
// have gone to Redis:
//
//   file header (24 bytes): "RECSPOOL", u32 version, u32 zero,
//                           u64 offset up to which records were replayed
//   record: u32 payload length, u32 CRC-32 of the payload, then the payload:
//           u32 element count, u16 server length, server, u16 key length,
//           key, the command (the rest)
//
// Integers are little-endian. A record cut short by a crash fails its
// length or its CRC and ends the file there: it was never acknowledged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace recording::spool {

constexpr size_t kFileHeaderSize = 24;
constexpr size_t kReplayedOffsetAt = 16;  // where the file header keeps it
constexpr size_t kRecordHeaderSize = 8;
// A record larger than this is taken for garbage.
constexpr uint32_t kMaxPayload = 1u << 30;

struct Record {
    std::string_view server;  // the `recording_redis` it was meant for
    std::string_view key;
    uint32_t elements = 0;
    std::string_view command;
};

// A new file's header, nothing replayed yet.
std::string file_header();

// The replayed offset from a file header; false if it is not one of ours.
bool read_file_header(std::string_view header, uint64_t* replayed_offset);

// The 8 bytes that go at kReplayedOffsetAt.
std::string encode_offset(uint64_t offset);

// Everything of a record but its command, which follows it on disk: the
// caller writes both with one writev(), so the command is not copied.
std::string record_prefix(const Record& record);

enum class ReadStatus { ok, incomplete, corrupt };

// How long the record starting with these 8 bytes is, header included.
ReadStatus record_size(std::string_view header, size_t* size);

// A whole record (header and payload), checked.
ReadStatus parse_record(std::string_view bytes, Record* record);

}  // namespace recording::spool
