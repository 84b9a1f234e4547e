// bench_parts: what one request's work costs, part by part, on the bench's
// payloads, measured in isolation (one thread, no nginx, no Redis).
//
//   bench_parts [--seconds S] [--rounds N] [--json] DIR NAME...
//
// reads DIR/NAME.json.gz for each NAME (scripts/gen-payloads writes them)
// and prints nanoseconds per payload for:
//
//   the unavoidable parts (issue 4's reference for "within 1.5x"):
//     inflate            zlib alone: inflateInit2 + inflate + inflateEnd
//                        into a buffer of the right size
//     validate           one RapidJSON pass with a handler that does
//                        nothing, with the module's flags (iterative,
//                        UTF-8 validation) on a NUL-terminated string
//   for comparison:
//     inflate_reuse      zlib with a stream kept from one payload to the
//                        next (inflateReset2 instead of init/end)
//     validate_recursive RapidJSON's default recursive parser, same handler
//     validate_bounded   as `validate`, but through a stream that checks
//                        the end on every byte, as the module's does
//     memcpy_decoded     copying the decoded document once
//   an alternative inflater, when built with libdeflate (libdeflate-dev):
//     inflate_libdeflate libdeflate_gzip_decompress, one shot, into a buffer
//                        of the limit's size (it fails rather than write
//                        past it), the decompressor kept
//   an alternative validator, when built with simdjson (libsimdjson-dev):
//     simdjson_validate  one simdjson DOM parse (strict JSON, UTF-8), the
//                        parser kept from one payload to the next
//     simdjson_contract  that parse plus the contract's checks on the DOM
//                        (see simdjson_contract() below)
//   the module's own code (src/core):
//     BodyDecoder        expect_input + feed + finish, as the glue calls it
//     validate_batch     the contract's one-pass validation
//     enrich             ingest_member + QueueElement + format_rpush (the
//                        RESP command the glue hands to hiredis)
//     core_total         the three above, in sequence
//     budget_known       what a daily budget adds to an admitted session's
//                        later batch: the UTC day and the worker's memory of
//                        the day's decisions (10,000 sessions), no Redis
//
// Times are this thread's CPU time (time spent waiting for the CPU is not
// counted: the bench's machine may be shared). Each part is sampled N times
// (default 15) for about S seconds (default 0.05) each, all parts in turn
// in every round; the table shows the median and the minimum per payload.
// With --json, one JSON object per line instead ("part" and "part_min").

#include <rapidjson/reader.h>
#include <rapidjson/stream.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef RECORDING_BENCH_SIMDJSON
#include <simdjson.h>
#endif
#ifdef RECORDING_BENCH_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "batch_validator.h"
#include "body_decoder.h"
#include "budget.h"
#include "enrichment.h"
#include "memory_policy.h"
#include "redis_protocol.h"

