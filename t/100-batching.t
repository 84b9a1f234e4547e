# Batching and pipelining: batches taken close together for the same queue
# key share one RPUSH, sealed by count, size or delay; each request is still
# answered only once its own element is acknowledged, and a session's
# batches keep their order.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::Recording::Load;
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET ();
use IO::Select ();

sub raw_post {
    my ($site, $body) = @_;
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

sub status_of { return ($_[0] // '') =~ m{^HTTP/1\.\d (\d{3})} ? $1 : undef }

sub rpush_calls {
    my ($calls) = redis_cmd('INFO', 'commandstats') =~ /cmdstat_rpush:calls=(\d+)/;
    return $calls // 0;
}

sub statuses {
    my %codes;
    $codes{ status_of($_) // 'none' }++ for @_;
    return join ' ', map { "$_ x$codes{$_}" } sort keys %codes;
}

# Sends $n batches at once on $n connections; returns their statuses.
sub burst {
    my ($n, $prefix, %o) = @_;
    my $body = $o{body} // sub { load_batch("$prefix-$_[0]", 0) };
    my @raw = concurrent_requests(10, map { raw_post(1, $body->($_)) } 1 .. $n);
    return statuses(@raw);
}

redis_start();

sub fresh {
    my ($extra) = @_;
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1);
    start_nginx(error_log_level => 'info', config => ingest_location($extra));
    # The site lookup first, so that only RPUSH is counted below.
    http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('warm', 0));
    redis_cmd('DEL', $_) for @{ redis_cmd('KEYS', 'recording:queue:*') };
    redis_cmd('CONFIG', 'RESETSTAT');
}

# Requests sent without waiting for their answers, and the answers later.
sub send_async {
    return map {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(), Proto => 'tcp')
            or die "connect: $@";
        print $s raw_post(1, $_);
        $s;
    } @_;
}

# Each read ends at EOF or after a 15 s hang guard (then 'none'): a request
# left waiting for a delay of an hour shows as unanswered.
sub answers {
    my $deadline = time + 15;
    my @statuses;
    for my $s (@_) {
        my $raw = '';
        my $sel = IO::Select->new($s);
        while ((my $left = $deadline - time) > 0) {
            last unless $sel->can_read($left);
            last unless sysread($s, $raw, 65536, length $raw);
        }
        push @statuses, status_of($raw) // 'none';
        close $s;
    }
    return join ' ', @statuses;
}

# Redis holds writes for $ms: the first RPUSH stays in flight, and what
# comes behind it gathers.
sub hold_writes { redis_cmd('CLIENT', 'PAUSE', $_[0], 'WRITE') }

# ---------------------------------------------------------------------------
# 1. A lone batch goes at once, whatever the delay: nothing is ahead of it.
# ---------------------------------------------------------------------------
{
    my $t = 'lone';
    # A delay of an hour: only going at once answers within the 15 s guard.
    fresh("recording_batch_delay 1h;");
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('lone', 0),
                           timeout => 15);
    is($res->{status}, 202, "$t: 202 at once, not after the delay");
    is(rpush_calls(), 1, "$t: one RPUSH");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 2. Behind an RPUSH in flight, batches gather, sealed by count: eight
#    batches, four per RPUSH, long before the delay.
# ---------------------------------------------------------------------------
{
    my $t = 'count';
    # A delay of an hour: only the count can seal within answers()' guard.
    fresh("recording_batch_elements 4; recording_batch_delay 1h; recording_redis_read_timeout 5s;");
    hold_writes(800);
    my @first = send_async(load_batch('count-0', 0));
    sleep 0.1;
    my @rest = send_async(map { load_batch("count-$_", 0) } 1 .. 8);
    is(answers(@first, @rest), join(' ', ('202') x 9), "$t: all answered 202, sealed by the count, not the delay");
    is(rpush_calls(), 3, "$t: the first alone, then two RPUSH of four");
    is(redis_cmd('LLEN', 'recording:queue:0'), 9, "$t: nine elements");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 3. Behind an RPUSH in flight, the delay bounds the wait: a batch goes at
#    most recording_batch_delay after it came, pipelined behind the first.
# ---------------------------------------------------------------------------
{
    my $t = 'delay';
    fresh("recording_batch_delay 300ms; recording_redis_read_timeout 5s;");
    hold_writes(1200);
    my @socks = send_async(load_batch('delay-0', 0));
    sleep 0.05;
    push @socks, send_async(load_batch('delay-1', 0));   # sealed at ~0.35 s
    sleep 0.45;
    push @socks, send_async(load_batch('delay-2', 0));   # sealed at ~0.8 s
    is(answers(@socks), '202 202 202', "$t: all answered 202");
    # Waiting for the first's reply instead (1.2 s) would have sent the two
    # as one RPUSH.
    is(rpush_calls(), 3, "$t: each sent when its delay passed, not with the reply");
    my @seqs = map { /"session_id":"(delay-\d)"/ } @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    is("@seqs", 'delay-0 delay-1 delay-2', "$t: in the order taken");

    # With no RPUSH ahead, batches taken together go together.
    my ($statuses) = burst(6, 'delay-burst');
    is($statuses, '202 x6', "$t: a burst: all 202");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 4. Sealed by size, behind an RPUSH in flight: batches of about 500 bytes,
#    1k per RPUSH.
# ---------------------------------------------------------------------------
{
    my $t = 'size';
    fresh("recording_batch_size 1k; recording_batch_delay 1h; recording_batch_elements 1000; "
          . "recording_redis_read_timeout 5s;");
    my $pad = 'x' x 300;
    my $body = sub { qq({"session_id":"size-$_[0]","seq":0,"events":[{"type":5,"timestamp":1,"data":{"tag":"$pad"}}]}) };
    hold_writes(800);
    my @socks = send_async($body->(0));
    sleep 0.1;
    push @socks, send_async(map { $body->($_) } 1 .. 6);
    is(answers(@socks), join(' ', ('202') x 7), "$t: all answered 202");
    # A batch is sealed once its elements, as RESP bulk strings, reach 1k.
    my $element = redis_cmd('LINDEX', 'recording:queue:0', 0);
    my $resp = length($element) + length(length $element) + 5;
    my $per_rpush = int((1024 + $resp - 1) / $resp);
    my $expected = 1 + int((6 + $per_rpush - 1) / $per_rpush);
    is(rpush_calls(), $expected, "$t: the first alone, then $per_rpush elements of $resp bytes per RPUSH");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 5. recording_batch_delay 0: what one pass of the event loop took.
# ---------------------------------------------------------------------------
{
    my $t = 'delay 0';
    fresh("recording_batch_delay 0;");
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('zero', 0));
    is($res->{status}, 202, "$t: a lone batch: 202");
    my ($statuses) = burst(30, 'zero');
    is($statuses, '202 x30', "$t: a burst: all 202");
    cmp_ok(rpush_calls(), '<=', 31, "$t: at most one RPUSH per batch");
    is(redis_cmd('LLEN', 'recording:queue:0'), 31, "$t: every element");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 6. Several shards: one RPUSH per key, each element in its own shard.
# ---------------------------------------------------------------------------
{
    my $t = 'shards';
    fresh("recording_queue_shards 4; recording_batch_delay 2s; recording_batch_elements 1000; "
          . "recording_redis_read_timeout 5s;");
    # Redis holds writes: per key, what the first pass of the event loop
    # took goes at once, everything after it gathers behind that RPUSH.
    hold_writes(800);
    my ($statuses) = burst(40, 'shard');
    is($statuses, '202 x40', "$t: all answered 202");
    my @keys = sort @{ redis_cmd('KEYS', 'recording:queue:*') };
    is(scalar @keys, 4, "$t: four shards in use");
    cmp_ok(rpush_calls(), '<=', 8, "$t: at most two RPUSH per shard (" . rpush_calls() . ")");
    my $total = 0;
    $total += redis_cmd('LLEN', $_) for @keys;
    is($total, 40, "$t: forty elements in all");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 7. Concurrent recorders with the defaults: order kept per session, and far
#    fewer RPUSH than batches.
# ---------------------------------------------------------------------------
{
    my $t = 'recorders';
    fresh('');
    my $load = start_load(clients => 12, batches => 40, prefix => 'rec', retries => 0);
    my $result = wait_load($load);
    is(scalar keys %{ $result->{accepted} }, 12 * 40, "$t: every batch answered 202");
    my $duplicates = check_delivery($t, $result, queued_elements());
    is($duplicates, 0, "$t: no duplicates");
    my $per_batch = rpush_calls() / (12 * 40);
    cmp_ok($per_batch, '<', 1, "$t: fewer RPUSH than batches");
    diag(sprintf "$t: %.2f Redis commands per accepted batch (12 recorders, defaults)", $per_batch);
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 8. Two workers: each batches on its own connection; nothing lost.
# ---------------------------------------------------------------------------
{
    my $t = 'two workers';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1);
    start_nginx(error_log_level => 'info', main_config => 'worker_processes 2;', config => ingest_location());
    my $load = start_load(clients => 8, batches => 30, prefix => 'two', retries => 0);
    my $result = wait_load($load);
    is(scalar keys %{ $result->{accepted} }, 8 * 30, "$t: every batch answered 202");
    is(check_delivery($t, $result, queued_elements()), 0, "$t: no duplicates");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

done_testing();
