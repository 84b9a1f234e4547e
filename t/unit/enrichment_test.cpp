#include <gtest/gtest.h>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "batch_validator.h"
#include "enrichment.h"
#include "test_util.h"

using recording::append_json_string;
using recording::ingest_member;
using recording::IngestFields;
using recording::QueueElement;
using recording::validate_batch;
using recording::ValidatedBatch;

namespace {

const std::string kFffd = "\xEF\xBF\xBD";

std::string json_string(std::string_view bytes)
{
    std::string out;
    append_json_string(out, bytes);
    return out;
}

std::string fffd(int n)
{
    std::string out;
    for (int i = 0; i < n; i++) {
        out += kFffd;
    }
    return out;
}

// Parses strictly, as the storage workers would: RFC 8259, valid UTF-8.
bool parse_strict(const std::string& text, rapidjson::Document& doc)
{
    doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.c_str(), text.size());
    return !doc.HasParseError();
}

// Re-serializes a value compactly, to compare structures.
std::string compact(const rapidjson::Value& value)
{
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
    value.Accept(writer);
    return buffer.GetString();
}

IngestFields sample_fields()
{
    IngestFields fields;
    fields.site_id = "42";
    fields.received_at_ms = 1700000000123;
    fields.ip = "203.0.113.7";
    fields.user_agent = "Mozilla/5.0 (X11; Linux x86_64)";
    fields.country = "FR";
    fields.request_id = "0123456789abcdef0123456789abcdef";
    return fields;
}

const std::string kIngest = ingest_member(sample_fields());

// The queue element for `document`, which must be a valid batch.
std::string element(const std::string& document, std::string_view ingest = kIngest)
{
    ValidatedBatch batch = validate_batch(document, {});
    EXPECT_TRUE(batch.valid) << document;
    if (!batch.valid) {
        return {};
    }
    QueueElement queued(document, batch, ingest);
    std::string out = queued.str();
    EXPECT_EQ(queued.size(), out.size());
    return out;
}

size_t count_top_level(const rapidjson::Document& doc, const char* name)
{
    size_t n = 0;
    for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it) {
        if (std::string_view(it->name.GetString(), it->name.GetStringLength()) == name) {
            n++;
        }
    }
    return n;
}

const std::string kEvents = R"([{"type":2,"timestamp":1}])";

}  // namespace

// ---------------------------------------------------------------------------
// append_json_string

TEST(AppendJsonString, PlainTextIsQuoted)
{
    EXPECT_EQ(json_string(""), R"("")");
    EXPECT_EQ(json_string("abc 123"), R"("abc 123")");
}

TEST(AppendJsonString, AppendsToWhatIsThere)
{
    std::string out = "x:";
    append_json_string(out, "y");
    EXPECT_EQ(out, R"(x:"y")");
}

