# Bounded memory and clear back-pressure: what a worker holds for Redis is
# bounded by recording_pending_limit; past it, and while Redis is known to
# be unreachable, new batches get 503 queue_unavailable at once, with
# Retry-After. Nothing answered 202 is lost.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::Recording::Load;
use Time::HiRes qw(time sleep);
use POSIX ();
use IO::Socket::INET ();

sub raw_post {
    my ($site, $body) = @_;
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

sub status_of { return ($_[0] // '') =~ m{^HTTP/1\.\d (\d{3})} ? $1 : undef }

# A batch of about 20 KB.
sub big_batch {
    my ($session) = @_;
    my $pad = 'y' x 20000;
    return qq({"session_id":"$session","seq":0,"events":[{"type":5,"timestamp":1,"data":{"tag":"$pad"}}]});
}

redis_start();

sub status_json {
    my $res = http_request(uri => '/status');
    return JSON::PP::decode_json($res->{body});
}
use JSON::PP ();

# ---------------------------------------------------------------------------
# 1. The memory bound: Redis holds writes (CLIENT PAUSE WRITE) while a
#    burst of 20 KB batches comes; past 64k the rest are refused at once.
# ---------------------------------------------------------------------------
{
    my $t = 'pending limit';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1);
    start_nginx(error_log_level => 'info',
                http_config => 'recording_pending_limit 64k;',
                config => "location = /status { recording_status; }\n"
                        . ingest_location('recording_redis_read_timeout 5s; recording_batch_delay 0;'));
    http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('warm', 0));

    redis_cmd('CLIENT', 'PAUSE', 1500, 'WRITE');
    my $started = time;
    my @raw = concurrent_requests(10, map { raw_post(1, big_batch("big-$_")) } 1 .. 10);
    my $took = time - $started;
    my @accepted = grep { (status_of($raw[$_ - 1]) // '') eq '202' } 1 .. 10;
    my @refused = grep { (status_of($raw[$_ - 1]) // '') eq '503' } 1 .. 10;
    is(@accepted + @refused, 10, "$t: every batch answered 202 or 503");
    cmp_ok(scalar @accepted, '>=', 1, "$t: the first batches were taken (" . scalar(@accepted) . ")");
    cmp_ok(scalar @accepted, '<=', 4, "$t: no more than 64k of them");
    cmp_ok(scalar @refused, '>=', 6, "$t: the rest refused (" . scalar(@refused) . ")");
    cmp_ok($took, '>=', 1.0, "$t: the taken ones answered once Redis took them (${took}s)");
    my ($refusal) = grep { (status_of($_) // '') eq '503' } @raw;
    like($refusal // '', qr/\r\nRetry-After: 5\r\n/i, "$t: a 503 carries Retry-After");
    like($refusal // '', qr/\{"error":"queue_unavailable"\}\z/, "$t: ... and queue_unavailable");
    my @elements = @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    my %landed = map { /"session_id":"(big-\d+)"/ ? ($1 => 1) : () } @elements;
    is_deeply([sort keys %landed], [sort map { "big-$_" } @accepted], "$t: exactly the accepted batches landed");
    my $s = status_json();
    is($s->{batches}{queue_unavailable}, scalar @refused, "$t: refusals counted as queue_unavailable");
    no_crash($t);
}

# ---------------------------------------------------------------------------
# 2. The refusal is immediate: with Redis's writes paused for long, the
#    worker's memory stays flat however many batches come.
# ---------------------------------------------------------------------------
{
    my $t = 'flat under a stall';
    redis_cmd('CLIENT', 'PAUSE', 3000, 'WRITE');
    my $pid = (grep { /^\d+$/ } map { (split)[0] } `ps -o pid= --ppid \$(cat @{[servroot()]}/logs/nginx.pid)`)[0];
    my $rss = sub { open my $f, '<', "/proc/$pid/status" or return 0; local $/; (<$f> =~ /VmRSS:\s+(\d+)/)[0] // 0 };
    # Fill the bound with requests whose answers we do not wait for.
    my @pending = map {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(), Proto => 'tcp')
            or die "connect: $@";
        print $s raw_post(1, big_batch("stall-$_"));
        $s;
    } 1 .. 5;
    sleep 0.3;
    my $before = $rss->();
    my $refused = 0;
    my $started = time;
    for my $round (1 .. 10) {
        my @raw = concurrent_requests(10, map { raw_post(1, big_batch("stall-$round-$_")) } 1 .. 20);
        $refused += grep { (status_of($_) // '') eq '503' } @raw;
        diag(join ' ', map { status_of($_) // 'none' } @raw) if $ENV{DEBUG_T};
    }
    my $took = time - $started;
    my $after = $rss->();
    close $_ for @pending;
    is($refused, 200, "$t: 200 more batches refused while Redis stalls");
    cmp_ok($took, '<', 2.5, "$t: ... each at once (${took}s in all)");
    cmp_ok($after - $before, '<', 8 * 1024, "$t: worker RSS grew by less than 8 MB ($before kB -> $after kB)");
    redis_cmd('CLIENT', 'UNPAUSE');
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. Redis unreachable past its timeout: a server that never answers costs
#    one read timeout, then batches are refused at once for a while.
# ---------------------------------------------------------------------------
{
    my $t = 'unreachable';
    my ($port) = start_silent_server();
    start_nginx(error_log_level => 'info', no_default_redis => 1,
                config => ingest_location("recording_redis 127.0.0.1:$port; recording_redis_read_timeout 400ms;"));
    my $started = time;
    my $first = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('u', 0));
    my $first_took = time - $started;
    is($first->{status}, 503, "$t: the first batch: 503");
    cmp_ok($first_took, '>=', 0.35, "$t: ... after the read timeout (${first_took}s)");
    is($first->{headers}{'retry-after'}, '5', "$t: ... with Retry-After");
    $started = time;
    my @raw = concurrent_requests(5, map { raw_post(1, load_batch("u-$_", 0)) } 1 .. 20);
    my $took = time - $started;
    is(scalar(grep { (status_of($_) // '') eq '503' } @raw), 20, "$t: the next 20: 503");
    cmp_ok($took, '<', 0.3, "$t: ... at once (${took}s)");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

Test::More::done_testing();
