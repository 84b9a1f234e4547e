// ws_load: a WebSocket load generator for scripts/bench (wrk speaks no
// WebSocket): the module's `recording_websocket on;` path, driven the way
// wrk drives the POST one.
//
//   ws_load [-c C] [-d S] [-w W] [--timeout S] [-H 'Name: value']... PORT PATH PAYLOAD
//
// Opens C connections to 127.0.0.1:PORT, upgrades each with a GET of PATH
// (RFC 6455, version 13; the Sec-WebSocket-Accept answer checked), then for
// S seconds keeps every connection busy: the PAYLOAD file's bytes (gzip, as
// the recorder sends) as one masked binary message, up to W of them
// unacknowledged per connection (default 1: one request at a time, as wrk
// does per connection). After S seconds no more is sent; what is in flight
// is waited for, then each connection closes (1000) and waits for the
// server's close.
//
// Each acknowledgement ({"n":N,"status":"..."} or {"n":N,"error":"..."})
// must come in message order; it is counted by its status or error name.
// The summary, on stdout, is one JSON object:
//
//   {"sent":..,"acked":..,"unacked":..,"statuses":{"queued":..,...},
//    "errors":{"connect":..,"handshake":..,"protocol":..,"closed":..,"timeout":..},
//    "connections":C,"upgraded":..,"seconds":..,"latency_us":{"p50":..,...},
//    "first_error":".."}
//
// "seconds" runs from the first connect to the last acknowledgement, or to
// the end of the S seconds if later (or to the last connection's failure). Errors end only their connection;
// the exit status is 0 whenever the run happened (scripts/bench reads the
// JSON), 2 on bad arguments or an unreadable payload.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
constexpr uint8_t kText = 0x1, kBinary = 0x2, kClose = 0x8, kPing = 0x9, kPong = 0xA;
constexpr size_t kReadSize = 65536;
constexpr size_t kMaxHandshake = 16384;  // a 101 answer is a few hundred bytes

struct Options {
    int port = 0;
    std::string path;
    std::string payload_file;
    int connections = 16;
    double duration = 10;
    size_t window = 1;
    double timeout = 10;
    std::vector<std::string> headers;
};

// What the run saw, over all connections.
struct Tally {
    uint64_t sent = 0;
    uint64_t acked = 0;
    uint64_t upgraded = 0;
    std::map<std::string, uint64_t> statuses;
    std::map<std::string, uint64_t> errors{
        {"connect", 0}, {"handshake", 0}, {"protocol", 0}, {"closed", 0}, {"timeout", 0}};
    std::string first_error;
    std::vector<uint32_t> latencies_us;
    Clock::time_point last_ack{};
};

enum class Phase { connecting, handshake, open, closing, done };

struct Connection {
    int fd = -1;
    Phase phase = Phase::connecting;
    std::string out;  // bytes to send: out[written..]
    size_t written = 0;
    std::string in;   // bytes read, not yet parsed
    std::string accept;             // the Sec-WebSocket-Accept we expect
    uint64_t next_ack = 1;          // the n the next acknowledgement must carry
    std::deque<Clock::time_point> in_flight;  // send times of unacknowledged messages
    Clock::time_point last_progress{};
    uint32_t events = 0;            // the epoll interest now registered
};

// --- small helpers -------------------------------------------------------------

bool parse_number(const char *s, double *out)
{
    char *end = nullptr;
    errno = 0;
    double v = std::strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        return false;
    }
    *out = v;
    return true;
}

std::string base64(const unsigned char *data, size_t size)
{
    std::string out(4 * ((size + 2) / 3), '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()), data, static_cast<int>(size));
    out.resize(static_cast<size_t>(n));
    return out;
}

// Sec-WebSocket-Accept for a key: base64(SHA-1(key + the RFC's GUID)).
std::string accept_for(const std::string &key)
{
    std::string input = key + std::string(kGuid);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_Digest(input.data(), input.size(), digest, &size, EVP_sha1(), nullptr) != 1) {
        return std::string();  // never matches: the handshake fails, loudly
    }
    return base64(digest, size);
}