TEST(AppendJsonString, QuoteAndBackslashAreEscaped)
{
    EXPECT_EQ(json_string(R"(a"b\c)"), R"("a\"b\\c")");
    EXPECT_EQ(json_string(R"(\")"), R"("\\\"")");
}

TEST(AppendJsonString, ControlCharactersAreEscaped)
{
    EXPECT_EQ(json_string("\b\f\n\r\t"), R"("\b\f\n\r\t")");
    EXPECT_EQ(json_string(std::string("\0", 1)), R"("\u0000")");
    EXPECT_EQ(json_string("\x01\x0b\x0e\x1a\x1f"), R"("\u0001\u000b\u000e\u001a\u001f")");
    EXPECT_EQ(json_string(std::string("a\0b", 3)), R"("a\u0000b")");
}

TEST(AppendJsonString, DelSlashAndOtherAsciiPassThrough)
{
    EXPECT_EQ(json_string("\x7f"), "\"\x7f\"");
    EXPECT_EQ(json_string("/"), R"("/")");
    EXPECT_EQ(json_string("https://example.com/a?b=c&d='e'<f>"), R"("https://example.com/a?b=c&d='e'<f>")");
    std::string printable;
    for (int c = 0x20; c < 0x7f; c++) {
        if (c != '"' && c != '\\') {
            printable += static_cast<char>(c);
        }
    }
    EXPECT_EQ(json_string(printable), "\"" + printable + "\"");
}

TEST(AppendJsonString, ValidMultiByteUtf8PassesThrough)
{
    for (const char* text : {"\xC3\xA9", "\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80", "\xE2\x82\xAC", "\xED\x9F\xBF",
                             "\xEE\x80\x80", "\xEF\xBF\xBD", "\xEF\xBF\xBF", "\xF0\x90\x80\x80", "\xF0\x9F\x98\x80",
                             "\xF4\x8F\xBF\xBF", "na\xC3\xAFve caf\xC3\xA9 \xE2\x82\xAC" "5 \xF0\x9F\x98\x80"}) {
        EXPECT_EQ(json_string(text), std::string("\"") + text + "\"") << text;
    }
}

TEST(AppendJsonString, OverlongFormsBecomeOneReplacementPerByte)
{
    EXPECT_EQ(json_string("\xC0\xAF"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xC0\x80"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xC1\xBF"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xE0\x80"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xE0\x80\xAF"), "\"" + fffd(3) + "\"");
    EXPECT_EQ(json_string("\xF0\x80\x80"), "\"" + fffd(3) + "\"");
    EXPECT_EQ(json_string("\xF0\x80\x80\xAF"), "\"" + fffd(4) + "\"");
}

TEST(AppendJsonString, SurrogatesBecomeOneReplacementPerByte)
{
    EXPECT_EQ(json_string("\xED\xA0\x80"), "\"" + fffd(3) + "\"");
    EXPECT_EQ(json_string("\xED\xBF\xBF"), "\"" + fffd(3) + "\"");
}

TEST(AppendJsonString, TruncatedSequenceIsOneReplacement)
{
    EXPECT_EQ(json_string("\xF1\x80\x80"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xC3"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xE2\x82"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xF0\x9F\x98"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xC3" "a"), "\"" + fffd(1) + "a\"");
    EXPECT_EQ(json_string("\xE2\x82" "a"), "\"" + fffd(1) + "a\"");
    EXPECT_EQ(json_string("\xF0\x9F\x98" "\""), "\"" + fffd(1) + "\\\"\"");
    // A truncated sequence followed by a complete one.
    EXPECT_EQ(json_string("\xE2\x82\xC3\xA9"), "\"" + fffd(1) + "\xC3\xA9\"");
}

TEST(AppendJsonString, InvalidBytesAreOneReplacementEach)
{
    EXPECT_EQ(json_string("\x80"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xBF\x80"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xF5"), "\"" + fffd(1) + "\"");
    EXPECT_EQ(json_string("\xF5\x80\x80\x80"), "\"" + fffd(4) + "\"");
    EXPECT_EQ(json_string("\xFE\xFF"), "\"" + fffd(2) + "\"");
    EXPECT_EQ(json_string("\xF4\x90\x80\x80"), "\"" + fffd(4) + "\"");  // above U+10FFFF
    EXPECT_EQ(json_string("a\xFF" "b"), "\"a" + fffd(1) + "b\"");
}

TEST(AppendJsonString, UnicodeTable3_8Examples)
{
    // The Unicode Standard, chapter 3, "U+FFFD Substitution of Maximal Subparts".
    // Non-shortest forms:
    EXPECT_EQ(json_string("\xC0\xAF\xE0\x80\xBF\xF0\x81\x82\x41"), "\"" + fffd(8) + "A\"");
    // Ill-formed sequences for surrogates:
    EXPECT_EQ(json_string("\xED\xA0\x80\xED\xBF\xBF\xED\xAF\x41"), "\"" + fffd(8) + "A\"");
    // Other ill-formed sequences:
    EXPECT_EQ(json_string("\xF4\x91\x92\x93\xFF\x41\x80\xBF\x42"), "\"" + fffd(5) + "A" + fffd(2) + "B\"");
    // Truncated sequences:
    EXPECT_EQ(json_string("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41"), "\"" + fffd(4) + "A\"");
    // The mixed example: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
    EXPECT_EQ(json_string("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
              "\"a" + fffd(3) + "b" + fffd(1) + "c" + fffd(2) + "d\"");
}

TEST(AppendJsonString, OutputIsAlwaysValidJsonInValidUtf8)
{
    // Every byte value, and pseudo-random byte soups.
    std::vector<std::string> inputs;
    for (int b = 0; b < 256; b++) {
        inputs.emplace_back(1, static_cast<char>(b));
        inputs.push_back(std::string(1, static_cast<char>(b)) + "\x80\x80\x80");
    }
    uint32_t x = 12345;
    for (int i = 0; i < 2000; i++) {
        std::string s;
        for (int j = 0; j < 12; j++) {
            x = x * 1103515245u + 12345u;
            s += static_cast<char>((x >> 16) & 0xFF);
        }
        inputs.push_back(s);
    }
    for (const std::string& input : inputs) {
        std::string out = "[" + json_string(input) + "]";
        rapidjson::Document doc;
        ASSERT_TRUE(parse_strict(out, doc)) << rapidjson::GetParseError_En(doc.GetParseError());
    }
}

TEST(AppendJsonString, ValidTextRoundTrips)
{
    std::string text = "q\"b\\s/\n\t\x01 \xC3\xA9\xF0\x9F\x98\x80\x7f";
    rapidjson::Document doc;
    ASSERT_TRUE(parse_strict("[" + json_string(text) + "]", doc));
    EXPECT_EQ(std::string(doc[0].GetString(), doc[0].GetStringLength()), text);
}

// ---------------------------------------------------------------------------
// ingest_member

TEST(IngestMember, ExactBytes)
{
    EXPECT_EQ(kIngest,
              R"x(,"_ingest":{"site_id":42,"received_at":1700000000123,"ip":"203.0.113.7",)x"
              R"x("user_agent":"Mozilla/5.0 (X11; Linux x86_64)","country":"FR",)x"
              R"x("request_id":"0123456789abcdef0123456789abcdef"})x");
}

TEST(IngestMember, SiteIdIsAJsonInteger)
{
    IngestFields fields = sample_fields();
    fields.site_id = "007";
    EXPECT_EQ(ingest_member(fields).rfind(R"(,"_ingest":{"site_id":7,"received_at":)", 0), 0u);
    fields.site_id = "9999999999";
    EXPECT_EQ(ingest_member(fields).rfind(R"(,"_ingest":{"site_id":9999999999,"received_at":)", 0), 0u);
    fields.site_id = "0000000000";
    EXPECT_EQ(ingest_member(fields).rfind(R"(,"_ingest":{"site_id":0,"received_at":)", 0), 0u);
    fields.site_id = "0";
    EXPECT_EQ(ingest_member(fields).rfind(R"(,"_ingest":{"site_id":0,"received_at":)", 0), 0u);
    fields.site_id = "1";
    EXPECT_EQ(ingest_member(fields).rfind(R"(,"_ingest":{"site_id":1,"received_at":)", 0), 0u);
}

TEST(IngestMember, ReceivedAtIsAnInteger)
{
    IngestFields fields = sample_fields();
    fields.received_at_ms = 0;
    EXPECT_NE(ingest_member(fields).find(R"("received_at":0,"ip")"), std::string::npos);
    fields.received_at_ms = std::numeric_limits<int64_t>::max();
    EXPECT_NE(ingest_member(fields).find(R"("received_at":9223372036854775807,)"), std::string::npos);
    fields.received_at_ms = -5;
    EXPECT_NE(ingest_member(fields).find(R"("received_at":-5,)"), std::string::npos);
    fields.received_at_ms = std::numeric_limits<int64_t>::min();
    EXPECT_NE(ingest_member(fields).find(R"("received_at":-9223372036854775808,)"), std::string::npos);
}

TEST(IngestMember, UserAgentAbsentIsNullAndEmptyIsEmpty)
{
    IngestFields fields = sample_fields();
    fields.user_agent = std::nullopt;
    EXPECT_NE(ingest_member(fields).find(R"("user_agent":null,"country":)"), std::string::npos);
    fields.user_agent = "";
    EXPECT_NE(ingest_member(fields).find(R"("user_agent":"","country":)"), std::string::npos);
}

TEST(IngestMember, CountryAbsentOrEmptyIsNull)
{
    IngestFields fields = sample_fields();
    fields.country = std::nullopt;
    EXPECT_NE(ingest_member(fields).find(R"("country":null,"request_id":)"), std::string::npos);
    fields.country = "";
    EXPECT_NE(ingest_member(fields).find(R"("country":null,"request_id":)"), std::string::npos);
    fields.country = "XX";
    EXPECT_NE(ingest_member(fields).find(R"("country":"XX","request_id":)"), std::string::npos);
}

TEST(IngestMember, AllOptionalFieldsAbsent)
{
    IngestFields fields;
    fields.site_id = "1";
    fields.received_at_ms = 1;
    fields.ip = "::1";
    fields.request_id = "r";
    EXPECT_EQ(ingest_member(fields),
              R"(,"_ingest":{"site_id":1,"received_at":1,"ip":"::1","user_agent":null,"country":null,)"
              R"("request_id":"r"})");
}

TEST(IngestMember, HeaderBytesAreEscapedAndReplaced)
{
    IngestFields fields = sample_fields();
    fields.user_agent = "A \"quoted\" \\ agent\t\xFF\xC3\xA9";
    fields.country = "\xC0";
    fields.ip = "2001:db8::1";
    fields.request_id = "id/1";
    std::string member = ingest_member(fields);
    EXPECT_NE(member.find("\"user_agent\":\"A \\\"quoted\\\" \\\\ agent\\t" + kFffd + "\xC3\xA9\","),
              std::string::npos)
        << member;
    EXPECT_NE(member.find("\"country\":\"" + kFffd + "\","), std::string::npos) << member;
    EXPECT_NE(member.find(R"("ip":"2001:db8::1",)"), std::string::npos) << member;
    EXPECT_NE(member.find(R"("request_id":"id/1"})"), std::string::npos) << member;
}

TEST(IngestMember, HasExactlyTheSixFieldsInOrder)
{
    IngestFields fields = sample_fields();
    fields.user_agent = "\xFF\xFE";
    std::string object = "{" + ingest_member(fields).substr(1) + "}";
    rapidjson::Document doc;
    ASSERT_TRUE(parse_strict(object, doc)) << object;
    ASSERT_TRUE(doc.HasMember("_ingest"));
    const rapidjson::Value& ingest = doc["_ingest"];
    ASSERT_TRUE(ingest.IsObject());
    std::vector<std::string> names;
    for (auto it = ingest.MemberBegin(); it != ingest.MemberEnd(); ++it) {
        names.emplace_back(it->name.GetString());
    }
    EXPECT_EQ(names, (std::vector<std::string>{"site_id", "received_at", "ip", "user_agent", "country", "request_id"}));
    EXPECT_TRUE(ingest["site_id"].IsUint64());
    EXPECT_TRUE(ingest["received_at"].IsInt64());
    EXPECT_EQ(ingest["received_at"].GetInt64(), 1700000000123);
    EXPECT_EQ(std::string(ingest["user_agent"].GetString()), fffd(2));
}

// ---------------------------------------------------------------------------
// QueueElement

TEST(QueueElement, AppendsIngestBeforeTheClosingBrace)
{
    std::string doc = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}]})";
    EXPECT_EQ(element(doc), doc.substr(0, doc.size() - 1) + kIngest + "}");
}

