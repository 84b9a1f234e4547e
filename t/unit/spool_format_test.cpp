#include <gtest/gtest.h>

#include <string>

#include <zlib.h>

#include "spool_format.h"

using namespace recording::spool;

namespace {

std::string encode(const Record& record)
{
    return record_prefix(record) + std::string(record.command);
}

Record sample()
{
    Record record;
    record.server = "127.0.0.1:6379";
    record.key = "recording:queue:3";
    record.elements = 2;
    record.command = "*4\r\n$5\r\nRPUSH\r\n$17\r\nrecording:queue:3\r\n$1\r\na\r\n$1\r\nb\r\n";
    return record;
}

}  // namespace

TEST(SpoolFileHeader, NewFileHasNothingReplayed)
{
    std::string header = file_header();
    ASSERT_EQ(header.size(), kFileHeaderSize);
    EXPECT_EQ(header.substr(0, 8), "RECSPOOL");
    uint64_t offset = 0;
    ASSERT_TRUE(read_file_header(header, &offset));
    EXPECT_EQ(offset, kFileHeaderSize);
}

TEST(SpoolFileHeader, ReplayedOffsetIsRewrittenInPlace)
{
    std::string header = file_header();
    header.replace(kReplayedOffsetAt, 8, encode_offset(123456789012ull));
    uint64_t offset = 0;
    ASSERT_TRUE(read_file_header(header, &offset));
    EXPECT_EQ(offset, 123456789012ull);
}

TEST(SpoolFileHeader, RejectsOtherFilesAndShortOnes)
{
    uint64_t offset;
    EXPECT_FALSE(read_file_header("", &offset));
    EXPECT_FALSE(read_file_header(file_header().substr(0, 23), &offset));
    std::string other = file_header();
    other[0] = 'X';
    EXPECT_FALSE(read_file_header(other, &offset));
    std::string version2 = file_header();
    version2[8] = 2;
    EXPECT_FALSE(read_file_header(version2, &offset));
    std::string before_records = file_header();
    before_records.replace(kReplayedOffsetAt, 8, encode_offset(3));
    EXPECT_FALSE(read_file_header(before_records, &offset));
}

TEST(SpoolRecord, RoundTrips)
{
    std::string bytes = encode(sample());
    size_t size = 0;
    ASSERT_EQ(record_size(bytes, &size), ReadStatus::ok);
    EXPECT_EQ(size, bytes.size());
    Record record;
    ASSERT_EQ(parse_record(bytes, &record), ReadStatus::ok);
    EXPECT_EQ(record.server, sample().server);
    EXPECT_EQ(record.key, sample().key);
    EXPECT_EQ(record.elements, 2u);
    EXPECT_EQ(record.command, sample().command);
}

TEST(SpoolRecord, BinaryCommandAndEmptyNames)
{
    Record in;
    in.command = std::string_view("\0\xFF\r\n", 4);
    std::string bytes = encode(in);
    Record out;
    ASSERT_EQ(parse_record(bytes, &out), ReadStatus::ok);
    EXPECT_EQ(out.server, "");
    EXPECT_EQ(out.key, "");
    EXPECT_EQ(out.command, std::string_view("\0\xFF\r\n", 4));
}

TEST(SpoolRecord, ReadsOneRecordOfSeveral)
{
    std::string bytes = encode(sample()) + encode(sample());
    Record record;
    size_t size = 0;
    ASSERT_EQ(record_size(bytes, &size), ReadStatus::ok);
    // The record's views point into what was parsed: views of `bytes`.
    std::string_view all(bytes);
    ASSERT_EQ(parse_record(all.substr(0, size), &record), ReadStatus::ok);
    ASSERT_EQ(parse_record(all.substr(size), &record), ReadStatus::ok);
    EXPECT_EQ(record.key, sample().key);
}

TEST(SpoolRecord, ATornTailIsIncompleteAtEveryCut)
{
    std::string bytes = encode(sample());
    for (size_t cut = 0; cut < bytes.size(); cut++) {
        Record record;
        EXPECT_EQ(parse_record(bytes.substr(0, cut), &record), ReadStatus::incomplete) << cut;
    }
}

TEST(SpoolRecord, AnyFlippedByteOfThePayloadIsCorrupt)
{
    std::string bytes = encode(sample());
    for (size_t i = kRecordHeaderSize; i < bytes.size(); i++) {
        std::string damaged = bytes;
        damaged[i] = static_cast<char>(damaged[i] ^ 0x20);
        Record record;
        EXPECT_EQ(parse_record(damaged, &record), ReadStatus::corrupt) << i;
    }
}

TEST(SpoolRecord, ImpossibleLengthsAreCorrupt)
{
    size_t size;
    EXPECT_EQ(record_size(std::string("\xFF\xFF\xFF\xFF\0\0\0\0", 8), &size), ReadStatus::corrupt);
    EXPECT_EQ(record_size(std::string("\x03\0\0\0\0\0\0\0", 8), &size), ReadStatus::corrupt);
    EXPECT_EQ(record_size("abc", &size), ReadStatus::incomplete);
}

TEST(SpoolRecord, NameLengthsBeyondThePayloadAreCorrupt)
{
    // A payload whose server length claims more than it holds, under a
    // correct length and CRC: only the inner length is wrong.
    std::string payload = encode(sample()).substr(kRecordHeaderSize);
    payload[4] = static_cast<char>(0xFF);
    payload[5] = static_cast<char>(0xFF);
    uLong checksum = crc32(0, reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size()));
    std::string header;
    for (int i = 0; i < 4; i++) {
        header += static_cast<char>((payload.size() >> (8 * i)) & 0xFF);
    }
    for (int i = 0; i < 4; i++) {
        header += static_cast<char>((checksum >> (8 * i)) & 0xFF);
    }
    Record record;
    EXPECT_EQ(parse_record(header + payload, &record), ReadStatus::corrupt);
}