std::string lower(std::string_view s)
{
    std::string out(s);
    for (char &c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

std::string_view trim(std::string_view s)
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
        s.remove_suffix(1);
    }
    return s;
}

// A status or error name goes into the JSON as a key: only the contract's
// kind of names ([a-z0-9_]) are taken as they are.
bool is_name(std::string_view s)
{
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    });
}

std::string json_string(std::string_view s)
{
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out + "\"";
}

// --- frames ----------------------------------------------------------------------

// Appends one client frame (FIN set, masked: a server must close a
// connection whose client frames are not) of `opcode` carrying data.
void append_frame(std::string &out, uint8_t opcode, std::string_view data, std::mt19937 &rng)
{
    const uint64_t size = data.size();
    out += static_cast<char>(0x80 | opcode);
    if (size < 126) {
        out += static_cast<char>(0x80 | size);
    } else if (size <= 0xFFFF) {
        out += static_cast<char>(0x80 | 126);
        out += static_cast<char>(size >> 8);
        out += static_cast<char>(size & 0xFF);
    } else {
        out += static_cast<char>(0x80 | 127);
        for (int shift = 56; shift >= 0; shift -= 8) {
            out += static_cast<char>((size >> shift) & 0xFF);
        }
    }
    const uint32_t key_value = static_cast<uint32_t>(rng());
    unsigned char key[4];
    std::memcpy(key, &key_value, sizeof(key));
    out.append(reinterpret_cast<const char *>(key), sizeof(key));

    // Masking eight bytes at a time: the load generator shares its CPU with
    // Redis, and a snapshot message is 70 KB.
    const size_t at = out.size();
    out.resize(at + size);
    char *dst = out.data() + at;
    uint64_t mask8;
    std::memcpy(&mask8, key, 4);
    std::memcpy(reinterpret_cast<char *>(&mask8) + 4, key, 4);
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        std::memcpy(&word, data.data() + i, 8);
        word ^= mask8;
        std::memcpy(dst + i, &word, 8);
    }
    for (; i < size; ++i) {
        dst[i] = static_cast<char>(data[i] ^ static_cast<char>(key[i % 4]));
    }
}

// A frame from the server, parsed from the front of a buffer.
struct Frame {
    bool fin = false;
    uint8_t opcode = 0;
    bool masked = false;
    std::string_view payload;
    size_t length = 0;  // header + payload: what to consume
};

// The frame at the front of `in`, once it is all there.
std::optional<Frame> next_frame(std::string_view in)
{
    if (in.size() < 2) {
        return std::nullopt;
    }
    Frame f;
    const auto b0 = static_cast<unsigned char>(in[0]), b1 = static_cast<unsigned char>(in[1]);
    f.fin = (b0 & 0x80) != 0;
    f.opcode = b0 & 0x0F;
    f.masked = (b1 & 0x80) != 0;
    uint64_t size = b1 & 0x7F;
    size_t header = 2;
    const size_t extra = size == 126 ? 2 : size == 127 ? 8 : 0;
    if (in.size() < header + extra) {
        return std::nullopt;
    }
    if (extra != 0) {
        size = 0;
        for (size_t i = 0; i < extra; ++i) {
            size = (size << 8) | static_cast<unsigned char>(in[header + i]);
        }
        header += extra;
    }
    if (f.masked) {
        header += 4;  // refused by the caller: a server's frames are never masked
    }
    if (in.size() < header || in.size() - header < size) {
        return std::nullopt;
    }
    f.payload = in.substr(header, size);
    f.length = header + size;
    return f;
}

// --- the load ----------------------------------------------------------------------

class Load {
public:
    Load(const Options &options, std::string payload)
        : options_(options), payload_(std::move(payload)), rng_(std::random_device{}()),
          connections_(static_cast<size_t>(options.connections))
    {
    }