TEST(QueueElement, KeepsWhitespaceAroundTheClosingBrace)
{
    std::string doc = "{\n  \"session_id\": \"a\",\n  \"seq\": 0,\n  \"events\": " + kEvents + "\n}\n";
    EXPECT_EQ(element(doc),
              "{\n  \"session_id\": \"a\",\n  \"seq\": 0,\n  \"events\": " + kEvents + kIngest + "\n}\n");
}

TEST(QueueElement, InsertsAfterAScalarLastMember)
{
    std::string doc = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}],"page":"x/y" })";
    EXPECT_EQ(element(doc),
              R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}],"page":"x/y")" + kIngest + " }");
    doc = R"({"events":[{"type":2,"timestamp":1}],"session_id":"a","seq":12})";
    EXPECT_EQ(element(doc), R"({"events":[{"type":2,"timestamp":1}],"session_id":"a","seq":12)" + kIngest + "}");
}

TEST(QueueElement, ClientIngestFirstIsRemoved)
{
    std::string doc = R"({"_ingest":{"site_id":1},"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}]})";
    EXPECT_EQ(element(doc), R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}])" + kIngest + "}");
}

TEST(QueueElement, ClientIngestFirstWithWhitespaceIsRemoved)
{
    std::string doc = "{ \"_ingest\" : \"forged\" ,\n \"session_id\":\"a\",\"seq\":0,\"events\":" + kEvents + "}";
    EXPECT_EQ(element(doc), "{ \"session_id\":\"a\",\"seq\":0,\"events\":" + kEvents + kIngest + "}");
}

