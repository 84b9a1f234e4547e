#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "batch_validator.h"
#include "outcome.h"
#include "test_util.h"

using recording::key_check_steps;
using recording::Outcome;
using recording::outcome_name;
using recording::ValidatedBatch;
using recording::ValidationLimits;
using recording_test::Batch;
using recording_test::event;
using recording_test::events_array;

namespace {

bool same_answer(const ValidatedBatch& a, const ValidatedBatch& b)
{
    return a.valid == b.valid && a.error == b.error && a.session_id == b.session_id &&
           a.removed_begin == b.removed_begin && a.removed_end == b.removed_end && a.insert_at == b.insert_at;
}

std::string describe(const ValidatedBatch& b)
{
    return (b.valid ? std::string("valid") : std::string(outcome_name(b.error))) + " session_id=" + b.session_id +
           " removed=[" + std::to_string(b.removed_begin) + "," + std::to_string(b.removed_end) +
           ") insert_at=" + std::to_string(b.insert_at);
}

// How many documents the simdjson path answered on its own.
size_t fast_answers = 0;

// Every document in this file is validated through here: besides the
// answer, which the tests check, both paths must agree with each other
// field by field. validate_batch must give the RapidJSON reference's answer,
// and the simdjson path, when it answers alone, the same.
ValidatedBatch checked_validate_batch(std::string_view document, const ValidationLimits& limits)
{
    ValidatedBatch answer = recording::validate_batch(document, limits);
    ValidatedBatch reference = recording::validate_batch_reference(document, limits);
    EXPECT_TRUE(same_answer(answer, reference))
        << "validate_batch: " << describe(answer) << "\nreference:      " << describe(reference)
        << "\ndocument: " << document.substr(0, 200);
    ValidatedBatch fast;
    if (recording::validate_batch_fast(document, limits, fast)) {
        fast_answers++;
        EXPECT_TRUE(reference.valid) << "the simdjson path accepts what the reference refuses: "
                                     << document.substr(0, 200);
        EXPECT_TRUE(same_answer(fast, reference))
            << "simdjson:  " << describe(fast) << "\nreference: " << describe(reference)
            << "\ndocument: " << document.substr(0, 200);
    }
    return answer;
}

// Whether the simdjson path answers `document` alone (true) or leaves it to
// the reference (false).
bool fast_answers_alone(std::string_view document, const ValidationLimits& limits = {})
{
    ValidatedBatch ignored;
    return recording::validate_batch_fast(document, limits, ignored);
}

// "valid", or the name of the error: readable in failure messages.
std::string verdict(const std::string& document, const ValidationLimits& limits = {})
{
    ValidatedBatch batch = checked_validate_batch(document, limits);
    return batch.valid ? "valid" : std::string(outcome_name(batch.error));
}

// A valid batch with one member's raw JSON value replaced.
std::string with_session_id(std::string value)
{
    Batch b;
    b.session_id = std::move(value);
    return b.json();
}

std::string with_seq(std::string value)
{
    Batch b;
    b.seq = std::move(value);
    return b.json();
}

std::string with_events(std::string value)
{
    Batch b;
    b.events = std::move(value);
    return b.json();
}

std::string with_event(std::string_view type, std::string_view timestamp)
{
    return with_events("[" + event(type, timestamp) + "]");
}

// A valid batch with extra raw members (each starting with a comma).
std::string with_extra(std::string extra)
{
    Batch b;
    b.extra = std::move(extra);
    return b.json();
}

// A valid batch whose `page` member is the given raw string contents.
std::string with_page_string(std::string_view raw)
{
    return with_extra(",\"page\":\"" + std::string(raw) + "\"");
}

std::string nested_arrays(size_t levels)
{
    return std::string(levels, '[') + std::string(levels, ']');
}

std::string nested_objects(size_t levels)
{
    std::string out;
    out.reserve(levels * 6 + 1);
    for (size_t i = 0; i < levels; i++) {
        out += "{\"a\":";
    }
    out += '1';
    out += std::string(levels, '}');
    return out;
}

const std::string kValid = Batch{}.json();

// A copy of a document whose last byte is the last readable one: the page
// after it is inaccessible, so reading past the document crashes.
class GuardedDocument {
public:
    explicit GuardedDocument(std::string_view text)
    {
        page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        pages_ = (text.size() + page_ - 1) / page_ + 1;
        void* p = mmap(nullptr, pages_ * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            std::abort();
        }
        base_ = static_cast<char*>(p);
        char* guard = base_ + (pages_ - 1) * page_;
        if (mprotect(guard, page_, PROT_NONE) != 0) {
            std::abort();
        }
        char* start = guard - text.size();
        std::memcpy(start, text.data(), text.size());
        view_ = std::string_view(start, text.size());
    }
    ~GuardedDocument() { munmap(base_, pages_ * page_); }
    GuardedDocument(const GuardedDocument&) = delete;
    GuardedDocument& operator=(const GuardedDocument&) = delete;

    std::string_view view() const { return view_; }

private:
    size_t page_ = 0;
    size_t pages_ = 0;
    char* base_ = nullptr;
    std::string_view view_;
};

// The verdict on `text` placed right before an inaccessible page.
std::string guarded_verdict(std::string_view text)
{
    GuardedDocument doc(text);
    ValidatedBatch batch = checked_validate_batch(doc.view(), {});
    return batch.valid ? "valid" : std::string(outcome_name(batch.error));
}

}  // namespace

// ---------------------------------------------------------------------------
// A valid batch

TEST(BatchValidator, MinimalBatchIsValid)
{
    EXPECT_EQ(kValid, R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1700000000000}]})");
    ValidatedBatch batch = checked_validate_batch(kValid, {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, "abc");
}

TEST(BatchValidator, OtherMembersAreKept)
{
    std::string doc = R"({"page_id":"p1","session_id":"s","seq":3,"meta":{"x":[1,2,{}]},"events":[)"
                      R"({"type":4,"timestamp":1.5,"data":{"href":"https://x/y","adds":[]}},)"
                      R"({"type":0,"timestamp":2,"data":null}],"flag":true,"nothing":null})";
    EXPECT_EQ(verdict(doc), "valid");
}

TEST(BatchValidator, MemberOrderDoesNotMatter)
{
    EXPECT_EQ(verdict(R"({"events":[{"timestamp":1,"type":2}],"seq":0,"session_id":"abc"})"), "valid");
}

TEST(BatchValidator, JsonWhitespaceAnywhereIsValid)
{
    std::string doc = " \t\r\n{ \"session_id\" :\n\"abc\" ,\r\n\t\"seq\"\t:\t0 , \"events\" : [ { \"type\" : 2 ,"
                      " \"timestamp\" : 1 } ] \n} \n\t\r ";
    EXPECT_EQ(verdict(doc), "valid");
}

// ---------------------------------------------------------------------------
// invalid_json: not an object

TEST(BatchValidator, NotAnObjectIsInvalidJson)
{
    for (const char* doc : {"[]", "[{}]", "\"x\"", "1", "0", "-1", "null", "true", "false", "", " ", "\n\t\r ",
                            "{", "}"}) {
        EXPECT_EQ(verdict(doc), "invalid_json") << '"' << doc << '"';
    }
    EXPECT_EQ(verdict("[" + kValid + "]"), "invalid_json");
}