namespace {

// This thread's CPU time, so that time the scheduler gives to other
// processes (the bench's machine is shared) is not counted.
double cpu_seconds()
{
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

volatile size_t sink;  // keeps results observable

std::string read_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw std::runtime_error("cannot read " + path);
    }
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// How many calls of f take about `seconds` of CPU time (warming up too).
size_t calibrate(const std::function<void()>& f, double seconds)
{
    for (size_t n = 1;; n *= 4) {
        double t0 = cpu_seconds();
        for (size_t i = 0; i < n; i++) {
            f();
        }
        double s = cpu_seconds() - t0;
        if (s >= seconds / 4) {
            return std::max<size_t>(1, static_cast<size_t>(static_cast<double>(n) * seconds / s));
        }
    }
}

// CPU nanoseconds per call of f, over n calls.
double sample_ns(const std::function<void()>& f, size_t n)
{
    double t0 = cpu_seconds();
    for (size_t i = 0; i < n; i++) {
        f();
    }
    return (cpu_seconds() - t0) * 1e9 / static_cast<double>(n);
}

// --- zlib alone -----------------------------------------------------------

size_t inflate_fresh(const std::string& gz, std::vector<char>& out)
{
    z_stream s{};
    if (inflateInit2(&s, MAX_WBITS + 32) != Z_OK) {
        throw std::runtime_error("inflateInit2");
    }
    s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
    s.avail_in = static_cast<uInt>(gz.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    int rc = inflate(&s, Z_FINISH);
    size_t n = out.size() - s.avail_out;
    inflateEnd(&s);
    if (rc != Z_STREAM_END) {
        throw std::runtime_error("inflate");
    }
    return n;
}

class ReusedInflater {
public:
    ReusedInflater()
    {
        if (inflateInit2(&s_, MAX_WBITS + 32) != Z_OK) {
            throw std::runtime_error("inflateInit2");
        }
    }
    ~ReusedInflater() { inflateEnd(&s_); }

    size_t run(const std::string& gz, std::vector<char>& out)
    {
        inflateReset2(&s_, MAX_WBITS + 32);
        s_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
        s_.avail_in = static_cast<uInt>(gz.size());
        s_.next_out = reinterpret_cast<Bytef*>(out.data());
        s_.avail_out = static_cast<uInt>(out.size());
        if (inflate(&s_, Z_FINISH) != Z_STREAM_END) {
            throw std::runtime_error("inflate");
        }
        return out.size() - s_.avail_out;
    }

private:
    z_stream s_{};
};

// --- RapidJSON alone --------------------------------------------------------

// A stream over [begin, end) that checks the end on every byte, like the
// module's DocumentStream (see src/core/batch_validator_reference.cpp).
class BoundedStream {
public:
    using Ch = char;
    BoundedStream(const char* b, size_t n) : begin_(b), cur_(b), end_(b + n) {}
    Ch Peek() const { return cur_ < end_ ? *cur_ : '\0'; }
    Ch Take() { return cur_ < end_ ? *cur_++ : '\0'; }
    size_t Tell() const { return static_cast<size_t>(cur_ - begin_); }
    Ch* PutBegin() { return nullptr; }
    void Put(Ch) {}
    void Flush() {}
    size_t PutEnd(Ch*) { return 0; }

private:
    const char* begin_;
    const char* cur_;
    const char* end_;
};

}  // namespace

namespace rapidjson {
template <>
struct StreamTraits<BoundedStream> {
    enum { copyOptimization = 1 };
};
}  // namespace rapidjson

namespace {

template <unsigned Flags, class Stream>
bool rapidjson_pass(Stream& stream)
{
    rapidjson::BaseReaderHandler<> handler;  // accepts everything, does nothing
    rapidjson::Reader reader;
    return !reader.Parse<Flags>(stream, handler).IsError();
}

constexpr unsigned kModuleFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;

#ifdef RECORDING_BENCH_SIMDJSON
// What validate_batch checks, done on simdjson's DOM: a root object without
// duplicate keys, session_id, seq, 1..10000 events, each an object without
// duplicate keys with an integer type 0..6 and a numeric timestamp. (Not a
// drop-in: it does not find a client's `_ingest` member's byte offsets nor
// is it checked against the contract's edge cases; it is here to price the
// work.)
bool has_duplicate(const std::string_view* keys, size_t n, std::string_view key)
{
    for (size_t i = 0; i < n; i++) {
        if (keys[i] == key) {
            return true;
        }
    }
    return false;
}

bool is_whole_number(simdjson::dom::element v, double lo, double hi)
{
    double d;
    if (v.is_int64() || v.is_uint64()) {
        d = static_cast<double>(v.is_int64() ? int64_t(v) : static_cast<int64_t>(uint64_t(v)));
    } else if (v.is_double()) {
        d = double(v);
        if (d != static_cast<double>(static_cast<int64_t>(d))) {
            return false;
        }
    } else {
        return false;
    }
    return d >= lo && d <= hi;
}

bool simdjson_contract(simdjson::dom::parser& parser, const char* data, size_t size)
{
    simdjson::dom::element doc;
    if (parser.parse(data, size, false).get(doc) != simdjson::SUCCESS) {
        return false;
    }
    simdjson::dom::object root;
    if (doc.get_object().get(root) != simdjson::SUCCESS) {
        return false;
    }
    std::vector<std::string_view> keys;
    bool session_ok = false, seq_ok = false, events_ok = false;
    for (auto field : root) {
        if (has_duplicate(keys.data(), keys.size(), field.key)) {
            return false;
        }
        keys.push_back(field.key);
        if (field.key == "session_id") {
            std::string_view id;
            session_ok = field.value.get_string().get(id) == simdjson::SUCCESS && !id.empty() && id.size() <= 64;
        } else if (field.key == "seq") {
            seq_ok = is_whole_number(field.value, 0, 1e300);
        } else if (field.key == "events") {
            simdjson::dom::array events;
            if (field.value.get_array().get(events) != simdjson::SUCCESS) {
                return false;
            }
            size_t count = 0;
            for (simdjson::dom::element e : events) {
                simdjson::dom::object event;
                if (++count > 10000 || e.get_object().get(event) != simdjson::SUCCESS) {
                    return false;
                }
                std::string_view event_keys[16];
                size_t n = 0;
                bool type_ok = false, timestamp_ok = false;
                for (auto f : event) {
                    if (has_duplicate(event_keys, n, f.key)) {
                        return false;
                    }
                    if (n < 16) {
                        event_keys[n++] = f.key;
                    }
                    if (f.key == "type") {
                        type_ok = is_whole_number(f.value, 0, 6);
                    } else if (f.key == "timestamp") {
                        timestamp_ok = f.value.is_number();
                    }
                }
                if (!type_ok || !timestamp_ok) {
                    return false;
                }
            }
            events_ok = count > 0;
        }
    }
    return session_ok && seq_ok && events_ok;
}
#endif

// --- the module's core ------------------------------------------------------

recording::IngestFields sample_fields()
{
    recording::IngestFields f;
    f.site_id = "1";
    f.received_at_ms = 1718100061000;
    f.ip = "127.0.0.1";
    f.user_agent = std::string_view(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36");
    f.country = std::string_view("DE");
    f.request_id = "5f0b2a8c9d1e4f3a7b6c5d4e3f2a1b0c";
    return f;
}

struct Result {
    std::string payload;
    std::string part;
    double ns;
};

}  // namespace

int main(int argc, char** argv)
{
    // As a worker allocates: large blocks reused, not mapped afresh (the
    // module's init_process does the same).
    recording::keep_freed_memory();
    double seconds = 0.05;  // of CPU time per sample
    int rounds = 15;
    bool json = false;
    std::string dir;
    std::vector<std::string> names;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--seconds" && i + 1 < argc) {
            seconds = std::atof(argv[++i]);
        } else if (a == "--rounds" && i + 1 < argc) {
            rounds = std::max(1, std::atoi(argv[++i]));
        } else if (a == "--json") {
            json = true;
        } else if (dir.empty()) {
            dir = a;
        } else {
            names.push_back(a);
        }
    }
    if (dir.empty() || names.empty()) {
        std::fprintf(stderr, "usage: bench_parts [--seconds S] [--rounds N] [--json] DIR NAME...\n");
        return 2;
    }
    double round_s = seconds;
#ifdef RECORDING_BENCH_SIMDJSON
    if (!json) {
        std::fprintf(stderr, "simdjson implementation: %s\n",
                     simdjson::get_active_implementation()->name().c_str());
    }
#endif