TEST(QueueElement, ClientIngestInTheMiddleIsRemoved)
{
    std::string doc = R"({"session_id":"a","_ingest":null,"seq":0,"events":[{"type":2,"timestamp":1}]})";
    EXPECT_EQ(element(doc), R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}])" + kIngest + "}");
}

TEST(QueueElement, ClientIngestInTheMiddleWithWhitespaceIsRemoved)
{
    std::string doc = "{\"session_id\":\"a\" ,\n\t\"_ingest\" :\n[1, 2] \n, \"seq\" : 0,\"events\":" + kEvents + "}";
    EXPECT_EQ(element(doc), "{\"session_id\":\"a\" \n, \"seq\" : 0,\"events\":" + kEvents + kIngest + "}");
}

TEST(QueueElement, ClientIngestLastIsRemoved)
{
    std::string doc = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}],"_ingest":{"ip":"1.2.3.4"}})";
    EXPECT_EQ(element(doc), R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}])" + kIngest + "}");
}

TEST(QueueElement, ClientIngestLastWithWhitespaceIsRemoved)
{
    std::string doc = "{\"session_id\":\"a\",\"seq\":0,\"events\":" + kEvents + " ,\n \"_ingest\": 5 \n}";
    EXPECT_EQ(element(doc), "{\"session_id\":\"a\",\"seq\":0,\"events\":" + kEvents + kIngest + " \n}");
}