    int run();

private:
    void start_connection(size_t index);
    void on_event(size_t index, uint32_t events);
    void on_writable(Connection &c);
    void on_readable(Connection &c);
    void begin_handshake(Connection &c);
    bool take_handshake(Connection &c);
    bool take_frames(Connection &c);
    bool take_ack(Connection &c, std::string_view text);
    void fill_window(Connection &c);
    void begin_close(Connection &c);
    bool flush(Connection &c);
    void watch(Connection &c);
    void fail(Connection &c, const char *kind, const std::string &why);
    void finish(Connection &c);
    void tick(Clock::time_point now);
    void print_summary(Clock::time_point end) const;

    const Options &options_;
    const std::string payload_;
    std::mt19937 rng_;
    std::vector<Connection> connections_;
    int epoll_ = -1;
    size_t live_ = 0;
    bool stopping_ = false;
    Clock::time_point start_{};
    Clock::time_point deadline_{};
    Tally tally_;
};

void Load::fail(Connection &c, const char *kind, const std::string &why)
{
    tally_.errors[kind] += 1;
    if (tally_.first_error.empty()) {
        tally_.first_error = std::string(kind) + ": " + why;
    }
    finish(c);
}

void Load::finish(Connection &c)
{
    if (c.phase == Phase::done) {
        return;
    }
    if (c.fd >= 0) {
        epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
        close(c.fd);
        c.fd = -1;
    }
    c.phase = Phase::done;
    live_ -= 1;
}

// Registers the interest the connection has now: always reading, writing
// only while bytes wait (level-triggered, so a full socket wakes us later).
void Load::watch(Connection &c)
{
    uint32_t want = c.phase == Phase::connecting ? EPOLLOUT : EPOLLIN;
    if (c.written < c.out.size()) {
        want |= EPOLLOUT;
    }
    if (want == c.events) {
        return;
    }
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = static_cast<uint64_t>(&c - connections_.data());
    epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
    c.events = want;
}

void Load::start_connection(size_t index)
{
    Connection &c = connections_[index];
    c.last_progress = Clock::now();
    live_ += 1;
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
        fail(c, "connect", std::string("socket: ") + std::strerror(errno));
        return;
    }
    // As wrk does: a message's last segment goes at once, not after the
    // peer's delayed ACK.
    int on = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(options_.port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
        fail(c, "connect", std::string("connect: ") + std::strerror(errno));
        return;
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = index;
    if (epoll_ctl(epoll_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
        fail(c, "connect", std::string("epoll_ctl: ") + std::strerror(errno));
        return;
    }
    c.events = EPOLLOUT;
}

void Load::begin_handshake(Connection &c)
{
    unsigned char raw[16];
    std::random_device random;
    for (unsigned char &b : raw) {
        b = static_cast<unsigned char>(random());
    }
    const std::string key = base64(raw, sizeof(raw));
    c.accept = accept_for(key);
    c.out = "GET " + options_.path + " HTTP/1.1\r\n"
            "Host: 127.0.0.1:" + std::to_string(options_.port) + "\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: " + key + "\r\n";
    for (const std::string &h : options_.headers) {
        c.out += h + "\r\n";
    }
    c.out += "\r\n";
    c.written = 0;
    c.phase = Phase::handshake;
}

// The 101 answer, once its head is all read: true when the connection is open.
bool Load::take_handshake(Connection &c)
{
    const size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (c.in.size() > kMaxHandshake) {
            fail(c, "handshake", "no end to the answer's head");
        }
        return false;
    }
    std::string_view head(c.in.data(), end);
    const size_t eol = head.find("\r\n");
    std::string_view status = head.substr(0, eol);
    if (status.substr(0, 13) != "HTTP/1.1 101 " && status != "HTTP/1.1 101") {
        fail(c, "handshake", "answer: " + std::string(status));
        return false;
    }
    bool accepted = false;
    for (size_t at = eol; at != std::string_view::npos && at < head.size();) {
        const size_t next = head.find("\r\n", at + 2);
        std::string_view line = head.substr(at + 2, next == std::string_view::npos ? std::string_view::npos
                                                                                   : next - at - 2);
        const size_t colon = line.find(':');
        if (colon != std::string_view::npos && lower(line.substr(0, colon)) == "sec-websocket-accept") {
            accepted = trim(line.substr(colon + 1)) == c.accept;
        }
        at = next;
    }
    if (!accepted) {
        fail(c, "handshake", "missing or wrong Sec-WebSocket-Accept");
        return false;
    }
    c.in.erase(0, end + 4);  // what follows is frames
    c.phase = Phase::open;
    tally_.upgraded += 1;
    fill_window(c);
    return true;
}