    std::vector<Result> results;
    for (const std::string& name : names) {
        const std::string gz = read_file(dir + "/" + name + ".json.gz");
        std::vector<char> out(64 << 20);
        std::string decoded(out.data(), inflate_fresh(gz, out));
        out.resize(decoded.size() + 1);
        recording::ValidatedBatch check = recording::validate_batch(decoded, {});
        if (!check.valid) {
            std::fprintf(stderr, "%s: not a valid batch\n", name.c_str());
            return 1;
        }
        // Every part is timed in each round, in turn, so that a disturbance
        // (the machine is shared) falls on all of them alike.
        std::vector<std::pair<const char*, std::function<void()>>> parts;
        auto add = [&](const char* part, std::function<void()> f) { parts.emplace_back(part, std::move(f)); };

        add("inflate", [&] { sink = inflate_fresh(gz, out); });
        ReusedInflater reused;
        add("inflate_reuse", [&] { sink = reused.run(gz, out); });
        add("validate", [&] {
            rapidjson::StringStream s(decoded.c_str());
            sink = rapidjson_pass<kModuleFlags>(s);
        });
        add("validate_recursive", [&] {
            rapidjson::StringStream s(decoded.c_str());
            sink = rapidjson_pass<rapidjson::kParseValidateEncodingFlag>(s);
        });
        add("validate_bounded", [&] {
            BoundedStream s(decoded.data(), decoded.size());
            sink = rapidjson_pass<kModuleFlags>(s);
        });
#ifdef RECORDING_BENCH_LIBDEFLATE
        libdeflate_decompressor* ld = libdeflate_alloc_decompressor();
        std::vector<char> limit_buffer((2 << 20) + 1);
        add("inflate_libdeflate", [&] {
            size_t n = 0;
            if (libdeflate_gzip_decompress(ld, gz.data(), gz.size(), limit_buffer.data(), limit_buffer.size(), &n)
                != LIBDEFLATE_SUCCESS) {
                throw std::runtime_error("libdeflate");
            }
            sink = n;
        });
#endif
#ifdef RECORDING_BENCH_SIMDJSON
        simdjson::dom::parser parser;
        std::string padded = decoded + std::string(simdjson::SIMDJSON_PADDING, '\0');
        if (!simdjson_contract(parser, padded.data(), decoded.size())) {
            std::fprintf(stderr, "%s: simdjson_contract refuses it\n", name.c_str());
            return 1;
        }
        add("simdjson_validate", [&] {
            simdjson::dom::element doc;
            sink = parser.parse(padded.data(), decoded.size(), false).get(doc) == simdjson::SUCCESS;
        });
        add("simdjson_contract", [&] { sink = simdjson_contract(parser, padded.data(), decoded.size()); });
#endif
        add("memcpy_decoded", [&] {
            std::memcpy(out.data(), decoded.data(), decoded.size());
            sink = static_cast<size_t>(out[decoded.size() / 2]);
        });

        auto decode = [&](recording::BodyDecoder& d) {
            d.expect_input(gz.size());
            d.feed(gz.data(), gz.size());
            if (d.finish() != recording::DecodeStatus::ok) {
                throw std::runtime_error("BodyDecoder");
            }
        };
        add("BodyDecoder", [&] {
            recording::BodyDecoder d(recording::ContentEncoding::compressed, 2 << 20);
            decode(d);
            sink = d.decoded().size();
        });
        recording::ValidationLimits limits;
        add("validate_batch", [&] { sink = recording::validate_batch(decoded, limits).insert_at; });
        const recording::IngestFields fields = sample_fields();
        add("enrich", [&] {
            std::string ingest = recording::ingest_member(fields);
            recording::QueueElement element(decoded, check, ingest);
            sink = recording::format_rpush(recording::queue_key(1), element).size();
        });
        add("core_total", [&] {
            recording::BodyDecoder d(recording::ContentEncoding::compressed, 2 << 20);
            decode(d);
            recording::ValidatedBatch b = recording::validate_batch(d.decoded(), limits);
            std::string ingest = recording::ingest_member(fields);
            recording::QueueElement element(d.decoded(), b, ingest);
            sink = recording::format_rpush(recording::queue_key(1), element).size();
        });
        recording::BudgetDecisions decisions;
        constexpr std::string_view kServer = "127.0.0.1:6379";
        for (int i = 0; i < 10000; i++) {
            decisions.remember(kServer, "42", "session-" + std::to_string(i), 20429, true);
        }
        decisions.remember(kServer, "42", check.session_id, 20429, true);
        const int64_t now_ms = 20429LL * recording::kDayMs + 3600000;
        add("budget_known", [&] {
            sink = decisions.find(kServer, "42", check.session_id, recording::utc_day(now_ms)).value_or(false);
        });
        std::vector<size_t> calls;
        for (auto& [part, f] : parts) {
            calls.push_back(calibrate(f, round_s));
        }
        std::vector<std::vector<double>> samples(parts.size());
        for (int round = 0; round < rounds; round++) {
            for (size_t i = 0; i < parts.size(); i++) {
                samples[i].push_back(sample_ns(parts[i].second, calls[i]));
            }
            if (!json) {
                std::fprintf(stderr, ".");
            }
        }
        for (size_t i = 0; i < parts.size(); i++) {
            std::sort(samples[i].begin(), samples[i].end());
            results.push_back({name, parts[i].first, samples[i][samples[i].size() / 2]});
            results.push_back({name, std::string(parts[i].first) + "_min", samples[i].front()});
        }
        if (!json) {
            std::fprintf(stderr, "\n");
        }
#ifdef RECORDING_BENCH_LIBDEFLATE
        libdeflate_free_decompressor(ld);
#endif
        results.push_back({name, "decoded_bytes", static_cast<double>(decoded.size())});
        results.push_back({name, "encoded_bytes", static_cast<double>(gz.size())});
    }

