#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "batch_validator.h"
#include "enrichment.h"
#include "redis_protocol.h"

using namespace recording;

TEST(QueueKey, IsRecordingQueueAndTheShard)
{
    EXPECT_EQ(queue_key(0), "recording:queue:0");
    EXPECT_EQ(queue_key(3), "recording:queue:3");
    EXPECT_EQ(queue_key(4294967295u), "recording:queue:4294967295");
}

TEST(FormatCommand, EncodesEveryArgumentAsABulkString)
{
    EXPECT_EQ(format_command({"PING"}), "*1\r\n$4\r\nPING\r\n");
    EXPECT_EQ(format_command({"SELECT", "3"}), "*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
    EXPECT_EQ(format_command({"AUTH", "user", "p a\r\nss"}),
              "*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$7\r\np a\r\nss\r\n");
}

TEST(FormatCommand, EmptyArgumentAndBinaryBytes)
{
    EXPECT_EQ(format_command({"ECHO", ""}), "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n");
    std::string binary("a\0b\xFF", 4);
    EXPECT_EQ(format_command({"ECHO", binary}), std::string("*2\r\n$4\r\nECHO\r\n$4\r\na\0b\xFF\r\n", 24));
}

TEST(FormatCommand, NoArguments)
{
    EXPECT_EQ(format_command({}), "*0\r\n");
}

TEST(FormatSiteLookup, IsHmgetOfTheSiteHashWithTheUriSiteId)
{
    EXPECT_EQ(format_site_lookup("007"),
              "*6\r\n$5\r\nHMGET\r\n$18\r\nrecording:site:007\r\n$7\r\nenabled\r\n$11\r\nsample_rate\r\n"
              "$14\r\ndaily_sessions\r\n$19\r\ndaily_sessions_pace\r\n");
    EXPECT_EQ(format_site_lookup("1234567890"),
              "*6\r\n$5\r\nHMGET\r\n$25\r\nrecording:site:1234567890\r\n$7\r\nenabled\r\n$11\r\nsample_rate\r\n"
              "$14\r\ndaily_sessions\r\n$19\r\ndaily_sessions_pace\r\n");
}

TEST(FormatRpush, PushesTheQueueElementToTheKey)
{
    std::string document = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}]})";
    ValidatedBatch batch = validate_batch(document, ValidationLimits{});
    ASSERT_TRUE(batch.valid);
    QueueElement element(document, batch, R"(,"_ingest":{})");
    std::string expected_element = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}],"_ingest":{}})";
    ASSERT_EQ(element.str(), expected_element);
    ASSERT_EQ(expected_element.size(), 75u);

    EXPECT_EQ(format_rpush(queue_key(3), element),
              "*3\r\n$5\r\nRPUSH\r\n$17\r\nrecording:queue:3\r\n$75\r\n" + expected_element + "\r\n");
}

TEST(FormatRpush, LengthCountsBytesOfTheWholeElement)
{
    // Multi-byte UTF-8 and a removed client `_ingest`: the length is of the
    // element as pushed.
    std::string document =
        "{\"_ingest\":1,\"session_id\":\"a\",\"seq\":0,\"page\":\"\xC3\xA9\",\"events\":[{\"type\":2,\"timestamp\":1}]}";
    ValidatedBatch batch = validate_batch(document, ValidationLimits{});
    ASSERT_TRUE(batch.valid);
    QueueElement element(document, batch, ",\"_ingest\":\"\xE2\x82\xAC\"");
    std::string pushed = element.str();
    EXPECT_EQ(pushed,
              "{\"session_id\":\"a\",\"seq\":0,\"page\":\"\xC3\xA9\",\"events\":[{\"type\":2,\"timestamp\":1}],"
              "\"_ingest\":\"\xE2\x82\xAC\"}");
    EXPECT_EQ(element.size(), pushed.size());
    EXPECT_EQ(format_rpush("k", element),
              "*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$" + std::to_string(pushed.size()) + "\r\n" + pushed + "\r\n");
}

