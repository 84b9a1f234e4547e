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

# Sends $n batches at once on $n connections; returns (statuses, seconds).
sub burst {
    my ($n, $prefix, %o) = @_;
    my $body = $o{body} // sub { load_batch("$prefix-$_[0]", 0) };
    my $started = time;
    my @raw = concurrent_requests(10, map { raw_post(1, $body->($_)) } 1 .. $n);
    return (statuses(@raw), time - $started);
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

# ---------------------------------------------------------------------------
# 1. Sealed by count: 8 batches, 4 per RPUSH, long before the delay.
# ---------------------------------------------------------------------------
{
    my $t = 'count';
    fresh("recording_batch_elements 4; recording_batch_delay 2s;");
    my ($statuses, $took) = burst(8, 'count');
    is($statuses, '202 x8', "$t: all answered 202");
    cmp_ok($took, '<', 1.5, "$t: sealed by the count, not the 2 s delay (${took}s)");
    is(rpush_calls(), 2, "$t: two RPUSH for eight batches");
    is(redis_cmd('LLEN', 'recording:queue:0'), 8, "$t: eight elements");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 2. Sealed by the delay: a lone batch waits for it, then goes alone.
# ---------------------------------------------------------------------------
{
    my $t = 'delay';
    fresh("recording_batch_delay 300ms;");
    my $started = time;
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('delay-1', 0));
    my $took = time - $started;
    is($res->{status}, 202, "$t: 202");
    cmp_ok($took, '>=', 0.28, "$t: answered after the delay (${took}s)");
    cmp_ok($took, '<', 2, "$t: ... not much later");
    is(rpush_calls(), 1, "$t: one RPUSH");

    # Several within the delay share it.
    my ($statuses) = burst(6, 'delay-burst');
    is($statuses, '202 x6', "$t: a burst: all 202");
    cmp_ok(rpush_calls(), '<=', 2, "$t: the burst took one RPUSH (two at most if it straddled the delay)");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 3. Sealed by size: batches of about 400 bytes, 1k per RPUSH.
# ---------------------------------------------------------------------------
{
    my $t = 'size';
    fresh("recording_batch_size 1k; recording_batch_delay 2s; recording_batch_elements 1000;");
    my $pad = 'x' x 300;
    my ($statuses, $took) = burst(6, 'size', body => sub {
        qq({"session_id":"size-$_[0]","seq":0,"events":[{"type":5,"timestamp":1,"data":{"tag":"$pad"}}]})
    });
    is($statuses, '202 x6', "$t: all answered 202");
    cmp_ok($took, '<', 1.5, "$t: sealed by size, not the delay (${took}s)");
    # A batch is sealed once its elements, as RESP bulk strings, reach 1k.
    my $element = redis_cmd('LINDEX', 'recording:queue:0', 0);
    my $resp = length($element) + length(length $element) + 5;
    my $per_rpush = int((1024 + $resp - 1) / $resp);
    my $expected = int((6 + $per_rpush - 1) / $per_rpush);
    is(rpush_calls(), $expected, "$t: $per_rpush elements of $resp bytes per RPUSH: $expected RPUSH");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 4. recording_batch_delay 0: what one pass of the event loop took.
# ---------------------------------------------------------------------------
{
    my $t = 'delay 0';
    fresh("recording_batch_delay 0;");
    my $started = time;
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('zero', 0));
    is($res->{status}, 202, "$t: a lone batch: 202");
    my ($statuses) = burst(30, 'zero');
    is($statuses, '202 x30', "$t: a burst: all 202");
    cmp_ok(rpush_calls(), '<=', 31, "$t: at most one RPUSH per batch");
    is(redis_cmd('LLEN', 'recording:queue:0'), 31, "$t: every element");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 5. Several shards: one RPUSH per key, each element in its own shard.
# ---------------------------------------------------------------------------
{
    my $t = 'shards';
    fresh("recording_queue_shards 4; recording_batch_delay 300ms; recording_batch_elements 1000;");
    my ($statuses) = burst(40, 'shard');
    is($statuses, '202 x40', "$t: all answered 202");
    my @keys = sort @{ redis_cmd('KEYS', 'recording:queue:*') };
    is(scalar @keys, 4, "$t: four shards in use");
    cmp_ok(rpush_calls(), '<=', 8, "$t: about one RPUSH per shard (" . rpush_calls() . ")");
    my $total = 0;
    $total += redis_cmd('LLEN', $_) for @keys;
    is($total, 40, "$t: forty elements in all");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 6. Concurrent recorders with the defaults: order kept per session, and far
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
# 7. Two workers: each batches on its own connection; nothing lost.
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