TEST(BatchValidator, EmptyObjectIsMissingSessionId)
{
    EXPECT_EQ(verdict("{}"), "invalid_session_id");
    EXPECT_EQ(verdict(" { } "), "invalid_session_id");
}

// ---------------------------------------------------------------------------
// invalid_json: syntax

TEST(BatchValidator, TrailingCommasAreInvalidJson)
{
    EXPECT_EQ(verdict(with_extra(",")), "invalid_json");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1},])")), "invalid_json");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,}])")), "invalid_json");
}

TEST(BatchValidator, SingleQuotesAreInvalidJson)
{
    EXPECT_EQ(verdict(with_session_id("'abc'")), "invalid_json");
    EXPECT_EQ(verdict(R"({'session_id':"abc","seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
}

TEST(BatchValidator, NanAndInfinityAreInvalidJson)
{
    for (const char* value : {"NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_json") << value;
        EXPECT_EQ(verdict(with_event("2", value)), "invalid_json") << value;
    }
}

TEST(BatchValidator, NonDecimalNumbersAreInvalidJson)
{
    for (const char* value : {"0x10", "0X10", "0b1", "0o7", "1_000"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_json") << value;
    }
}

TEST(BatchValidator, LeadingZerosAreInvalidJson)
{
    for (const char* value : {"01", "00", "-01", "007", "00.5"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_json") << value;
        EXPECT_EQ(verdict(with_event("2", value)), "invalid_json") << value;
    }
}

TEST(BatchValidator, MalformedNumbersAreInvalidJson)
{
    for (const char* value : {"1.", ".5", "+1", "-", "--1", "1e", "1e+", "1E-", "1.e5", "1ee5", "1.5.2", "- 1"}) {
        EXPECT_EQ(verdict(with_event("2", value)), "invalid_json") << value;
    }
}

TEST(BatchValidator, CommentsAreInvalidJson)
{
    EXPECT_EQ(verdict("// c\n" + kValid), "invalid_json");
    EXPECT_EQ(verdict("/* c */" + kValid), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"a\":1 /* c */")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"a\":1 // c\n")), "invalid_json");
    EXPECT_EQ(verdict(kValid + "# c"), "invalid_json");
}

TEST(BatchValidator, BadLiteralsAreInvalidJson)
{
    for (const char* value : {"True", "NULL", "nul", "undefined", "tru", "nulll"}) {
        EXPECT_EQ(verdict(with_extra(std::string(",\"a\":") + value)), "invalid_json") << value;
    }
}

TEST(BatchValidator, StructuralErrorsAreInvalidJson)
{
    EXPECT_EQ(verdict(R"({"session_id" "abc","seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc" "seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
    EXPECT_EQ(verdict(R"({session_id:"abc","seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}])"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc,"seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}],,"a":1})"),
              "invalid_json");
    EXPECT_EQ(verdict(R"({,"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}]})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}],"a"})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}],"a":})"), "invalid_json");
}

TEST(BatchValidator, UnescapedControlCharactersInStringsAreInvalidJson)
{
    for (char c : {'\x01', '\t', '\n', '\r', '\x1f', '\b'}) {
        EXPECT_EQ(verdict(with_page_string(std::string("a") + c + "b")), "invalid_json") << int(c);
    }
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}],"a)"
                      "\t"
                      R"(b":1})"),
              "invalid_json");
}

TEST(BatchValidator, DelAndEscapedControlCharactersAreValid)
{
    EXPECT_EQ(verdict(with_page_string("a\x7f" "b")), "valid");
    EXPECT_EQ(verdict(with_page_string(R"(\t\n\r\b\f\"\\\/\u0000\u001f)")), "valid");
}

TEST(BatchValidator, InvalidEscapesAreInvalidJson)
{
    for (const char* raw : {R"(\x41)", R"(\a)", R"(\')", R"(\U0041)", R"(\u12)", R"(\u12G4)", R"(\0)", R"(\)",
                            R"(\ )", R"(\v)", R"(\e)"}) {
        EXPECT_EQ(verdict(with_page_string(raw)), "invalid_json") << raw;
    }
}

TEST(BatchValidator, NonJsonWhitespaceIsInvalidJson)
{
    EXPECT_EQ(verdict("\f" + kValid), "invalid_json");
    EXPECT_EQ(verdict("\v" + kValid), "invalid_json");
    EXPECT_EQ(verdict("\xC2\xA0" + kValid), "invalid_json");  // NO-BREAK SPACE
    EXPECT_EQ(verdict(with_extra(",\"a\":\f1")), "invalid_json");
}

TEST(BatchValidator, ByteOrderMarkIsInvalidJson)
{
    // RFC 8259 lets a parser ignore a BOM; this one does not accept it.
    EXPECT_EQ(verdict("\xEF\xBB\xBF" + kValid), "invalid_json");
}

// ---------------------------------------------------------------------------
// invalid_json: UTF-8

TEST(BatchValidator, InvalidUtf8InStringsIsInvalidJson)
{
    struct Case {
        const char* name;
        const char* bytes;
    };
    for (const Case& c : {
             Case{"overlong C0 80", "\xC0\x80"},
             Case{"overlong C1 BF", "\xC1\xBF"},
             Case{"overlong E0 80 80", "\xE0\x80\x80"},
             Case{"overlong E0 9F BF", "\xE0\x9F\xBF"},
             Case{"overlong F0 80 80 80", "\xF0\x80\x80\x80"},
             Case{"surrogate ED A0 80", "\xED\xA0\x80"},
             Case{"surrogate ED BF BF", "\xED\xBF\xBF"},
             Case{"above U+10FFFF F4 90 80 80", "\xF4\x90\x80\x80"},
             Case{"F5", "\xF5\x80\x80\x80"},
             Case{"FE", "\xFE"},
             Case{"FF", "\xFF"},
             Case{"truncated E2 82", "\xE2\x82"},
             Case{"truncated F0 9F 98", "\xF0\x9F\x98"},
             Case{"truncated C3", "\xC3"},
             Case{"lone continuation 80", "\x80"},
             Case{"lone continuation BF", "a\xBF" "b"},
             Case{"two-byte lead then ASCII", "\xC3" "a"},
         }) {
        EXPECT_EQ(verdict(with_page_string(c.bytes)), "invalid_json") << c.name;
        EXPECT_EQ(verdict(with_extra(std::string(",\"") + c.bytes + "\":1")), "invalid_json") << "key " << c.name;
        EXPECT_EQ(verdict(with_events(std::string(R"([{"type":2,"timestamp":1,"data":{"t":")") + c.bytes +
                                      "\"}}]")),
                  "invalid_json")
            << "event data " << c.name;
    }
}

TEST(BatchValidator, ValidUtf8IsValid)
{
    for (const char* bytes : {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF", "\xED\x9F\xBF",
                              "\xEE\x80\x80", "\xEF\xBF\xBD", "\xC2\x80", "\xE0\xA0\x80", "\xF0\x90\x80\x80"}) {
        EXPECT_EQ(verdict(with_page_string(bytes)), "valid");
        EXPECT_EQ(verdict(with_extra(std::string(",\"") + bytes + "\":1")), "valid");
    }
}