TEST(QueueElement, ClientIngestAfterAScalarIsRemoved)
{
    std::string doc = R"({"events":[{"type":2,"timestamp":1}],"seq":0,"session_id":"a","_ingest":"x"})";
    EXPECT_EQ(element(doc), R"({"events":[{"type":2,"timestamp":1}],"seq":0,"session_id":"a")" + kIngest + "}");
    doc = R"({"events":[{"type":2,"timestamp":1}],"session_id":"a","seq":0,"_ingest":1})";
    EXPECT_EQ(element(doc), R"({"events":[{"type":2,"timestamp":1}],"session_id":"a","seq":0)" + kIngest + "}");
}

TEST(QueueElement, EscapedClientIngestKeyIsRemovedToo)
{
    std::string doc = R"({"session_id":"a","\u005fingest":1,"seq":0,"events":[{"type":2,"timestamp":1}]})";
    EXPECT_EQ(element(doc), R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}])" + kIngest + "}");
}

TEST(QueueElement, NestedIngestIsUntouched)
{
    std::string doc = R"({"session_id":"a","seq":0,"meta":{"_ingest":1},)"
                      R"("events":[{"type":2,"timestamp":1,"_ingest":2,"data":{"_ingest":3}}]})";
    EXPECT_EQ(element(doc), doc.substr(0, doc.size() - 1) + kIngest + "}");
}

TEST(QueueElement, OtherKeysThatLookLikeIngestAreKept)
{
    std::string doc = R"({"session_id":"a","_ingest_":1,"_Ingest":2,"ingest":3,"seq":0,)"
                      R"("events":[{"type":2,"timestamp":1}]})";
    EXPECT_EQ(element(doc), doc.substr(0, doc.size() - 1) + kIngest + "}");
}

TEST(QueueElement, ClientBytesAreKeptExactly)
{
    // What the legacy layer broke: empty arrays, long numbers, '/', key
    // order, escapes, non-ASCII text.
    std::string doc =
        R"({"seq":1.0,"events":[{"timestamp":1700000000000.123456789,"type":3,"data":{"adds":[],"removes":[ ],)"
        R"("texts":{},"big":12345678901234567890123,"exp":1E+2,"neg":-0.0,"href":"https://x.test/a/b",)"
        R"("esc":"a\/b\u00e9\ud83d\ude00\n","raw":"é😀"}}],"session_id":"a","z":1,"a":2})";
    std::string out = element(doc);
    EXPECT_EQ(out, doc.substr(0, doc.size() - 1) + kIngest + "}");
    EXPECT_NE(out.find(R"("adds":[])"), std::string::npos);
    EXPECT_NE(out.find("1700000000000.123456789"), std::string::npos);
    EXPECT_NE(out.find("12345678901234567890123"), std::string::npos);
    EXPECT_NE(out.find("https://x.test/a/b"), std::string::npos);
    EXPECT_EQ(out.find(R"(https:\/\/)"), std::string::npos);
}