// Queues messages until W are unacknowledged (none once the time is up).
void Load::fill_window(Connection &c)
{
    while (!stopping_ && c.in_flight.size() < options_.window) {
        if (c.written == c.out.size()) {
            c.out.clear();
            c.written = 0;
        }
        append_frame(c.out, kBinary, payload_, rng_);
        c.in_flight.push_back(Clock::now());
        tally_.sent += 1;
    }
}

void Load::begin_close(Connection &c)
{
    if (c.written == c.out.size()) {
        c.out.clear();
        c.written = 0;
    }
    const char code[2] = {static_cast<char>(1000 >> 8), static_cast<char>(1000 & 0xFF)};
    append_frame(c.out, kClose, std::string_view(code, sizeof(code)), rng_);
    c.phase = Phase::closing;
    c.last_progress = Clock::now();
}

// {"n":N,"status":"NAME"} or {"n":N,"error":"NAME"}, for the oldest message.
bool Load::take_ack(Connection &c, std::string_view text)
{
    const size_t n_at = text.find("\"n\":");
    if (text.empty() || text.front() != '{' || n_at == std::string_view::npos) {
        fail(c, "protocol", "not an acknowledgement: " + std::string(text.substr(0, 200)));
        return false;
    }
    const uint64_t n = std::strtoull(std::string(text.substr(n_at + 4, 20)).c_str(), nullptr, 10);
    if (n != c.next_ack || c.in_flight.empty()) {
        fail(c, "protocol", "acknowledgement " + std::to_string(n) + " where " + std::to_string(c.next_ack) +
                                " was due: " + std::string(text.substr(0, 200)));
        return false;
    }
    std::string_view name;
    for (std::string_view field : {std::string_view("\"status\":\""), std::string_view("\"error\":\"")}) {
        const size_t at = text.find(field);
        if (at != std::string_view::npos) {
            const size_t from = at + field.size();
            name = text.substr(from, text.find('"', from) - from);
        }
    }
    if (!is_name(name)) {
        fail(c, "protocol", "acknowledgement without a status: " + std::string(text.substr(0, 200)));
        return false;
    }
    const Clock::time_point now = Clock::now();
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now - c.in_flight.front()).count();
    tally_.latencies_us.push_back(static_cast<uint32_t>(std::min<int64_t>(us, UINT32_MAX)));
    tally_.statuses[std::string(name)] += 1;
    tally_.acked += 1;
    tally_.last_ack = now;
    c.in_flight.pop_front();
    c.next_ack += 1;
    return true;
}

// Handles the complete frames read; false when the connection ended.
bool Load::take_frames(Connection &c)
{
    size_t used = 0;
    while (std::optional<Frame> f = next_frame(std::string_view(c.in).substr(used))) {
        used += f->length;
        if (f->masked || !f->fin) {
            // The module never fragments what it sends, and never masks.
            fail(c, "protocol", f->masked ? "masked server frame" : "fragmented server frame");
            return false;
        }
        if (f->opcode == kText) {
            if (c.phase == Phase::open && !take_ack(c, f->payload)) {
                return false;
            }
        } else if (f->opcode == kPing) {
            append_frame(c.out, kPong, f->payload, rng_);
        } else if (f->opcode == kClose) {
            if (c.phase != Phase::closing) {
                const unsigned code = f->payload.size() >= 2 ? (static_cast<unsigned char>(f->payload[0]) << 8)
                                                                   | static_cast<unsigned char>(f->payload[1])
                                                             : 1005;
                fail(c, "closed", "the server closed with " + std::to_string(code) + " " +
                                      std::string(f->payload.substr(std::min<size_t>(2, f->payload.size()))));
                return false;
            }
            finish(c);  // its answer to our close: done
            return false;
        } else if (f->opcode != kPong) {
            fail(c, "protocol", "server frame with opcode " + std::to_string(f->opcode));
            return false;
        }
    }
    c.in.erase(0, used);
    return true;
}