TEST(BatchValidator, InvalidUtf8OutsideStringsIsInvalidJson)
{
    EXPECT_EQ(verdict(with_extra(",\"a\":\xC3\xA9")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\xFF\"a\":1")), "invalid_json");
}

TEST(BatchValidator, LoneSurrogateEscapesAreInvalidJson)
{
    for (const char* raw : {R"(\ud800)", R"(\udc00)", R"(\uDFFF)", R"(\uDBFF)", R"(\ud800x)", R"(\ud800\u0041)",
                            R"(\ud800\ud800)", R"(\udc00\ud800)", R"(\ud800\n)", R"(a\udc00b)"}) {
        EXPECT_EQ(verdict(with_page_string(raw)), "invalid_json") << raw;
        EXPECT_EQ(verdict(with_extra(std::string(",\"") + raw + "\":1")), "invalid_json") << "key " << raw;
        EXPECT_EQ(verdict(with_events(std::string(R"([{"type":2,"timestamp":1,"data":[")") + raw + "\"]}]")),
                  "invalid_json")
            << "event data " << raw;
    }
}

TEST(BatchValidator, SurrogatePairEscapesAreValid)
{
    for (const char* raw : {R"(\ud83d\ude00)", R"(\uD83D\uDE00)", R"(\ud800\udc00)", R"(\udbff\udfff)",
                            R"(\ud7ff)", R"(\ue000)", R"(\uffff)"}) {
        EXPECT_EQ(verdict(with_page_string(raw)), "valid") << raw;
        EXPECT_EQ(verdict(with_extra(std::string(",\"") + raw + "\":1")), "valid") << "key " << raw;
    }
}

// ---------------------------------------------------------------------------
// invalid_json: what follows the object

TEST(BatchValidator, TrailingDataIsInvalidJson)
{
    for (const char* tail : {" {}", "{}", "x", ",", "]", "}", "0", "\"\"", " null", "\n{}"}) {
        EXPECT_EQ(verdict(kValid + tail), "invalid_json") << tail;
    }
    EXPECT_EQ(verdict("{} {}"), "invalid_json");
}

TEST(BatchValidator, TrailingWhitespaceIsValid)
{
    EXPECT_EQ(verdict(kValid + " \n\r\t\n"), "valid");
}

TEST(BatchValidator, NulByteAfterTheObjectIsInvalidJson)
{
    // The std::string keeps a NUL after its last byte too, as required.
    std::string doc = kValid + std::string(1, '\0');
    ASSERT_EQ(doc.size(), kValid.size() + 1);
    EXPECT_EQ(verdict(doc), "invalid_json");
    EXPECT_EQ(verdict(kValid + std::string(1, '\0') + "garbage"), "invalid_json");
    EXPECT_EQ(verdict(kValid + std::string(1, '\0') + "{}"), "invalid_json");
    EXPECT_EQ(verdict(kValid + " " + std::string(1, '\0') + " "), "invalid_json");
}

TEST(BatchValidator, NulByteInsideIsInvalidJson)
{
    EXPECT_EQ(verdict(with_page_string(std::string("a\0b", 3))), "invalid_json");
    EXPECT_EQ(verdict(std::string("\0", 1) + kValid), "invalid_json");
    std::string doc = kValid;
    doc[doc.size() / 2] = '\0';
    EXPECT_EQ(verdict(doc), "invalid_json");
}

TEST(BatchValidator, GuardedDocumentsAreReadNoFurtherThanTheirEnd)
{
    // Sanity check of the guard: complete and cut documents.
    EXPECT_EQ(guarded_verdict(kValid), "valid");
    EXPECT_EQ(guarded_verdict(kValid.substr(0, kValid.size() - 1)), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"session_id":"ab)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"session_id":"ab\)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"session_id":"ab\u00)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"session_id":"ab\ud800)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"seq":12)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"seq":1e)"), "invalid_json");
    EXPECT_EQ(guarded_verdict(R"({"a":tru)"), "invalid_json");
    EXPECT_EQ(guarded_verdict("{\"a\":\"\xC3"), "invalid_json");  // a two-byte lead at the very end
}

// The document ends right after the lead byte of a 3- or 4-byte UTF-8
// sequence inside a string. RapidJSON's validation takes the continuation
// bytes without looking for the end; validate_batch() must not let it read
// past the document, which runs into the guard page (SIGSEGV).
// Run in a child process so that a crash fails only this test.
#define EXPECT_GUARDED_INVALID_JSON(text)                                                          \
    EXPECT_EXIT(std::exit(guarded_verdict(text) == "invalid_json" ? 0 : 1), ::testing::ExitedWithCode(0), "")

TEST(BatchValidator, DocumentEndingAfterAThreeByteLeadIsNotReadPastItsEnd)
{
    EXPECT_GUARDED_INVALID_JSON("{\"a\":\"\xE2");
}

TEST(BatchValidator, DocumentEndingAfterAFourByteLeadIsNotReadPastItsEnd)
{
    EXPECT_GUARDED_INVALID_JSON("{\"a\":\"\xF0");
    EXPECT_GUARDED_INVALID_JSON("{\"a\":\"\xF0\x9F");
}

TEST(BatchValidator, ValidPrefixOfALongerBufferIsJudgedByItsOwnSize)
{
    // Whatever lies after the view in the buffer is not part of it.
    std::string buffer = kValid + std::string(1, '\0') + "garbage";
    std::string_view view(buffer.data(), kValid.size());
    EXPECT_TRUE(checked_validate_batch(view, {}).valid);
}

// ---------------------------------------------------------------------------
// invalid_json: duplicate keys

TEST(BatchValidator, DuplicateTopLevelKeysAreInvalidJson)
{
    EXPECT_EQ(verdict(with_extra(R"(,"session_id":"abc")")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"seq":0)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"events":[{"type":2,"timestamp":1}])")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"page":1,"page":1)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"_ingest":1,"_ingest":2)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"":1,"":2)")), "invalid_json");
}

TEST(BatchValidator, DuplicateKeysCompareAfterUnescaping)
{
    EXPECT_EQ(verdict(with_extra(R"(,"s\u0065q":1)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"\u0073\u0065\u0071":1)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"\u005fingest":1,"_ingest":2)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"a\/b":1,"a/b":2)")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(R"(,"\u00e9":1,"é":2)")), "invalid_json");
    // Different after unescaping: fine.
    EXPECT_EQ(verdict(with_extra(R"(,"Seq":1,"seq ":2,"s\u0045q":3)")), "valid");
}

