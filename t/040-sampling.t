# Sampling: whole sessions in or out by CRC-32("<site>:<session>"), with the
# threshold floor(rate * 10000 + 0.5) in IEEE doubles, and the queue shard
# bucket % shards. Expected decisions are computed here, independently.
use lib 't/lib';
use Test::Nginx::Recording 'no_plan';
use Compress::Zlib ();
use POSIX ();

start_nginx(config => <<'CONF');
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_queue_shards 7;
    }
CONF

sub bucket { Compress::Zlib::crc32("$_[0]:$_[1]") }

sub post {
    my ($site, $session) = @_;
    my $res = http_request(method => 'POST', uri => "/v1/sites/$site/recordings",
                           body => qq({"session_id":"$session","seq":0,"events":[{"type":3,"timestamp":1}]}));
    return $res->{status};
}

# Each rate on a site of its own; the expected rate is what the legacy layer
# samples with (Lua's tonumber, clamped).
my @rates = (
    [20, '0.3',      0.3],
    [21, '0.5',      0.5],
    [22, '0.999',    0.999],
    [23, '0',        0],
    [24, '1',        1],
    [25, ' 0.25 ',   0.25],
    [26, '-1',       0],
    [27, '2',        1],
    [28, 'abc',      1],
    [29, '',         1],
    [30, '1e-1',     0.1],
);
my $sessions = 120;
for my $r (@rates) {
    my ($site, $text, $rate) = @$r;
    redis_cmd('HSET', "recording:site:$site", 'enabled', 1, 'sample_rate', $text);
    my $threshold = POSIX::floor($rate * 10000 + 0.5);
    my ($wrong, $in) = (0, 0);
    for my $i (1 .. $sessions) {
        my $session = "sess-$i";
        my $expected = (bucket($site, $session) % 10000) < $threshold ? 202 : 200;
        $in++ if $expected == 202;
        $wrong++ if post($site, $session) != $expected;
    }
    is($wrong, 0, "rate '$text': all $sessions decisions as computed ($in sampled in)");
}
redis_cmd('HSET', 'recording:site:31', 'enabled', 1);
is(post(31, 'sess-1'), 202, 'no sample_rate field means 1');

# 0.00015 * 10000 + 0.5 is just below 2 in doubles: the threshold is 1, so
# bucket % 10000 == 1 is out (exact decimal arithmetic would take it).
my %found;
for (my $i = 0; keys %found < 2 && $i < 2_000_000; $i++) {
    my $m = bucket(32, "edge$i") % 10000;
    $found{$m} //= "edge$i" if $m <= 1;
}
redis_cmd('HSET', 'recording:site:32', 'enabled', 1, 'sample_rate', '0.00015');
is(post(32, $found{0}), 202, 'rate 0.00015: bucket % 10000 == 0 is in');
is(post(32, $found{1}), 200, 'rate 0.00015: bucket % 10000 == 1 is out, as in IEEE doubles');

# A whole session is in or out: every batch of it gets the same answer.
redis_cmd('HSET', 'recording:site:33', 'enabled', 1, 'sample_rate', '0.5');
my %answers;
$answers{ post(33, 'steady') }++ for 1 .. 10;
is(scalar keys %answers, 1, 'every batch of a session gets the same decision');

# Shards: bucket % 7.
redis_cmd('FLUSHDB');
redis_cmd('HSET', 'recording:site:1', 'enabled', 1);
my $misplaced = 0;
for my $i (1 .. 40) {
    my $shard = bucket(1, "q$i") % 7;
    my $before = redis_cmd('LLEN', "recording:queue:$shard");
    post(1, "q$i");
    $misplaced++ unless redis_cmd('LLEN', "recording:queue:$shard") == $before + 1;
}
is($misplaced, 0, 'every batch went to recording:queue:<bucket % 7>');
is(scalar @{ redis_cmd('KEYS', 'recording:queue:*') }, 7, 'forty sessions spread over the seven shards');

stop_nginx();
