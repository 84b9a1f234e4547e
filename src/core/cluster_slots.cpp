#include "cluster_slots.h"

#include <arpa/inet.h>

#include <array>
#include <charconv>

namespace recording {

namespace {

constexpr std::array<uint16_t, 256> make_crc16_table() noexcept
{
    std::array<uint16_t, 256> table{};
    for (unsigned i = 0; i < 256; i++) {
        auto crc = static_cast<uint16_t>(i << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = static_cast<uint16_t>((crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1);
        }
        table[i] = crc;
    }
    return table;
}

constexpr std::array<uint16_t, 256> kCrc16Table = make_crc16_table();

bool starts_with(std::string_view s, std::string_view prefix) noexcept
{
    return s.substr(0, prefix.size()) == prefix;
}

// A decimal number that fills `text` and is at most `max`.
std::optional<unsigned> parse_number(std::string_view text, unsigned max) noexcept
{
    unsigned value = 0;
    if (text.empty() || text.size() > 10) {
        return std::nullopt;
    }
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > max) {
        return std::nullopt;
    }
    return value;
}

}  // namespace

uint16_t crc16_xmodem(std::string_view data) noexcept
{
    uint16_t crc = 0;
    for (unsigned char c : data) {
        crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table[((crc >> 8) ^ c) & 0xFF]);
    }
    return crc;
}

std::string_view hash_tag(std::string_view key) noexcept
{
    size_t open = key.find('{');
    if (open == std::string_view::npos) {
        return key;
    }
    size_t close = key.find('}', open + 1);
    if (close == std::string_view::npos || close == open + 1) {
        return key;
    }
    return key.substr(open + 1, close - open - 1);
}

unsigned key_slot(std::string_view key) noexcept
{
    return crc16_xmodem(hash_tag(key)) & (kClusterSlots - 1);
}

std::string NodeAddress::name() const
{
    std::string out;
    bool v6 = host.find(':') != std::string::npos;
    if (v6) {
        out += '[';
    }
    out += host;
    if (v6) {
        out += ']';
    }
    out += ':';
    out += std::to_string(port);
    return out;
}

bool is_ip_literal(std::string_view host) noexcept
{
    if (host.empty() || host.size() >= INET6_ADDRSTRLEN || host.find('\0') != std::string_view::npos) {
        return false;
    }
    char text[INET6_ADDRSTRLEN];  // inet_pton wants a C string
    host.copy(text, host.size());
    text[host.size()] = '\0';
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, text, buf) == 1 || inet_pton(AF_INET6, text, buf) == 1;
}

ClusterReplyKind classify_cluster_error(std::string_view error) noexcept
{
    if (starts_with(error, "MOVED ")) {
        return ClusterReplyKind::moved;
    }
    if (starts_with(error, "ASK ")) {
        return ClusterReplyKind::ask;
    }
    // The whole word: "TRYAGAIN Multiple keys request during rehashing of slot".
    auto word = error.substr(0, error.find(' '));
    if (word == "TRYAGAIN") {
        return ClusterReplyKind::tryagain;
    }
    if (word == "CLUSTERDOWN") {
        return ClusterReplyKind::clusterdown;
    }
    return ClusterReplyKind::other;
}

std::optional<Redirect> parse_redirect(std::string_view error)
{
    ClusterReplyKind kind = classify_cluster_error(error);
    if (kind != ClusterReplyKind::moved && kind != ClusterReplyKind::ask) {
        return std::nullopt;
    }
    std::string_view rest = error.substr(error.find(' ') + 1);
    size_t space = rest.find(' ');
    if (space == std::string_view::npos) {
        return std::nullopt;
    }
    std::optional<unsigned> slot = parse_number(rest.substr(0, space), kClusterSlots - 1);
    std::string_view endpoint = rest.substr(space + 1);
    // IPv6 addresses are written without brackets: the port follows the
    // last colon.
    size_t colon = endpoint.rfind(':');
    if (!slot || colon == std::string_view::npos) {
        return std::nullopt;
    }
    std::optional<unsigned> port = parse_number(endpoint.substr(colon + 1), 65535);
    if (!port || *port == 0) {
        return std::nullopt;
    }
    std::string_view host = endpoint.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    return Redirect{kind, *slot, std::string(host), static_cast<uint16_t>(*port)};
}