TEST(BatchValidator, DuplicateAmongManyTopLevelKeysIsFound)
{
    // The key set changes representation as it grows; a repeat is found
    // whichever key it repeats and wherever it comes.
    for (int keys : {14, 15, 16, 17, 18, 40}) {
        for (int repeated : {0, keys / 2, keys - 1}) {
            std::string extra;
            for (int i = 0; i < keys; i++) {
                extra += ",\"k" + std::to_string(i) + "\":" + std::to_string(i);
            }
            EXPECT_EQ(verdict(with_extra(extra)), "valid") << keys;
            extra += ",\"k" + std::to_string(repeated) + "\":0";
            EXPECT_EQ(verdict(with_extra(extra)), "invalid_json") << keys << " repeating " << repeated;
        }
    }
    // Repeating one of the contract's fields after many others.
    std::string extra;
    for (int i = 0; i < 40; i++) {
        extra += ",\"k" + std::to_string(i) + "\":" + std::to_string(i);
    }
    EXPECT_EQ(verdict(with_extra(extra + R"(,"session_id":"abc")")), "invalid_json");
}

TEST(BatchValidator, DuplicateKeysInAnEventAreInvalidJson)
{
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"type":2,"timestamp":1}])")), "invalid_json");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"timestamp":1}])")), "invalid_json");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"data":{},"data":{}}])")), "invalid_json");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"typ\u0065":2}])")), "invalid_json");
    // In the second event.
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1},{"type":2,"timestamp":1,"x":1,"x":1}])")),
              "invalid_json");
}

TEST(BatchValidator, DuplicateAmongManyEventKeysIsFound)
{
    std::string ev = R"({"type":2,"timestamp":1)";
    for (int i = 0; i < 30; i++) {
        ev += ",\"k" + std::to_string(i) + "\":0";
    }
    EXPECT_EQ(verdict(with_events("[" + ev + "}]")), "valid");
    EXPECT_EQ(verdict(with_events("[" + ev + ",\"k3\":0}]")), "invalid_json");
    EXPECT_EQ(verdict(with_events("[" + ev + ",\"type\":2}]")), "invalid_json");
    // Each event has its own key set: the same keys in the next event are fine.
    EXPECT_EQ(verdict(with_events("[" + ev + "}," + ev + "}]")), "valid");
}

TEST(BatchValidator, DuplicateKeysInsideEventDataAreFine)
{
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"data":{"a":1,"a":2}}])")), "valid");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"data":{"x":[{"type":1,"type":2}]}}])")), "valid");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1,"data":{"b":{"c":1,"c":1}}}])")), "valid");
}

TEST(BatchValidator, DuplicateKeysInOtherNestedObjectsAreFine)
{
    EXPECT_EQ(verdict(with_extra(R"(,"meta":{"a":1,"a":2})")), "valid");
    EXPECT_EQ(verdict(with_extra(R"(,"meta":{"x":{"a":1,"a":2}})")), "valid");
    EXPECT_EQ(verdict(with_extra(R"(,"list":[{"a":1,"a":2}])")), "valid");
    EXPECT_EQ(verdict(with_extra(R"(,"list":[{"type":1,"type":2}])")), "valid");
    EXPECT_EQ(verdict(with_extra(R"(,"meta":{"session_id":1,"session_id":2})")), "valid");
}

// ---------------------------------------------------------------------------
// session_id

TEST(SessionId, MissingIsInvalid)
{
    Batch b;
    b.has_session_id = false;
    EXPECT_EQ(verdict(b.json()), "invalid_session_id");
}

TEST(SessionId, NonStringIsInvalid)
{
    for (const char* value : {"1", "0", "null", "true", "[]", "[\"abc\"]", "{}", "{\"a\":\"abc\"}"}) {
        EXPECT_EQ(verdict(with_session_id(value)), "invalid_session_id") << value;
    }
}

TEST(SessionId, EmptyIsInvalid)
{
    EXPECT_EQ(verdict(with_session_id(R"("")")), "invalid_session_id");
}

