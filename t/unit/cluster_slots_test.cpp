#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cluster_slots.h"
#include "redis_protocol.h"

using namespace recording;

TEST(Crc16, IsXmodem)
{
    // The check value of CRC-16/XMODEM, and Redis's own test vector.
    EXPECT_EQ(crc16_xmodem("123456789"), 0x31C3);
    EXPECT_EQ(crc16_xmodem(""), 0);
    EXPECT_EQ(crc16_xmodem(std::string("\xFF\x00", 2)), crc16_xmodem(std::string("\xFF\x00", 2)));
}

TEST(KeySlot, KnownValues)
{
    EXPECT_EQ(key_slot("123456789"), 12739u);
    EXPECT_EQ(key_slot(""), 0u);
    // From CLUSTER KEYSLOT on Redis 7.0.
    EXPECT_EQ(key_slot("recording:site:1"), 4160u);
    EXPECT_EQ(key_slot("recording:site:42"), 10845u);
    EXPECT_EQ(key_slot("recording:site:1234567890"), 2915u);
    EXPECT_EQ(key_slot("a{"), 14311u);
    EXPECT_EQ(key_slot("foo{bar"), 15278u);
}

TEST(KeySlot, HashTags)
{
    EXPECT_EQ(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
    EXPECT_EQ(key_slot("{user1000}.following"), key_slot("user1000"));
    EXPECT_EQ(key_slot("{user1000}.following"), 3443u);
    // An empty tag: the whole key is hashed.
    EXPECT_EQ(hash_tag("foo{}{bar}"), "foo{}{bar}");
    EXPECT_EQ(key_slot("foo{}{bar}"), 8363u);
    EXPECT_EQ(hash_tag("{}"), "{}");
    EXPECT_EQ(key_slot("{}"), 15257u);
    // The first '{', then the first '}' after it.
    EXPECT_EQ(hash_tag("foo{{bar}}zap"), "{bar");
    EXPECT_EQ(key_slot("foo{{bar}}zap"), 4015u);
    EXPECT_EQ(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    EXPECT_EQ(hash_tag("foo{bar}{zap}"), "bar");
    EXPECT_EQ(key_slot("foo{bar}{zap}"), 5061u);
    // A '}' before the first '{' does not count.
    EXPECT_EQ(hash_tag("}{a}"), "a");
    EXPECT_EQ(key_slot("}{a}"), 15495u);
    // No closing brace: the whole key.
    EXPECT_EQ(hash_tag("foo{bar"), "foo{bar");
}

TEST(KeySlot, QueueKeysAsRedisHashesThem)
{
    // CLUSTER KEYSLOT recording:queue:<n> for n = 0..127, from Redis 7.0.
    const unsigned expected[] = {
        8135, 4070, 16261, 12196, 8003, 3938, 16129, 12064, 7887, 3822, 12340, 8213, 4214, 87, 12464, 8337,
        4338, 211, 12604, 8477, 9575, 13638, 1317, 5380, 9699, 13762, 1441, 5504, 9327, 13390, 5718, 1655,
        13844, 9781, 5842, 1779, 13968, 9905, 5982, 1919, 4033, 8160, 12163, 16290, 3909, 8036, 12039, 16166,
        3785, 7912, 15600, 11473, 7346, 3219, 15476, 11349, 7222, 3095, 15864, 11737, 10659, 14722, 2529, 6592,
        10535, 14598, 2405, 6468, 10411, 14474, 6802, 2739, 15056, 10993, 6678, 2615, 14932, 10869, 7066, 3003,
        2732, 6797, 10990, 15055, 2600, 6665, 10858, 14923, 2980, 7045, 14749, 10684, 6623, 2558, 14617, 10552,
        6491, 2426, 14485, 10420, 9608, 13737, 1482, 5611, 9484, 13613, 1358, 5487, 9344, 13473, 5817, 1688,
        14075, 9946, 5693, 1564, 13951, 9822, 6065, 1936, 1002, 5067, 9128, 13193, 878, 4943, 9004, 13069,
    };
    for (unsigned n = 0; n < sizeof expected / sizeof expected[0]; n++) {
        EXPECT_EQ(key_slot(queue_key(n)), expected[n]) << queue_key(n);
    }
    EXPECT_EQ(key_slot(queue_key(1000)), 6940u);
    EXPECT_EQ(key_slot(queue_key(65535)), 13402u);
}

TEST(ClusterError, Kinds)
{
    EXPECT_EQ(classify_cluster_error("MOVED 3999 127.0.0.1:6381"), ClusterReplyKind::moved);
    EXPECT_EQ(classify_cluster_error("ASK 3999 127.0.0.1:6381"), ClusterReplyKind::ask);
    EXPECT_EQ(classify_cluster_error("TRYAGAIN Multiple keys request during rehashing of slot"),
              ClusterReplyKind::tryagain);
    EXPECT_EQ(classify_cluster_error("TRYAGAIN"), ClusterReplyKind::tryagain);
    EXPECT_EQ(classify_cluster_error("CLUSTERDOWN The cluster is down"), ClusterReplyKind::clusterdown);
    EXPECT_EQ(classify_cluster_error("CLUSTERDOWN Hash slot not served"), ClusterReplyKind::clusterdown);
    EXPECT_EQ(classify_cluster_error("ERR unknown command"), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error("MOVEDX 1 a:1"), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error("MOVED"), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error("TRYAGAINX"), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error("CLUSTERDOWNER"), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error(""), ClusterReplyKind::other);
    EXPECT_EQ(classify_cluster_error("WRONGTYPE Operation against a key"), ClusterReplyKind::other);
}

TEST(ClusterError, ParseRedirect)
{
    auto moved = parse_redirect("MOVED 3999 127.0.0.1:6381");
    ASSERT_TRUE(moved);
    EXPECT_EQ(moved->kind, ClusterReplyKind::moved);
    EXPECT_EQ(moved->slot, 3999u);
    EXPECT_EQ(moved->host, "127.0.0.1");
    EXPECT_EQ(moved->port, 6381);

    auto ask = parse_redirect("ASK 0 10.1.2.3:7000");
    ASSERT_TRUE(ask);
    EXPECT_EQ(ask->kind, ClusterReplyKind::ask);
    EXPECT_EQ(ask->slot, 0u);
    EXPECT_EQ(ask->host, "10.1.2.3");
    EXPECT_EQ(ask->port, 7000);

    // IPv6 without brackets (as Redis writes it), and with them.
    auto v6 = parse_redirect("MOVED 16383 ::1:7001");
    ASSERT_TRUE(v6);
    EXPECT_EQ(v6->slot, 16383u);
    EXPECT_EQ(v6->host, "::1");
    EXPECT_EQ(v6->port, 7001);
    auto v6b = parse_redirect("ASK 5 [fe80::1]:7001");
    ASSERT_TRUE(v6b);
    EXPECT_EQ(v6b->host, "fe80::1");

    // An unknown endpoint, a host name: parsed, judged by the caller.
    auto empty = parse_redirect("MOVED 12 :7002");
    ASSERT_TRUE(empty);
    EXPECT_EQ(empty->host, "");
    EXPECT_EQ(empty->port, 7002);
    auto name = parse_redirect("MOVED 12 redis-3.example:7002");
    ASSERT_TRUE(name);
    EXPECT_EQ(name->host, "redis-3.example");
}

TEST(ClusterError, MalformedRedirects)
{
    EXPECT_FALSE(parse_redirect("MOVED 16384 127.0.0.1:6381"));
    EXPECT_FALSE(parse_redirect("MOVED -1 127.0.0.1:6381"));
    EXPECT_FALSE(parse_redirect("MOVED 12 127.0.0.1"));
    EXPECT_FALSE(parse_redirect("MOVED 12 127.0.0.1:"));
    EXPECT_FALSE(parse_redirect("MOVED 12 127.0.0.1:0"));
    EXPECT_FALSE(parse_redirect("MOVED 12 127.0.0.1:65536"));
    EXPECT_FALSE(parse_redirect("MOVED 12 127.0.0.1:70x"));
    EXPECT_FALSE(parse_redirect("MOVED 12"));
    EXPECT_FALSE(parse_redirect("MOVED  127.0.0.1:1"));
    EXPECT_FALSE(parse_redirect("MOVED 99999999999 127.0.0.1:1"));
    EXPECT_FALSE(parse_redirect("ERR MOVED 12 127.0.0.1:1"));
    EXPECT_FALSE(parse_redirect("TRYAGAIN"));
}

TEST(NodeAddress, NamesAndLiterals)
{
    EXPECT_EQ((NodeAddress{"127.0.0.1", 7000}).name(), "127.0.0.1:7000");
    EXPECT_EQ((NodeAddress{"::1", 7000}).name(), "[::1]:7000");
    EXPECT_TRUE(is_ip_literal("127.0.0.1"));
    EXPECT_TRUE(is_ip_literal("::1"));
    EXPECT_TRUE(is_ip_literal("fe80::1:2"));
    EXPECT_FALSE(is_ip_literal(""));
    EXPECT_FALSE(is_ip_literal("?"));
    EXPECT_FALSE(is_ip_literal("localhost"));
    EXPECT_FALSE(is_ip_literal("redis-1.example"));
    EXPECT_FALSE(is_ip_literal("127.0.0.1 "));
    EXPECT_FALSE(is_ip_literal(std::string("127.0.0.1\0x", 11)));
    EXPECT_FALSE(is_ip_literal(std::string(100, '1')));
}

TEST(SlotTable, FromRangesAsRedisCliCreatesThem)
{
    SlotTable table;
    EXPECT_TRUE(table.empty());
    EXPECT_EQ(table.owner(0), SlotTable::kNone);
    NodeAddress a{"127.0.0.1", 7000}, b{"127.0.0.1", 7001}, c{"127.0.0.1", 7002};
    ASSERT_TRUE(table.assign(0, 5460, a));
    ASSERT_TRUE(table.assign(5461, 10922, b));
    ASSERT_TRUE(table.assign(10923, 16383, c));
    EXPECT_EQ(table.covered(), 16384u);
    EXPECT_EQ(table.masters(), 3u);
    ASSERT_EQ(table.nodes().size(), 3u);
    EXPECT_EQ(table.nodes()[table.owner(0)], a);
    EXPECT_EQ(table.nodes()[table.owner(5460)], a);
    EXPECT_EQ(table.nodes()[table.owner(5461)], b);
    EXPECT_EQ(table.nodes()[table.owner(10922)], b);
    EXPECT_EQ(table.nodes()[table.owner(10923)], c);
    EXPECT_EQ(table.nodes()[table.owner(16383)], c);
    EXPECT_EQ(table.owner(16384), SlotTable::kNone);
    EXPECT_EQ(table.nodes()[table.owner(key_slot("123456789"))], c);
}

TEST(SlotTable, RangesOutOfBoundsAreRefused)
{
    SlotTable table;
    NodeAddress a{"127.0.0.1", 7000};
    EXPECT_FALSE(table.assign(0, 16384, a));
    EXPECT_FALSE(table.assign(10, 9, a));
    EXPECT_FALSE(table.assign(16384, 16384, a));
    EXPECT_TRUE(table.empty());
    EXPECT_TRUE(table.nodes().empty());
    EXPECT_TRUE(table.assign(16383, 16383, a));
    EXPECT_EQ(table.covered(), 1u);
}

TEST(SlotTable, PartialCoverageAndMovedSlots)
{
    SlotTable table;
    NodeAddress a{"127.0.0.1", 7000}, b{"127.0.0.1", 7001};
    ASSERT_TRUE(table.assign(0, 99, a));
    ASSERT_TRUE(table.assign(200, 299, b));
    EXPECT_EQ(table.covered(), 200u);
    EXPECT_EQ(table.owner(150), SlotTable::kNone);
    // A MOVED answer moves one slot; the node list keeps its order.
    ASSERT_TRUE(table.assign(50, 50, b));
    EXPECT_EQ(table.covered(), 200u);
    EXPECT_EQ(table.nodes()[table.owner(50)], b);
    EXPECT_EQ(table.nodes()[table.owner(49)], a);
    ASSERT_TRUE(table.assign(150, 150, NodeAddress{"127.0.0.1", 7002}));
    EXPECT_EQ(table.covered(), 201u);
    EXPECT_EQ(table.nodes().size(), 3u);
    EXPECT_EQ(table.masters(), 3u);
    // Every slot of a moved away: it is still listed, but owns nothing.
    ASSERT_TRUE(table.assign(0, 99, b));
    EXPECT_EQ(table.nodes().size(), 3u);
    EXPECT_EQ(table.masters(), 2u);
}

TEST(SlotTable, SameOwnersComparesAddressesNotIndexes)
{
    NodeAddress a{"127.0.0.1", 7000}, b{"127.0.0.1", 7001};
    SlotTable one, two;
    one.assign(0, 8191, a);
    one.assign(8192, 16383, b);
    two.assign(8192, 16383, b);  // b gets index 0 here
    two.assign(0, 8191, a);
    EXPECT_TRUE(one.same_owners(two));
    EXPECT_TRUE(two.same_owners(one));
    two.assign(8191, 8191, b);
    EXPECT_FALSE(one.same_owners(two));
    SlotTable partial;
    partial.assign(0, 8191, a);
    EXPECT_FALSE(one.same_owners(partial));
    EXPECT_FALSE(partial.same_owners(one));
    EXPECT_TRUE(SlotTable().same_owners(SlotTable()));
}

// --- Reading a CLUSTER SLOTS reply ----------------------------------------

namespace {

using Type = ReplyView::Type;

ReplyView integer(long long value)
{
    ReplyView v;
    v.type = Type::integer;
    v.integer = value;
    return v;
}

ReplyView text(Type type, std::string_view value)
{
    ReplyView v;
    v.type = type;
    v.text = value;
    return v;
}

ReplyView str(std::string_view value) { return text(Type::string, value); }

ReplyView nil()
{
    ReplyView v;
    v.type = Type::nil;
    return v;
}

ReplyView array(std::vector<ReplyView> elements)
{
    ReplyView v;
    v.type = Type::array;
    v.elements = std::move(elements);
    return v;
}

// [start, end, [host, port, id]] as Redis writes a range with no replica.
ReplyView range(long long start, long long end, ReplyView host, long long port)
{
    return array({integer(start), integer(end), array({std::move(host), integer(port), str("0123abcd")})});
}

constexpr std::string_view kAsked = "10.0.0.9";

struct Read {
    bool ok;
    SlotMap map;
    std::string error;
};

Read read(const ReplyView& reply, std::string_view asked = kAsked)
{
    Read r;
    r.ok = read_slots(reply, asked, r.map, r.error);
    return r;
}

std::string refusal(const ReplyView& reply)
{
    Read r = read(reply);
    EXPECT_FALSE(r.ok);
    return r.error;
}

NodeAddress owner_of(const SlotMap& map, unsigned slot)
{
    int index = map.table.owner(slot);
    return index == SlotTable::kNone ? NodeAddress{} : map.table.nodes()[static_cast<size_t>(index)];
}

}  // namespace

TEST(ReadSlots, ThreeMastersWithReplicas)
{
    ReplyView reply = array({
        range(0, 5460, str("127.0.0.1"), 7000),
        range(5461, 10922, str("127.0.0.1"), 7001),
        range(10923, 16383, str("::1"), 7002),
    });
    // Replicas follow the master in a range: they are not routed to.
    reply.elements[0].elements.push_back(array({str("127.0.0.1"), integer(7003), str("replica")}));
    Read r = read(reply);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.map.table.covered(), 16384u);
    EXPECT_EQ(r.map.table.masters(), 3u);
    EXPECT_EQ(owner_of(r.map, 0), (NodeAddress{"127.0.0.1", 7000}));
    EXPECT_EQ(owner_of(r.map, 5461), (NodeAddress{"127.0.0.1", 7001}));
    EXPECT_EQ(owner_of(r.map, 16383), (NodeAddress{"::1", 7002}));
    EXPECT_EQ(r.map.skipped, 0u);
    EXPECT_TRUE(r.error.empty());
}

TEST(ReadSlots, AnErrorReplyIsTheError)
{
    EXPECT_EQ(refusal(text(Type::error, "ERR This instance has cluster support disabled")),
              "ERR This instance has cluster support disabled");
}

TEST(ReadSlots, OnlyAnArrayIsAMap)
{
    EXPECT_EQ(refusal(str("OK")), "not an array");
    EXPECT_EQ(refusal(integer(1)), "not an array");
    EXPECT_EQ(refusal(nil()), "not an array");
    EXPECT_EQ(refusal(ReplyView{}), "not an array");
}

TEST(ReadSlots, AnEmptyMapAssignsNoSlot)
{
    EXPECT_EQ(refusal(array({})), "no slot is assigned");
}

TEST(ReadSlots, MalformedRanges)
{
    const std::string malformed = "a malformed slot range";
    ReplyView good = range(0, 10, str("127.0.0.1"), 7000);
    auto with = [&](ReplyView bad) { return array({good, std::move(bad)}); };

    EXPECT_EQ(refusal(with(integer(3))), malformed);
    EXPECT_EQ(refusal(with(array({integer(0), integer(10)}))), malformed);  // no master
    ReplyView start = range(0, 10, str("127.0.0.1"), 7000);
    start.elements[0] = str("0");
    EXPECT_EQ(refusal(with(start)), malformed);
    ReplyView end = range(0, 10, str("127.0.0.1"), 7000);
    end.elements[1] = nil();
    EXPECT_EQ(refusal(with(end)), malformed);
    ReplyView master = range(0, 10, str("127.0.0.1"), 7000);
    master.elements[2] = str("127.0.0.1:7000");
    EXPECT_EQ(refusal(with(master)), malformed);
    ReplyView short_master = range(0, 10, str("127.0.0.1"), 7000);
    short_master.elements[2].elements.resize(1);  // a host, no port
    EXPECT_EQ(refusal(with(short_master)), malformed);
    // A master of host and port only (Redis before 4.0 sent no id) is fine.
    ReplyView old = range(11, 20, str("127.0.0.1"), 7001);
    old.elements[2].elements.resize(2);
    EXPECT_TRUE(read(with(old)).ok);
}

TEST(ReadSlots, MalformedAddresses)
{
    const std::string malformed = "a malformed node address";
    EXPECT_EQ(refusal(array({range(0, 10, integer(127), 7000)})), malformed);
    EXPECT_EQ(refusal(array({range(0, 10, text(Type::other, "127.0.0.1"), 7000)})), malformed);
    EXPECT_EQ(refusal(array({range(0, 10, str("127.0.0.1"), 0)})), malformed);
    EXPECT_EQ(refusal(array({range(0, 10, str("127.0.0.1"), -7000)})), malformed);
    EXPECT_EQ(refusal(array({range(0, 10, str("127.0.0.1"), 65536)})), malformed);
    ReplyView port_as_text = range(0, 10, str("127.0.0.1"), 7000);
    port_as_text.elements[2].elements[1] = str("7000");
    port_as_text.elements[2].elements[1].integer = 7000;  // only an integer reply is read as one
    EXPECT_EQ(refusal(array({port_as_text})), malformed);
    // An address is checked before its name: a host name with a bad port
    // is malformed, not skipped.
    EXPECT_EQ(refusal(array({range(0, 10, str("redis-1.example"), 0)})), malformed);

    Read lowest = read(array({range(0, 10, str("127.0.0.1"), 1)}));
    ASSERT_TRUE(lowest.ok) << lowest.error;
    EXPECT_EQ(owner_of(lowest.map, 0).port, 1);
    Read highest = read(array({range(0, 10, str("127.0.0.1"), 65535)}));
    ASSERT_TRUE(highest.ok) << highest.error;
    EXPECT_EQ(owner_of(highest.map, 0).port, 65535);
}

TEST(ReadSlots, NoHostMeansTheNodeAsked)
{
    Read r = read(array({range(0, 99, nil(), 7000), range(100, 199, str(""), 7001)}));
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(owner_of(r.map, 0), (NodeAddress{std::string(kAsked), 7000}));
    EXPECT_EQ(owner_of(r.map, 100), (NodeAddress{std::string(kAsked), 7001}));
    EXPECT_EQ(r.map.skipped, 0u);
}

TEST(ReadSlots, HostNamesAreSkippedAndCounted)
{
    Read r = read(array({
        range(0, 99, str("redis-1.example"), 7000),
        range(100, 199, str("127.0.0.1"), 7001),
        range(200, 299, str("redis-2.example"), 7002),
    }));
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.map.skipped, 2u);
    EXPECT_EQ(r.map.skipped_name, "redis-1.example");  // the first one
    EXPECT_EQ(r.map.table.covered(), 100u);
    EXPECT_EQ(r.map.table.owner(0), SlotTable::kNone);
    EXPECT_EQ(r.map.table.owner(299), SlotTable::kNone);
    EXPECT_EQ(owner_of(r.map, 150), (NodeAddress{"127.0.0.1", 7001}));
    // The node asked is named too when it is a host name.
    Read asked = read(array({range(0, 99, nil(), 7000), range(100, 199, str("127.0.0.1"), 7001)}), "redis-0");
    ASSERT_TRUE(asked.ok) << asked.error;
    EXPECT_EQ(asked.map.skipped, 1u);
    EXPECT_EQ(asked.map.skipped_name, "redis-0");
}