    if (json) {
        for (const Result& r : results) {
            std::printf("{\"payload\":\"%s\",\"part\":\"%s\",\"value\":%.1f}\n", r.payload.c_str(),
                        r.part.c_str(), r.ns);
        }
        return 0;
    }
    std::printf("%-20s", "CPU ns per payload");
    for (const std::string& name : names) {
        std::printf(" %13s %13s", (name + " med").c_str(), "min");
    }
    std::printf("\n");
    std::vector<std::string> parts;
    for (const Result& r : results) {
        bool is_min = r.part.size() > 4 && r.part.compare(r.part.size() - 4, 4, "_min") == 0;
        if (!is_min && std::find(parts.begin(), parts.end(), r.part) == parts.end()) {
            parts.push_back(r.part);
        }
    }
    auto value = [&](const std::string& name, const std::string& part) {
        for (const Result& r : results) {
            if (r.payload == name && r.part == part) {
                return r.ns;
            }
        }
        return -1.0;
    };
    for (const std::string& part : parts) {
        std::printf("%-20s", part.c_str());
        for (const std::string& name : names) {
            double min = value(name, part + "_min");
            std::printf(" %13.0f", value(name, part));
            if (min >= 0) {
                std::printf(" %13.0f", min);
            } else {
                std::printf(" %13s", "");
            }
        }
        std::printf("\n");
    }
    return 0;
}