TEST(QueueElement, SizeAndAppendTo)
{
    std::string doc = R"({"_ingest":1,"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}]})";
    ValidatedBatch batch = validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    QueueElement queued(doc, batch, ",\"_ingest\":{}");
    std::string expected = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}],"_ingest":{}})";
    EXPECT_EQ(queued.size(), expected.size());
    std::string out = "prefix";
    queued.append_to(out);
    EXPECT_EQ(out, "prefix" + expected);
    EXPECT_EQ(queued.str(), expected);
}

TEST(QueueElement, DoesNotCopyTheDocument)
{
    // Slices point into the caller's document until append_to().
    std::string doc = R"({"session_id":"a","seq":0,"events":[{"type":2,"timestamp":1}]})";
    ValidatedBatch batch = validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    QueueElement queued(doc, batch, kIngest);
    doc[15] = 'b';  // the session id's value
    EXPECT_EQ(queued.str(), R"({"session_id":"b","seq":0,"events":[{"type":2,"timestamp":1}])" + kIngest + "}");
}

// Every position of a client `_ingest`, with every kind of value before,
// as and after it, and different white space: the element parses, has one
// `_ingest` (ours) and the client's other members in their order.
TEST(QueueElement, AlwaysValidJsonWithExactlyOneIngest)
{
    const std::vector<std::string> values = {R"("s")", "-1.5e3", "null", "true", "{}", "[]", R"({"_ingest":[1]})"};
    const std::vector<std::string> spaces = {"", " ", "\n\t ", "\r\n"};
    const std::vector<std::pair<std::string, std::string>> required = {
        {"session_id", R"("sess")"}, {"seq", "7"}, {"events", kEvents}};

    int checked = 0;
    for (const std::string& ws : spaces) {
        for (const std::string& other : values) {
            for (const std::string& forged : values) {
                // Members: the required three, one other, and the client's _ingest at each position.
                for (size_t at = 0; at <= 4; at++) {
                    std::vector<std::pair<std::string, std::string>> members = required;
                    members.emplace_back("other", other);
                    members.insert(members.begin() + static_cast<long>(at), {"_ingest", forged});
                    std::string doc = "{" + ws;
                    for (size_t i = 0; i < members.size(); i++) {
                        if (i != 0) {
                            doc += ws + "," + ws;
                        }
                        doc += "\"" + members[i].first + "\"" + ws + ":" + ws + members[i].second;
                    }
                    doc += ws + "}" + ws;

                    std::string out = element(doc);
                    rapidjson::Document parsed;
                    ASSERT_TRUE(parse_strict(out, parsed)) << doc << "\n-> " << out;
                    ASSERT_TRUE(parsed.IsObject());
                    EXPECT_EQ(count_top_level(parsed, "_ingest"), 1u) << out;
                    EXPECT_EQ(compact(parsed["_ingest"]), kIngest.substr(std::string(",\"_ingest\":").size()));

                    // The client's members, in order, then ours.
                    std::vector<std::string> names;
                    for (auto it = parsed.MemberBegin(); it != parsed.MemberEnd(); ++it) {
                        names.emplace_back(it->name.GetString());
                    }
                    EXPECT_EQ(names, (std::vector<std::string>{"session_id", "seq", "events", "other", "_ingest"}))
                        << out;
                    rapidjson::Document expected_other;
                    expected_other.Parse(("[" + other + "]").c_str());
                    EXPECT_EQ(compact(parsed["other"]), compact(expected_other[0]));
                    // Exactly the forged member and one separator went away.
                    size_t forged_member = std::string("\"_ingest\"").size() + 2 * ws.size() + 1 + forged.size();
                    size_t separator = 2 * ws.size() + 1;
                    EXPECT_EQ(out.size(), doc.size() - forged_member - separator + kIngest.size()) << out;
                    checked++;
                }
            }
        }
    }
    EXPECT_EQ(checked, 4 * 7 * 7 * 5);
}

TEST(QueueElement, WithoutClientIngestOnlyAddsIngest)
{
    std::string doc = "{ \"session_id\" : \"a\" , \"seq\" : 0 , \"events\" : " + kEvents + " , \"x\" : [ ] }";
    std::string out = element(doc);
    EXPECT_EQ(out.size(), doc.size() + kIngest.size());
    EXPECT_EQ(out, "{ \"session_id\" : \"a\" , \"seq\" : 0 , \"events\" : " + kEvents + " , \"x\" : [ ]" + kIngest +
                       " }");
}