TEST(ReadSlots, OnlyHostNamesIsNoMap)
{
    ReplyView reply = array({range(0, 8191, str("redis-1.example"), 7000),
                             range(8192, 16383, str("redis-2.example"), 7001)});
    EXPECT_EQ(refusal(reply), "every master is named by a host name, which a worker does not resolve");
}

TEST(ReadSlots, RangesOutOfBounds)
{
    const std::string out = "a slot range out of bounds";
    ReplyView good = range(0, 10, str("127.0.0.1"), 7000);
    EXPECT_EQ(refusal(array({good, range(-1, 10, str("127.0.0.1"), 7001)})), out);
    EXPECT_EQ(refusal(array({good, range(0, -1, str("127.0.0.1"), 7001)})), out);
    EXPECT_EQ(refusal(array({good, range(16000, 16384, str("127.0.0.1"), 7001)})), out);
    EXPECT_EQ(refusal(array({good, range(20, 10, str("127.0.0.1"), 7001)})), out);
    // A negative number is out of bounds even where it would wrap around
    // to a slot: 5 - 2^32 is not slot 5.
    EXPECT_EQ(refusal(array({good, range(5 - (1LL << 32), 10, str("127.0.0.1"), 7001)})), out);
    EXPECT_EQ(refusal(array({good, range(0, 10 - (1LL << 32), str("127.0.0.1"), 7001)})), out);
    // The whole reply is refused, not just the bad range.
    EXPECT_EQ(refusal(array({range(20, 10, str("127.0.0.1"), 7001), good})), out);
    // A skipped range's slots are not looked at.
    Read skipped = read(array({good, range(20, 10, str("redis-1.example"), 7001)}));
    EXPECT_TRUE(skipped.ok) << skipped.error;
    EXPECT_EQ(skipped.map.skipped, 1u);
    // One slot is a range.
    Read one = read(array({range(16383, 16383, str("127.0.0.1"), 7000)}));
    ASSERT_TRUE(one.ok) << one.error;
    EXPECT_EQ(one.map.table.covered(), 1u);
}

TEST(ReadSlots, LaterRangesWin)
{
    Read r = read(array({range(0, 99, str("127.0.0.1"), 7000), range(50, 60, str("127.0.0.1"), 7001)}));
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.map.table.covered(), 100u);
    EXPECT_EQ(owner_of(r.map, 49).port, 7000);
    EXPECT_EQ(owner_of(r.map, 55).port, 7001);
    EXPECT_EQ(owner_of(r.map, 61).port, 7000);
}