// Writes what waits; false when the connection ended.
bool Load::flush(Connection &c)
{
    while (c.written < c.out.size()) {
        const ssize_t n = send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
        if (n > 0) {
            c.written += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return true;
        }
        fail(c, "closed", std::string("send: ") + std::strerror(errno));
        return false;
    }
    c.out.clear();
    c.written = 0;
    return true;
}

void Load::on_writable(Connection &c)
{
    if (c.phase == Phase::connecting) {
        int error = 0;
        socklen_t size = sizeof(error);
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error != 0) {
            fail(c, "connect", std::string("connect: ") + std::strerror(error));
            return;
        }
        begin_handshake(c);
    }
    flush(c);
}

void Load::on_readable(Connection &c)
{
    char buffer[kReadSize];
    for (;;) {
        const ssize_t n = recv(c.fd, buffer, sizeof(buffer), 0);
        if (n > 0) {
            c.in.append(buffer, static_cast<size_t>(n));
            c.last_progress = Clock::now();
            if (static_cast<size_t>(n) < sizeof(buffer)) {
                break;  // drained, most likely: epoll tells if not
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
        }
        if (c.phase == Phase::closing) {
            finish(c);  // closed after our close: done
        } else {
            fail(c, "closed", n == 0 ? "the server closed the connection" : std::strerror(errno));
        }
        return;
    }
    if (c.phase == Phase::handshake && !take_handshake(c)) {
        return;
    }
    if (!take_frames(c)) {
        return;
    }
    if (c.phase == Phase::open) {
        fill_window(c);
        if (stopping_ && c.in_flight.empty()) {
            begin_close(c);
        }
    }
}

void Load::on_event(size_t index, uint32_t events)
{
    Connection &c = connections_[index];
    if (c.phase == Phase::done) {
        return;
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c.phase != Phase::connecting) {
        on_readable(c);
    }
    if (c.phase != Phase::done && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        on_writable(c);
    }
    if (c.phase != Phase::done && flush(c)) {
        watch(c);
    }
}

// The clock's part: the end of sending, and connections that wait too long.
void Load::tick(Clock::time_point now)
{
    if (!stopping_ && now >= deadline_) {
        stopping_ = true;
        for (Connection &c : connections_) {
            if (c.phase == Phase::open && c.in_flight.empty()) {
                begin_close(c);
                if (flush(c)) {
                    watch(c);
                }
            } else if (c.phase == Phase::connecting || c.phase == Phase::handshake) {
                fail(c, "timeout", "not upgraded when the time was up");
            }
        }
    }
    const auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.timeout));
    for (Connection &c : connections_) {
        const bool waiting = c.phase != Phase::done && (c.phase != Phase::open || !c.in_flight.empty());
        if (waiting && now - c.last_progress > limit) {
            fail(c, "timeout", "nothing from the server for " + std::to_string(options_.timeout) + " s");
        }
    }
}

int Load::run()
{
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) {
        std::perror("ws_load: epoll_create1");
        return 2;
    }
    start_ = Clock::now();
    deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.duration));
    for (size_t i = 0; i < connections_.size(); ++i) {
        start_connection(i);
    }
    std::vector<epoll_event> events(connections_.size() + 1);
    while (live_ > 0) {
        // Woken at least every 50 ms: the deadline and the timeouts are
        // checked between events.
        const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 50);
        if (n < 0 && errno != EINTR) {
            std::perror("ws_load: epoll_wait");
            break;
        }
        for (int i = 0; i < n; ++i) {
            on_event(static_cast<size_t>(events[static_cast<size_t>(i)].data.u64), events[static_cast<size_t>(i)].events);
        }
        tick(Clock::now());
    }
    close(epoll_);
    // Until the last acknowledgement, or the end of sending: the time up,
    // or earlier if every connection failed.
    print_summary(tally_.last_ack > deadline_ ? tally_.last_ack : std::min(deadline_, Clock::now()));
    return 0;
}