SlotTable::SlotTable() : owners_(kClusterSlots, 0) {}

int SlotTable::index_of(const NodeAddress& node)
{
    for (size_t i = 0; i < nodes_.size(); i++) {
        if (nodes_[i] == node) {
            return static_cast<int>(i);
        }
    }
    if (nodes_.size() >= 0xFFFF) {
        return kNone;
    }
    nodes_.push_back(node);
    return static_cast<int>(nodes_.size() - 1);
}

bool SlotTable::assign(unsigned start, unsigned end, const NodeAddress& node)
{
    if (start > end || end >= kClusterSlots) {
        return false;
    }
    int index = index_of(node);
    if (index == kNone) {
        return false;
    }
    auto owner = static_cast<uint16_t>(index + 1);
    for (unsigned slot = start; slot <= end; slot++) {
        if (owners_[slot] == 0) {
            covered_++;
        }
        owners_[slot] = owner;
    }
    return true;
}

int SlotTable::owner(unsigned slot) const noexcept
{
    if (slot >= kClusterSlots || owners_[slot] == 0) {
        return kNone;
    }
    return owners_[slot] - 1;
}

size_t SlotTable::masters() const
{
    std::vector<bool> owns(nodes_.size(), false);
    size_t n = 0;
    for (uint16_t owner : owners_) {
        if (owner != 0 && !owns[owner - 1]) {
            owns[owner - 1] = true;
            n++;
        }
    }
    return n;
}

bool SlotTable::same_owners(const SlotTable& other) const noexcept
{
    for (unsigned slot = 0; slot < kClusterSlots; slot++) {
        int a = owner(slot);
        int b = other.owner(slot);
        if ((a == kNone) != (b == kNone)) {
            return false;
        }
        if (a != kNone && nodes_[static_cast<size_t>(a)] != other.nodes_[static_cast<size_t>(b)]) {
            return false;
        }
    }
    return true;
}

bool read_slots(const ReplyView& reply, std::string_view asked_host, SlotMap& map, std::string& error)
{
    using Type = ReplyView::Type;
    if (reply.type == Type::error) {
        error.assign(reply.text);
        return false;
    }
    if (reply.type != Type::array) {
        error = "not an array";
        return false;
    }
    for (const ReplyView& range : reply.elements) {
        if (range.type != Type::array || range.elements.size() < 3 || range.elements[0].type != Type::integer
            || range.elements[1].type != Type::integer || range.elements[2].type != Type::array
            || range.elements[2].elements.size() < 2)
        {
            error = "a malformed slot range";
            return false;
        }
        const ReplyView& host = range.elements[2].elements[0];
        const ReplyView& port = range.elements[2].elements[1];
        if ((host.type != Type::string && host.type != Type::nil) || port.type != Type::integer || port.integer <= 0
            || port.integer > 65535)
        {
            error = "a malformed node address";
            return false;
        }
        NodeAddress address;
        address.host.assign(host.type == Type::nil || host.text.empty() ? asked_host : host.text);
        address.port = static_cast<uint16_t>(port.integer);
        if (!is_ip_literal(address.host)) {
            if (map.skipped++ == 0) {
                map.skipped_name = address.host;
            }
            continue;
        }
        long long start = range.elements[0].integer;
        long long end = range.elements[1].integer;
        if (start < 0 || end < 0
            || !map.table.assign(static_cast<unsigned>(start), static_cast<unsigned>(end), address))
        {
            error = "a slot range out of bounds";
            return false;
        }
    }
    if (map.table.empty()) {
        error = map.skipped != 0 ? "every master is named by a host name, which a worker does not resolve"
                                 : "no slot is assigned";
        return false;
    }
    return true;
}

}  // namespace recording