TEST(SessionId, SixtyFourCharactersAtMost)
{
    EXPECT_EQ(verdict(with_session_id("\"a\"")), "valid");
    std::string sixty_four(64, 'x');
    ValidatedBatch batch = checked_validate_batch(with_session_id("\"" + sixty_four + "\""), {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, sixty_four);
    EXPECT_EQ(verdict(with_session_id("\"" + std::string(65, 'x') + "\"")), "invalid_session_id");
    EXPECT_EQ(verdict(with_session_id("\"" + std::string(1000, 'x') + "\"")), "invalid_session_id");
}

TEST(SessionId, AllAllowedCharacters)
{
    std::string id = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    ASSERT_EQ(id.size(), 64u);
    ValidatedBatch batch = checked_validate_batch(with_session_id("\"" + id + "\""), {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, id);
}

TEST(SessionId, OtherCharactersAreInvalid)
{
    for (const char* raw : {"a b", "a.b", "a+b", "a/b", "a=b", "a:b", "a@b", "a~b", "a\\\\b", "a\\\"b", "a\\tb",
                            "a\\u0000b", "\xC3\xA9", "a\\u00e9", "\xEF\xBC\xA1" /* fullwidth A */, " abc", "abc ",
                            "a\\nb", "a\x7f" "b"}) {
        EXPECT_EQ(verdict(with_session_id(std::string("\"") + raw + "\"")), "invalid_session_id") << raw;
    }
}

TEST(SessionId, CheckedAfterUnescaping)
{
    ValidatedBatch batch = checked_validate_batch(with_session_id(R"("ab\u0063")"), {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, "abc");

    batch = checked_validate_batch(with_session_id(R"("\u0041\u005f\u002d9")"), {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, "A_-9");

    // The length counts characters after unescaping.
    std::string sixty_four = "\"" + std::string(60, 'a') + R"(\u0062\u0062\u0062\u0062")";
    batch = checked_validate_batch(with_session_id(sixty_four), {});
    EXPECT_TRUE(batch.valid);
    EXPECT_EQ(batch.session_id, std::string(60, 'a') + "bbbb");
    std::string sixty_five = "\"" + std::string(60, 'a') + R"(\u0062\u0062\u0062\u0062\u0062")";
    EXPECT_EQ(verdict(with_session_id(sixty_five)), "invalid_session_id");
}

TEST(SessionId, SameNameInsideOtherObjectsDoesNotCount)
{
    Batch b;
    b.has_session_id = false;
    b.extra = R"(,"meta":{"session_id":"abc"})";
    EXPECT_EQ(verdict(b.json()), "invalid_session_id");
    b.events = R"([{"type":2,"timestamp":1,"session_id":"abc"}])";
    EXPECT_EQ(verdict(b.json()), "invalid_session_id");
}

// ---------------------------------------------------------------------------
// seq

TEST(Seq, MissingIsInvalid)
{
    Batch b;
    b.has_seq = false;
    EXPECT_EQ(verdict(b.json()), "invalid_seq");
}

TEST(Seq, NonNumberIsInvalid)
{
    for (const char* value : {"\"0\"", "\"1\"", "null", "true", "false", "[]", "[0]", "{}"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_seq") << value;
    }
}

TEST(Seq, NegativeIsInvalid)
{
    for (const char* value : {"-1", "-1.0", "-1e0", "-2147483648", "-2147483649", "-9223372036854775808",
                              "-1e300"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_seq") << value;
    }
}

TEST(Seq, FractionIsInvalid)
{
    for (const char* value : {"1.5", "0.5", "-0.5", "0.1", "1e-1", "1.0000001", "12345.6"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_seq") << value;
    }
}

TEST(Seq, WholeNumbersInAnyNotationAreValid)
{
    for (const char* value : {"0", "1", "1.0", "1e0", "1E0", "1e+0", "1e2", "100e-2", "10.0e-1", "0.0", "0e5",
                              "-0", "-0.0", "-0e0", "2147483647", "2147483648", "4294967296", "9007199254740993",
                              "18446744073709551615", "18446744073709551616", "123456789012345678901234567890"}) {
        EXPECT_EQ(verdict(with_seq(value)), "valid") << value;
    }
}

TEST(Seq, HugeButFiniteIsValid)
{
    // 1e300 is a whole number in doubles: accepted, like the legacy layer.
    EXPECT_EQ(verdict(with_seq("1e300")), "valid");
    EXPECT_EQ(verdict(with_seq("1.7976931348623157e308")), "valid");
}

TEST(Seq, NumberTooBigForADoubleIsInvalidJson)
{
    EXPECT_EQ(verdict(with_seq("1e400")), "invalid_json");
    EXPECT_EQ(verdict(with_seq("1e309")), "invalid_json");
    EXPECT_EQ(verdict(with_seq("-1e400")), "invalid_json");
    EXPECT_EQ(verdict(with_seq(std::string(400, '9'))), "invalid_json");
}

TEST(Seq, NumberOverflowingADoubleIsInvalidJsonWhateverItsSpelling)
{
    // Beyond DBL_MAX (1.7976931348623157e308) like 1e400, but spelt with a
    // smaller exponent: must not be taken as a number (infinity) either.
    for (const char* value : {"2e308", "1.8e308", "10e308", "1000e306", "0.2e310"}) {
        EXPECT_EQ(verdict(with_seq(value)), "invalid_json") << value;
        EXPECT_EQ(verdict(with_event("2", value)), "invalid_json") << "timestamp " << value;
    }
}

TEST(Seq, TinyExponentsUnderflowToZero)
{
    EXPECT_EQ(verdict(with_seq("0e-400")), "valid");
    EXPECT_EQ(verdict(with_seq("1e-400")), "valid");  // 0 in doubles, as in the legacy layer
    EXPECT_EQ(verdict(with_event("2", "1e-400")), "valid");
    EXPECT_EQ(verdict(with_event("2", "1e-99999999999")), "valid");
}

// ---------------------------------------------------------------------------
// events

TEST(Events, MissingIsInvalid)
{
    Batch b;
    b.has_events = false;
    EXPECT_EQ(verdict(b.json()), "invalid_events");
}

TEST(Events, NonArrayIsInvalid)
{
    for (const char* value : {"{}", R"({"type":2,"timestamp":1})", "\"x\"", "1", "null", "true"}) {
        EXPECT_EQ(verdict(with_events(value)), "invalid_events") << value;
    }
}

TEST(Events, EmptyIsInvalid)
{
    EXPECT_EQ(verdict(with_events("[]")), "invalid_events");
    EXPECT_EQ(verdict(with_events("[ \n ]")), "invalid_events");
}

TEST(Events, TenThousandAtMost)
{
    EXPECT_EQ(verdict(with_events(events_array(1))), "valid");
    EXPECT_EQ(verdict(with_events(events_array(10000))), "valid");
    EXPECT_EQ(verdict(with_events(events_array(10001))), "invalid_events");
}

TEST(Events, CustomLimit)
{
    ValidationLimits limits;
    limits.max_events = 3;
    EXPECT_EQ(verdict(with_events(events_array(3)), limits), "valid");
    EXPECT_EQ(verdict(with_events(events_array(4)), limits), "invalid_events");
    limits.max_events = 1;
    EXPECT_EQ(verdict(with_events(events_array(1)), limits), "valid");
    EXPECT_EQ(verdict(with_events(events_array(2)), limits), "invalid_events");
}

TEST(Events, ElementsMustBeObjects)
{
    std::string good = event("2", "1");
    for (const char* bad : {"1", "\"x\"", "null", "true", "[]", "[{\"type\":2,\"timestamp\":1}]"}) {
        EXPECT_EQ(verdict(with_events(std::string("[") + bad + "]")), "invalid_events") << bad;
        EXPECT_EQ(verdict(with_events("[" + good + "," + bad + "]")), "invalid_events") << bad;
        EXPECT_EQ(verdict(with_events(std::string("[") + bad + "," + good + "]")), "invalid_events") << bad;
    }
}

TEST(Events, TypeMustBeAnIntegerFromZeroToSix)
{
    for (const char* type : {"0", "1", "2", "3", "4", "5", "6", "3.0", "3e0", "6.0", "0.0", "-0", "0.6e1",
                             "60e-1"}) {
        EXPECT_EQ(verdict(with_event(type, "1")), "valid") << type;
    }
    for (const char* type : {"-1", "7", "7.0", "1.5", "6.5", "100", "4294967296", "-0.5", "\"2\"", "null", "true",
                             "[2]", "{}"}) {
        EXPECT_EQ(verdict(with_event(type, "1")), "invalid_events") << type;
    }
}

TEST(Events, TypeMissingIsInvalid)
{
    EXPECT_EQ(verdict(with_events(R"([{"timestamp":1}])")), "invalid_events");
    EXPECT_EQ(verdict(with_events(R"([{"timestamp":1,"data":{"type":2}}])")), "invalid_events");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1},{"timestamp":1}])")), "invalid_events");
}

TEST(Events, TimestampMustBeANumber)
{
    for (const char* timestamp : {"0", "1", "-1", "1.5", "1700000000000.123", "1e12", "-0", "1e300"}) {
        EXPECT_EQ(verdict(with_event("2", timestamp)), "valid") << timestamp;
    }
    for (const char* timestamp : {"\"1\"", "null", "true", "[1]", "{}"}) {
        EXPECT_EQ(verdict(with_event("2", timestamp)), "invalid_events") << timestamp;
    }
}

TEST(Events, TimestampMissingIsInvalid)
{
    EXPECT_EQ(verdict(with_events(R"([{"type":2}])")), "invalid_events");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"data":{"timestamp":1}}])")), "invalid_events");
    EXPECT_EQ(verdict(with_events(R"([{"type":2,"timestamp":1},{"type":2}])")), "invalid_events");
}

TEST(Events, OtherMembersOfAnEventAreFree)
{
    EXPECT_EQ(verdict(with_events(R"([{"data":{"x":[1,{"y":null}]},"type":2,"delay":-5,"timestamp":1}])")), "valid");
}

// ---------------------------------------------------------------------------
// Which error wins

TEST(Precedence, InvalidJsonBeatsEverything)
{
    // Every field is bad, and the text is broken after them.
    EXPECT_EQ(verdict(R"({"session_id":"","seq":-1,"events":[],})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":1,"seq":"x","events":{},"a":1,"a":2})"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"","seq":-1,"events":[]} x)"), "invalid_json");
    EXPECT_EQ(verdict("{\"session_id\":\"\",\"seq\":-1,\"events\":[],\"p\":\"\xFF\"}"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"","seq":-1,"events":[],"d":)" + nested_arrays(1000) + "}"), "invalid_json");
    EXPECT_EQ(verdict(R"({"session_id":"","seq":-1,"events":[{"type":9,"type":9}]})"), "invalid_json");
}