uint32_t percentile(const std::vector<uint32_t> &sorted, double p)
{
    if (sorted.empty()) {
        return 0;
    }
    const auto at = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(at, sorted.size() - 1)];
}

void Load::print_summary(Clock::time_point end) const
{
    std::vector<uint32_t> sorted = tally_.latencies_us;
    std::sort(sorted.begin(), sorted.end());
    double mean = 0;
    for (uint32_t v : sorted) {
        mean += v;
    }
    mean = sorted.empty() ? 0 : mean / static_cast<double>(sorted.size());

    std::string out = "{\"sent\":" + std::to_string(tally_.sent) + ",\"acked\":" + std::to_string(tally_.acked) +
                      ",\"unacked\":" + std::to_string(tally_.sent - tally_.acked) + ",\"statuses\":{";
    const char *comma = "";
    for (const auto &[name, count] : tally_.statuses) {
        out += comma + json_string(name) + ":" + std::to_string(count);
        comma = ",";
    }
    out += "},\"errors\":{";
    comma = "";
    for (const auto &[kind, count] : tally_.errors) {
        out += comma + json_string(kind) + ":" + std::to_string(count);
        comma = ",";
    }
    char latency[256];
    std::snprintf(latency, sizeof(latency), "{\"p50\":%u,\"p90\":%u,\"p99\":%u,\"mean\":%.1f,\"max\":%u}",
                  percentile(sorted, 50), percentile(sorted, 90), percentile(sorted, 99), mean,
                  sorted.empty() ? 0u : sorted.back());
    out += "},\"connections\":" + std::to_string(connections_.size()) +
           ",\"upgraded\":" + std::to_string(tally_.upgraded) +
           ",\"seconds\":" + std::to_string(std::chrono::duration<double>(end - start_).count()) +
           ",\"latency_us\":" + latency + ",\"first_error\":" + json_string(tally_.first_error) + "}\n";
    std::fputs(out.c_str(), stdout);
}

// --- arguments -----------------------------------------------------------------------

int usage()
{
    std::fputs("usage: ws_load [-c CONNECTIONS] [-d SECONDS] [-w WINDOW] [--timeout SECONDS]\n"
               "               [-H 'Name: value']... PORT PATH PAYLOAD\n",
               stderr);
    return 2;
}

std::optional<Options> parse_options(int argc, char **argv)
{
    Options o;
    std::vector<std::string> rest;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        double v = 0;
        if ((arg == "-c" || arg == "-d" || arg == "-w" || arg == "--timeout") &&
            !(has_value && parse_number(argv[i + 1], &v))) {
            return std::nullopt;
        }
        if (arg == "-c") {
            o.connections = static_cast<int>(v);
        } else if (arg == "-d") {
            o.duration = v;
        } else if (arg == "-w") {
            o.window = static_cast<size_t>(v);
        } else if (arg == "--timeout") {
            o.timeout = v;
        } else if (arg == "-H" && has_value) {
            o.headers.emplace_back(argv[++i]);
            continue;
        } else if (!arg.empty() && arg[0] == '-') {
            return std::nullopt;
        } else {
            rest.push_back(arg);
            continue;
        }
        ++i;  // the option's value
    }
    double port = 0;
    if (rest.size() != 3 || !parse_number(rest[0].c_str(), &port) || port < 1 || port > 65535 ||
        rest[1].empty() || rest[1][0] != '/' || o.connections < 1 || o.window < 1) {
        return std::nullopt;
    }
    o.port = static_cast<int>(port);
    o.path = rest[1];
    o.payload_file = rest[2];
    return o;
}

}  // namespace

int main(int argc, char **argv)
{
    std::optional<Options> options = parse_options(argc, argv);
    if (!options) {
        return usage();
    }
    std::ifstream file(options->payload_file, std::ios::binary);
    std::string payload((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (!file.good() && !file.eof()) {
        std::fprintf(stderr, "ws_load: cannot read %s\n", options->payload_file.c_str());
        return 2;
    }
    if (payload.empty()) {
        std::fprintf(stderr, "ws_load: %s is empty or missing\n", options->payload_file.c_str());
        return 2;
    }
    Load load(*options, std::move(payload));
    return load.run();
}
