// Redis Cluster's pure parts: a key's hash slot, the redirections a node
// answers with, and the table of which master owns each slot.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace recording {

constexpr unsigned kClusterSlots = 16384;

// CRC16-XMODEM (polynomial 0x1021, initial value 0), as Redis hashes keys.
uint16_t crc16_xmodem(std::string_view data) noexcept;

// The part of a key that is hashed: the text between the first '{' and the
// first '}' after it when that is not empty, else the whole key.
std::string_view hash_tag(std::string_view key) noexcept;

// CRC16(hash_tag(key)) % 16384, as CLUSTER KEYSLOT answers.
unsigned key_slot(std::string_view key) noexcept;

// A node's address as a cluster names it: a numeric IP and a port.
struct NodeAddress {
    std::string host;
    uint16_t port = 0;

    bool operator==(const NodeAddress& other) const noexcept
    {
        return port == other.port && host == other.host;
    }
    bool operator!=(const NodeAddress& other) const noexcept { return !(*this == other); }

    // "host:port", "[v6]:port" for IPv6.
    std::string name() const;
};

// An IPv4 or IPv6 address in numeric form: what a worker can connect to
// without a name lookup.
bool is_ip_literal(std::string_view host) noexcept;

// What an error reply from a cluster node asks of the client.
enum class ClusterReplyKind {
    other,        // an error of the command: the caller's
    moved,        // MOVED <slot> <host>:<port>: the slot lives there now
    ask,          // ASK <slot> <host>:<port>: this once, send ASKING first
    tryagain,     // TRYAGAIN: a slot being migrated, try later
    clusterdown,  // CLUSTERDOWN ...: the cluster cannot serve now
};

struct Redirect {
    ClusterReplyKind kind;  // moved or ask
    unsigned slot;
    // As the node wrote it: empty means the node it came from, "?" an
    // endpoint it does not know; may be a host name.
    std::string host;
    uint16_t port;
};

// The kind of an error reply's text (without the leading '-').
ClusterReplyKind classify_cluster_error(std::string_view error) noexcept;

// A MOVED or ASK error's slot and address; nullopt for any other text or a
// malformed one (slot out of range, no port, port out of range).
std::optional<Redirect> parse_redirect(std::string_view error);

// Which master owns each of the 16384 slots.
class SlotTable {
public:
    static constexpr int kNone = -1;

    SlotTable();

    // Gives slots start..end (inclusive) to `node`; false, and the table
    // unchanged, when the range is out of bounds or empty. Later ranges
    // win over earlier ones.
    bool assign(unsigned start, unsigned end, const NodeAddress& node);

    // The index in nodes() of the slot's owner, or kNone.
    int owner(unsigned slot) const noexcept;

    // Every node ever given a slot, in the order they were first given one.
    const std::vector<NodeAddress>& nodes() const noexcept { return nodes_; }

    // Slots that have an owner.
    size_t covered() const noexcept { return covered_; }

    // Nodes that own at least one slot now.
    size_t masters() const;

    // Every slot has the same owner (by address) in both.
    bool same_owners(const SlotTable& other) const noexcept;

    bool empty() const noexcept { return covered_ == 0; }

private:
    int index_of(const NodeAddress& node);

    std::vector<uint16_t> owners_;  // index + 1 in nodes_; 0: none
    std::vector<NodeAddress> nodes_;
    size_t covered_ = 0;
};

// A Redis reply as far as reading the slot map needs it. The glue copies
// hiredis's reply into one, so the core sees no hiredis type; `text`
// points into the reply it was made from.
struct ReplyView {
    enum class Type { array, integer, string, nil, error, other };

    Type type = Type::other;
    std::string_view text;            // string, error
    long long integer = 0;            // integer
    std::vector<ReplyView> elements;  // array
};

// The map a CLUSTER SLOTS reply gives.
struct SlotMap {
    SlotTable table;
    // Slot ranges left out because their master is named by a host name
    // (a worker never blocks on a name lookup), and the first such name.
    size_t skipped = 0;
    std::string skipped_name;
};

// Reads a CLUSTER SLOTS reply:
//   [[start, end, [host, port, id, ...], replicas...], ...]
// host is NULL or empty for "the node you asked", whose host is
// `asked_host`. False, with why in `error`, when the reply is an error, is
// malformed (a range or an address), puts a slot out of bounds, or assigns
// no slot. Throws std::bad_alloc.
bool read_slots(const ReplyView& reply, std::string_view asked_host, SlotMap& map, std::string& error);

}  // namespace recording