TEST(Precedence, SessionIdBeatsSeqAndEvents)
{
    EXPECT_EQ(verdict(R"({"session_id":"","seq":-1,"events":[]})"), "invalid_session_id");
    EXPECT_EQ(verdict(R"({"events":"x","seq":1.5,"session_id":"a b"})"), "invalid_session_id");
    EXPECT_EQ(verdict(R"({"events":[]})"), "invalid_session_id");
}

TEST(Precedence, SeqBeatsEvents)
{
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":-1,"events":[]})"), "invalid_seq");
    EXPECT_EQ(verdict(R"({"events":[{"type":7}],"session_id":"abc"})"), "invalid_seq");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":"0","events":)" + events_array(10001) + "}"), "invalid_seq");
}

// ---------------------------------------------------------------------------
// Depth

TEST(Depth, RootObjectIsLevelOne)
{
    ValidationLimits limits;
    limits.max_depth = 3;  // root, events array, event object
    EXPECT_EQ(verdict(kValid, limits), "valid");
    limits.max_depth = 2;
    EXPECT_EQ(verdict(kValid, limits), "invalid_json");
    limits.max_depth = 1;
    EXPECT_EQ(verdict("{}", limits), "invalid_session_id");
    EXPECT_EQ(verdict(R"({"session_id":"abc","seq":0,"events":[]})", limits), "invalid_json");
}

TEST(Depth, ExactlyMaxDepthIsValid)
{
    // Root (level 1) plus 127 nested containers: 128 levels, the default.
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(127))), "valid");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_objects(127))), "valid");
    // Root, events, event, then 125 levels of data: 128.
    EXPECT_EQ(verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_arrays(125) + "}]")), "valid");
    EXPECT_EQ(verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_objects(125) + "}]")), "valid");
}

TEST(Depth, OneLevelMoreIsInvalidJson)
{
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(128))), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_objects(128))), "invalid_json");
    EXPECT_EQ(verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_arrays(126) + "}]")),
              "invalid_json");
    EXPECT_EQ(verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_objects(126) + "}]")),
              "invalid_json");
}

TEST(Depth, TheLegacyLayersThousandLevels)
{
    ValidationLimits limits;
    limits.max_depth = 1000;
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(999)), limits), "valid");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(1000)), limits), "invalid_json");
}

TEST(Depth, CustomMaxDepth)
{
    ValidationLimits limits;
    limits.max_depth = 10;
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(9)), limits), "valid");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(10)), limits), "invalid_json");
}

TEST(Depth, AMillionLevelsIsInvalidJsonWithoutCrashing)
{
    const size_t million = 1000000;
    std::string arrays = nested_arrays(million);
    EXPECT_EQ(verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + arrays + "}]")), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + arrays)), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_objects(million))), "invalid_json");
    // Unclosed, and the bare arrays as the whole document.
    EXPECT_EQ(verdict("{\"x\":" + std::string(million, '[')), "invalid_json");
    EXPECT_EQ(verdict(arrays), "invalid_json");
}

// ---------------------------------------------------------------------------
// Size

// Linear, not quadratic, by counting: the duplicate-key checks report their
// work (keys compared, slots probed, entries moved when a table grows) in
// key_check_steps(), which no machine's speed or caches can change. Linear
// work is a few steps per key at any size; a quadratic check would take about
// half the keys per key (12,500 at 25,000 keys). The growth curve in time is
// scripts/bench's to report (bench_parts), not a test's to assert.
template <typename Check>
double steps_per_key(Check check, int keys)
{
    size_t before = key_check_steps();
    check(keys);
    return static_cast<double>(key_check_steps() - before) / keys;
}

std::string numbered_keys(int keys)
{
    std::string out;
    out.reserve(static_cast<size_t>(keys) * 12);
    for (int i = 0; i < keys; i++) {
        out += ",\"k" + std::to_string(i) + "\":0";
    }
    return out;
}

// Each check validates its documents up to five times over (the fast
// validator, then the reference for the refused ones), each about 15 steps
// per key, growing tables included: measured 84-86 at both sizes.
constexpr double kMaxStepsPerKey = 200.0;

TEST(Scale, ManyTopLevelKeysTakeLinearWork)
{
    auto check = [](int keys) {
        std::string extra = numbered_keys(keys);
        EXPECT_EQ(verdict(with_extra(extra)), "valid");
        EXPECT_EQ(verdict(with_extra(extra + ",\"k" + std::to_string(keys - 1) + "\":1")), "invalid_json");
        EXPECT_EQ(verdict(with_extra(extra + ",\"k0\":1")), "invalid_json");
    };
    double small = steps_per_key(check, 25000);
    double large = steps_per_key(check, 400000);
    EXPECT_LT(small, kMaxStepsPerKey);
    EXPECT_LT(large, kMaxStepsPerKey);
    EXPECT_LT(large, small * 2);  // sixteen times the keys, about the same work per key
}

TEST(Scale, ManyKeysInOneEventTakeLinearWork)
{
    auto check = [](int keys) {
        std::string ev = R"({"type":2,"timestamp":1)" + numbered_keys(keys);
        EXPECT_EQ(verdict(with_events("[" + ev + "}]")), "valid");
        EXPECT_EQ(verdict(with_events("[" + ev + ",\"k7\":0}]")), "invalid_json");
    };
    double small = steps_per_key(check, 25000);
    double large = steps_per_key(check, 400000);
    EXPECT_LT(small, kMaxStepsPerKey);
    EXPECT_LT(large, kMaxStepsPerKey);
    EXPECT_LT(large, small * 2);
}

// After one huge event, each small event after it costs its own few keys,
// not the huge one's table again (clearing a hash set walks all its buckets).
TEST(Scale, SmallEventsAfterAHugeOneCostTheirOwnKeys)
{
    const int huge = 100000;
    const int small_events = 9000;  // with the huge one, within max_events
    std::string events = "[" + std::string(R"({"type":2,"timestamp":1)") + numbered_keys(huge) + "}";
    for (int i = 0; i < small_events; i++) {
        events += R"(,{"type":3,"timestamp":2,"data":{}})";
    }
    events += "]";
    // A duplicate key at the very end sends the document to the reference
    // validator too, whose key sets are cleared for every event.
    std::string refused = events.substr(0, events.size() - 2) + R"(,"data":0}])";
    size_t before = key_check_steps();
    EXPECT_EQ(verdict(with_events(events)), "valid");
    EXPECT_EQ(verdict(with_events(refused)), "invalid_json");
    double per_key = static_cast<double>(key_check_steps() - before) / (huge + 3 * small_events);
    EXPECT_LT(per_key, kMaxStepsPerKey);
}

TEST(Scale, ManyKeysMissingARequiredFieldAreStillJudged)
{
    std::string extra;
    for (int i = 0; i < 200000; i++) {
        extra += ",\"k" + std::to_string(i) + "\":0";
    }
    Batch b;
    b.has_seq = false;
    b.extra = extra;
    EXPECT_EQ(verdict(b.json()), "invalid_seq");
}