namespace {

QueueElement element_of(const std::string& document, ValidatedBatch& batch)
{
    batch = validate_batch(document, ValidationLimits{});
    return QueueElement(document, batch, "");
}

const std::string kFirst = R"({"session_id":"a","seq":0,"events":[{"type":4,"timestamp":1}]})";
const std::string kSecond = R"({"session_id":"a","seq":1,"events":[{"type":3,"timestamp":2}]})";

}  // namespace

TEST(RpushBuilder, OneElementIsTheSameCommandAsFormatRpush)
{
    ValidatedBatch batch;
    QueueElement element = element_of(kFirst, batch);
    RpushBuilder builder;
    builder.reset("recording:queue:3");
    builder.add(element);
    EXPECT_EQ(builder.elements(), 1u);
    EXPECT_EQ(builder.joined(), format_rpush("recording:queue:3", element));
}

TEST(RpushBuilder, SeveralElementsInTheOrderAdded)
{
    ValidatedBatch first_batch, second_batch;
    QueueElement first = element_of(kFirst, first_batch);
    QueueElement second = element_of(kSecond, second_batch);
    RpushBuilder builder;
    builder.reset("k");
    builder.add(first);
    builder.add(second);
    builder.add(first);
    EXPECT_EQ(builder.elements(), 3u);
    ASSERT_EQ(kFirst.size(), 62u);
    ASSERT_EQ(kSecond.size(), 62u);
    EXPECT_EQ(builder.size(), 3 * (5 + 62 + 2));  // "$62\r\n", the element, "\r\n"
    EXPECT_EQ(builder.joined(),
              "*5\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$62\r\n" + kFirst + "\r\n$62\r\n" + kSecond + "\r\n$62\r\n" + kFirst
                  + "\r\n");
}

TEST(RpushBuilder, ResetStartsOverForAnotherKey)
{
    ValidatedBatch batch;
    QueueElement element = element_of(kFirst, batch);
    RpushBuilder builder;
    builder.reset("recording:queue:0");
    builder.add(element);
    builder.add(element);
    (void) builder.pieces();
    builder.reset("recording:queue:12");
    EXPECT_EQ(builder.elements(), 0u);
    EXPECT_EQ(builder.size(), 0u);
    builder.add(element);
    EXPECT_EQ(builder.joined(), format_rpush("recording:queue:12", element));
}

TEST(RpushBuilder, CountsOfManyDigitsFitTheRoomKept)
{
    std::string document = R"({"session_id":"a","seq":0,"events":[{"type":4,"timestamp":1}]})";
    ValidatedBatch batch;
    QueueElement element = element_of(document, batch);
    RpushBuilder builder;
    builder.reset("q");
    for (int i = 0; i < 12345; i++) {
        builder.add(element);
    }
    std::string command = builder.joined();
    EXPECT_EQ(command.substr(0, 29), "*12347\r\n$5\r\nRPUSH\r\n$1\r\nq\r\n$62");
    EXPECT_EQ(command.size(), 26 + 12345 * (5 + 62 + 2));
}

namespace {

// A large batch in a buffer of its own, as a decoder hands it over.
struct KeptDocument {
    std::unique_ptr<char[]> buffer;
    size_t capacity = 0;
    std::string_view document;
};

KeptDocument large_document(char filler)
{
    std::string text = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1,"data":")"
                       + std::string(3 * RpushBuilder::kReferFrom, filler) + R"("}]})";
    KeptDocument kept;
    kept.capacity = text.size() + 100;  // room past the document, as a decoder's
    kept.buffer.reset(new char[kept.capacity]);
    std::memcpy(kept.buffer.get(), text.data(), text.size());
    kept.document = std::string_view(kept.buffer.get(), text.size());
    return kept;
}

std::string joined_pieces(RpushBuilder& builder)
{
    std::string out;
    for (std::string_view piece : builder.pieces()) {
        out.append(piece);
    }
    return out;
}

}  // namespace