// ---------------------------------------------------------------------------
// Offsets for enrichment (the bytes are checked in enrichment_test.cpp)

TEST(Offsets, WithoutIngestNothingIsRemovedAndInsertIsAfterTheLastMember)
{
    ValidatedBatch batch = checked_validate_batch(kValid, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(batch.removed_begin, batch.removed_end);
    EXPECT_EQ(batch.insert_at, kValid.size() - 1);  // the closing brace

    std::string spaced = kValid.substr(0, kValid.size() - 1) + " \n }\n";
    batch = checked_validate_batch(spaced, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(batch.removed_begin, batch.removed_end);
    EXPECT_EQ(batch.insert_at, kValid.size() - 1);
}

TEST(Offsets, InsertAfterAScalarLastMember)
{
    for (const char* last : {"\"x\"", "12", "-1.5e3", "true", "null", "\"\\u0041\\\"\"", "{}", "[]"}) {
        std::string doc = kValid.substr(0, kValid.size() - 1) + ",\"last\":" + last + "  }";
        ValidatedBatch batch = checked_validate_batch(doc, {});
        ASSERT_TRUE(batch.valid) << last;
        EXPECT_EQ(batch.insert_at, doc.size() - 3) << last;
        EXPECT_EQ(batch.removed_begin, batch.removed_end) << last;
    }
}

TEST(Offsets, IngestInTheMiddleIsRemovedWithTheCommaBeforeIt)
{
    std::string doc = R"({"session_id":"abc", "_ingest" : {"a":1} ,"seq":0,"events":[{"type":2,"timestamp":1}]})";
    ValidatedBatch batch = checked_validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(doc.substr(batch.removed_begin, batch.removed_end - batch.removed_begin),
              R"(, "_ingest" : {"a":1})");
    EXPECT_EQ(batch.insert_at, doc.size() - 1);
}

TEST(Offsets, IngestFirstIsRemovedUpToTheNextKey)
{
    std::string doc = R"({ "_ingest":{"a":1} , "session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}]})";
    ValidatedBatch batch = checked_validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(doc.substr(batch.removed_begin, batch.removed_end - batch.removed_begin), R"("_ingest":{"a":1} , )");
    EXPECT_EQ(batch.insert_at, doc.size() - 1);
}

TEST(Offsets, IngestLastIsRemovedAndInsertIsBeforeIt)
{
    std::string doc = R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}] ,"_ingest":{} })";
    ValidatedBatch batch = checked_validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(doc.substr(batch.removed_begin, batch.removed_end - batch.removed_begin), R"( ,"_ingest":{})");
    EXPECT_EQ(batch.insert_at, doc.find("] ,") + 1);
}

TEST(Offsets, ScalarIngestAfterAScalarMember)
{
    std::string doc = R"({"events":[{"type":2,"timestamp":1}],"session_id":"abc","_ingest":"x","seq":0})";
    ValidatedBatch batch = checked_validate_batch(doc, {});
    ASSERT_TRUE(batch.valid);
    EXPECT_EQ(doc.substr(batch.removed_begin, batch.removed_end - batch.removed_begin), R"(,"_ingest":"x")");
    EXPECT_EQ(batch.insert_at, doc.size() - 1);
}

// ---------------------------------------------------------------------------
// The two paths: the simdjson DOM pass answers valid batches without a client
// `_ingest`; anything it is unsure of goes to the RapidJSON reference. Every
// document above was already compared through checked_validate_batch(); these pin
// which path answers, and the answers, for the cases where the parsers could
// disagree.

TEST(FastPath, AnswersTheCommonValidBatch)
{
    EXPECT_TRUE(fast_answers_alone(kValid));
    EXPECT_TRUE(fast_answers_alone(" \n" + kValid + " \r\n\t"));
    EXPECT_TRUE(fast_answers_alone(with_extra(",\"page\":{\"a\":[1,2.5,\"x\",null,true]}")));
    EXPECT_EQ(verdict(with_extra(",\"page\":{\"a\":[1,2.5,\"x\",null,true]}")), "valid");
}

TEST(FastPath, TheTestsAboveWentThroughBothPaths)
{
    // Guards against a fast path that never answers (which would pass every
    // comparison); test order within this file puts the others first.
    fast_answers_alone(kValid);
    ValidatedBatch b = checked_validate_batch(kValid, {});
    EXPECT_TRUE(b.valid);
    EXPECT_GT(fast_answers, 0u);
}

TEST(FastPath, SessionIdIsUnescapedAsTheReferenceStoresIt)
{
    std::string doc = with_session_id(R"("a\u0062c\/")");
    EXPECT_EQ(verdict(doc), "invalid_session_id");  // '/' is not allowed
    doc = with_session_id(R"("a\u0062c-\u005F")");
    EXPECT_TRUE(fast_answers_alone(doc));
    ValidatedBatch b = checked_validate_batch(doc, {});
    EXPECT_TRUE(b.valid);
    EXPECT_EQ(b.session_id, "abc-_");
}

TEST(FastPath, ClientIngestGoesToTheReference)
{
    for (const std::string& doc :
         {with_extra(",\"_ingest\":{\"x\":1}"), with_extra(",\"\\u005fingest\":1"),
          std::string(R"({"_ingest":1,"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}]})")}) {
        EXPECT_FALSE(fast_answers_alone(doc)) << doc;
        ValidatedBatch b = checked_validate_batch(doc, {});
        EXPECT_TRUE(b.valid) << doc;
        EXPECT_LT(b.removed_begin, b.removed_end) << doc;
    }
}

TEST(FastPath, LoneSurrogatesAreRefusedByBoth)
{
    for (const char* raw : {"\\ud800", "\\udc00", "\\uDFFF", "\\ud800\\u0041", "\\ud800\\ud800", "x\\udbff"}) {
        std::string doc = with_page_string(raw);
        EXPECT_FALSE(fast_answers_alone(doc)) << doc;
        EXPECT_EQ(verdict(doc), "invalid_json") << doc;
    }
    std::string key = with_extra(",\"\\udc00\":1");
    EXPECT_FALSE(fast_answers_alone(key));
    EXPECT_EQ(verdict(key), "invalid_json");
    std::string pair = with_page_string("\\ud83d\\ude00");
    EXPECT_TRUE(fast_answers_alone(pair));
    EXPECT_EQ(verdict(pair), "valid");
}

TEST(FastPath, SeqWrittenAsADoubleGoesToTheReference)
{
    // Whole, but written as doubles: the reference judges them.
    for (const char* seq : {"1.0", "1e0", "1E2", "-0.0", "0.0", "1e-400"}) {
        EXPECT_FALSE(fast_answers_alone(with_seq(seq))) << seq;
        EXPECT_EQ(verdict(with_seq(seq)), "valid") << seq;
    }
    EXPECT_EQ(verdict(with_seq("2.5")), "invalid_seq");
    EXPECT_FALSE(fast_answers_alone(with_seq("5e-324")));
    EXPECT_EQ(verdict(with_seq("5e-324")), "invalid_seq");  // the smallest subnormal, not zero
    EXPECT_EQ(verdict(with_seq("1e400")), "invalid_json");
    EXPECT_EQ(verdict(with_seq("0e400")), "invalid_json");
    EXPECT_EQ(verdict(with_seq("-1")), "invalid_seq");
    // Integers are exact in both parsers: the simdjson path answers.
    for (const char* seq : {"0", "-0", "42", "9223372036854775807", "9223372036854775808", "18446744073709551615"}) {
        EXPECT_TRUE(fast_answers_alone(with_seq(seq))) << seq;
        EXPECT_EQ(verdict(with_seq(seq)), "valid") << seq;
    }
    // Beyond 64 bits simdjson refuses and RapidJSON reads a double.
    EXPECT_FALSE(fast_answers_alone(with_seq("18446744073709551616")));
    EXPECT_EQ(verdict(with_seq("18446744073709551616")), "valid");
    EXPECT_EQ(verdict(with_seq("-9223372036854775809")), "invalid_seq");
}

TEST(FastPath, TypeWrittenAsADoubleGoesToTheReference)
{
    for (const char* type : {"6.0", "0e0", "2E0"}) {
        EXPECT_FALSE(fast_answers_alone(with_event(type, "1"))) << type;
        EXPECT_EQ(verdict(with_event(type, "1")), "valid") << type;
    }
    EXPECT_EQ(verdict(with_event("6.5", "1")), "invalid_events");
    EXPECT_EQ(verdict(with_event("7", "1")), "invalid_events");
    EXPECT_TRUE(fast_answers_alone(with_event("6", "1")));
    EXPECT_TRUE(fast_answers_alone(with_event("0", "1")));
}

TEST(FastPath, DoublesThatCouldBeReadDifferentlyGoToTheReference)
{
    // RapidJSON refuses an exponent above 308 even on a zero, and may round a
    // value close to DBL_MAX up to infinity; simdjson takes both.
    for (const char* ts : {"0e400", "0.0e309", "-0E+999", "1.7976931348623157e308", "-1.7976931348623157e308",
                           "1e300", "0.0", "-0.0"}) {
        EXPECT_FALSE(fast_answers_alone(with_event("2", ts))) << ts;
        EXPECT_FALSE(fast_answers_alone(with_extra(std::string(",\"x\":[") + ts + "]"))) << ts;
        verdict(with_event("2", ts));  // compared with the reference inside
        verdict(with_extra(std::string(",\"x\":[") + ts + "]"));
    }
    EXPECT_EQ(verdict(with_event("2", "0e400")), "invalid_json");
    EXPECT_EQ(verdict(with_event("2", "1e400")), "invalid_json");
    EXPECT_EQ(verdict(with_event("2", "0.0")), "valid");
    // Ordinary doubles: the simdjson path answers.
    for (const char* ts : {"1700000000000.5", "1e21", "-2.5e-300", "0.1", "1e-400"}) {
        verdict(with_event("2", ts));
    }
    EXPECT_TRUE(fast_answers_alone(with_event("2", "1700000000000.5")));
    EXPECT_TRUE(fast_answers_alone(with_event("2", "1e21")));
}

TEST(FastPath, RefusedDocumentsGoToTheReference)
{
    std::string nul = kValid;
    nul.insert(nul.size() - 1, std::string("\0", 1));
    std::string nul_after = kValid + std::string("\0", 1);
    for (const std::string& doc :
         {kValid + "x", kValid + "{}", nul, nul_after, std::string("[") + kValid + "]", std::string(""),
          std::string("   "), with_extra(",\"seq\":1"), with_extra(",\"s\\u0065q\":1"),
          with_events(R"([{"type":2,"timestamp":1,"t\u0079pe":2}])"), with_page_string("\xc0\xaf"),
          with_page_string("\xed\xa0\x80"), with_session_id("\"\""), with_events("[]"),
          with_events(R"([{"type":2}])")}) {
        EXPECT_FALSE(fast_answers_alone(doc)) << doc;
        EXPECT_FALSE(checked_validate_batch(doc, {}).valid) << doc;
    }
}

TEST(FastPath, DepthExactlyAtTheLimitIsAnsweredByTheFastPath)
{
    EXPECT_TRUE(fast_answers_alone(with_extra(",\"x\":" + nested_arrays(127))));
    EXPECT_TRUE(fast_answers_alone(with_extra(",\"x\":" + nested_objects(127))));
    EXPECT_TRUE(fast_answers_alone(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_objects(125) + "}]")));
    EXPECT_FALSE(fast_answers_alone(with_extra(",\"x\":" + nested_arrays(128))));
    EXPECT_FALSE(fast_answers_alone(with_extra(",\"x\":" + nested_objects(128))));
    for (unsigned depth = 1; depth <= 6; depth++) {
        ValidationLimits limits;
        limits.max_depth = depth;
        for (size_t levels = 0; levels <= 6; levels++) {
            verdict(with_extra(",\"x\":" + nested_arrays(levels)), limits);
            verdict(with_extra(",\"x\":" + nested_objects(levels)), limits);
            verdict(with_events("[{\"type\":2,\"timestamp\":1,\"data\":" + nested_arrays(levels) + "}]"), limits);
        }
    }
    // Alternating limits: the reused parser keeps its largest depth, the walk
    // applies the limit asked for.
    ValidationLimits deep;
    deep.max_depth = 1000;
    ValidationLimits shallow;
    shallow.max_depth = 5;
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(999)), deep), "valid");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(5)), shallow), "invalid_json");
    EXPECT_EQ(verdict(with_extra(",\"x\":" + nested_arrays(4)), shallow), "valid");
}

TEST(FastPath, MaxEventsIsTheReferencesAnswer)
{
    ValidationLimits limits;
    limits.max_events = 2;
    EXPECT_TRUE(fast_answers_alone(with_events(events_array(2)), limits));
    EXPECT_FALSE(fast_answers_alone(with_events(events_array(3)), limits));
    EXPECT_EQ(verdict(with_events(events_array(3)), limits), "invalid_events");
}

TEST(FastPath, OffsetsMatchTheReferenceWhateverTheWhiteSpace)
{
    for (const std::string& doc :
         {std::string(R"({"session_id":"abc","seq":0,"events":[{"type":2,"timestamp":1}]})"),
          std::string(" {\n \"session_id\" : \"abc\" ,\n \"seq\" : 0 ,\n \"events\" : [ {\"type\":2,\"timestamp\":1} ] \n}\n\n"),
          std::string(R"({"events":[{"type":2,"timestamp":1}],"seq":0,"session_id":"abc","z":"}"})"),
          std::string(R"({"events":[{"type":2,"timestamp":1}],"seq":0,"session_id":"abc","z":{}	})")}) {
        ASSERT_TRUE(fast_answers_alone(doc)) << doc;
        ValidatedBatch b = checked_validate_batch(doc, {});
        ASSERT_TRUE(b.valid) << doc;
        EXPECT_EQ(b.removed_begin, 0u);
        EXPECT_EQ(b.removed_end, 0u);
        EXPECT_EQ(doc[b.insert_at - 1] == '}' || doc[b.insert_at - 1] == ']' || doc[b.insert_at - 1] == '"' ||
                      doc[b.insert_at - 1] == '0',
                  true)
            << doc;
    }
}