TEST(RpushBuilder, AKeptLargeDocumentIsReferredToNotCopied)
{
    KeptDocument kept = large_document('x');
    ValidatedBatch batch = validate_batch(kept.document, ValidationLimits{});
    ASSERT_TRUE(batch.valid);
    // An ingest member longer than kReferFrom, which the builder must copy:
    // it is gone once the element is added.
    auto ingest = std::make_unique<std::string>(",\"_ingest\":{\"user_agent\":\"" + std::string(20000, 'u') + "\"}");
    QueueElement element(kept.document, batch, *ingest);
    std::string expected = format_rpush("recording:queue:1", element);

    RpushBuilder builder;
    builder.reset("recording:queue:1");
    builder.add(QueueElement(kFirst, batch = validate_batch(kFirst, ValidationLimits{}), ""));
    std::string small = format_rpush("k", QueueElement(kFirst, batch, ""));
    const char* document_start = kept.document.data();
    builder.add_keeping(element, std::move(kept.buffer), kept.capacity);
    ingest->assign(ingest->size(), '?');  // the caller's ingest string changes, or is freed
    ingest.reset();

    // Copied: the small element, the length, the ingest member, the
    // document's last bytes ("}]}" after the insert point), "\r\n".
    EXPECT_LT(builder.copied(), 21000 + 200u);
    // Both elements, without the headers ("*3\r\n$5\r\nRPUSH\r\n$17\r\nrecording:queue:1\r\n", 39 bytes; 22 for "k").
    EXPECT_EQ(builder.size(), (expected.size() - 39) + (small.size() - 22));
    const std::vector<std::string_view>& pieces = builder.pieces();
    ASSERT_EQ(pieces.size(), 3u);  // header + small + length, the document, the rest
    EXPECT_EQ(pieces[1].data(), document_start);
    std::string command = joined_pieces(builder);
    EXPECT_EQ(command.substr(0, 4), "*4\r\n");
    EXPECT_NE(command.find(expected.substr(39)), std::string::npos);  // the large element as format_rpush has it
    EXPECT_EQ(builder.joined(), command);
}

TEST(RpushBuilder, KeptAndCopiedElementsInTheOrderAdded)
{
    KeptDocument first = large_document('a');
    KeptDocument second = large_document('b');
    ValidatedBatch b1 = validate_batch(first.document, ValidationLimits{});
    ValidatedBatch b2 = validate_batch(second.document, ValidationLimits{});
    ValidatedBatch b3 = validate_batch(kSecond, ValidationLimits{});
    QueueElement e1(first.document, b1, ",\"_ingest\":1");
    QueueElement e2(second.document, b2, ",\"_ingest\":2");
    QueueElement e3(kSecond, b3, "");

    RpushBuilder copied;
    copied.reset("k");
    copied.add(e1);
    copied.add(e3);
    copied.add(e2);
    copied.add(e3);

    RpushBuilder kept;
    kept.reset("k");
    kept.add_keeping(e1, std::move(first.buffer), first.capacity);
    kept.add(e3);
    kept.add_keeping(e2, std::move(second.buffer), second.capacity);
    kept.add(e3);
    EXPECT_EQ(kept.elements(), 4u);
    EXPECT_EQ(kept.size(), copied.size());
    EXPECT_EQ(kept.joined(), copied.joined());
    EXPECT_EQ(copied.pieces().size(), 1u);
    EXPECT_EQ(kept.pieces().size(), 5u);
    EXPECT_LT(kept.copied(), copied.copied() - 6 * RpushBuilder::kReferFrom);

    // Starting over lets the documents go; the builder is as new.
    kept.reset("k2");
    EXPECT_EQ(kept.size(), 0u);
    kept.add(e3);
    EXPECT_EQ(kept.joined(), format_rpush("k2", e3));
}

TEST(RpushBuilder, AnElementOutsideTheKeptBufferIsCopied)
{
    KeptDocument kept = large_document('x');
    std::string elsewhere(kept.document);  // the same bytes, in another buffer
    ValidatedBatch batch = validate_batch(elsewhere, ValidationLimits{});
    QueueElement element(elsewhere, batch, "");
    RpushBuilder builder;
    builder.reset("k");
    builder.add_keeping(element, std::move(kept.buffer), kept.capacity);
    EXPECT_EQ(builder.pieces().size(), 1u);
    EXPECT_EQ(builder.copied(), builder.size());
    EXPECT_EQ(builder.joined(), format_rpush("k", element));
}
