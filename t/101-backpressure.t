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
                        . ingest_location('recording_redis_read_timeout 1h; recording_batch_delay 0;'));
    http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('warm', 0));

    # Redis takes no write for 3 s; the read timeout is an hour, so a batch
    # is either refused at once (the bound) or answered once Redis took it.
    redis_cmd('CLIENT', 'PAUSE', 3000, 'WRITE');
    my @raw = concurrent_requests(15, map { raw_post(1, big_batch("big-$_")) } 1 .. 10);
    my @accepted = grep { (status_of($raw[$_ - 1]) // '') eq '202' } 1 .. 10;
    my @refused = grep { (status_of($raw[$_ - 1]) // '') eq '503' } 1 .. 10;
    is(@accepted + @refused, 10, "$t: every batch answered 202 or 503");
    cmp_ok(scalar @accepted, '>=', 1, "$t: the first batches were taken (" . scalar(@accepted) . ")");
    cmp_ok(scalar @accepted, '<=', 4, "$t: no more than 64k of them");
    cmp_ok(scalar @refused, '>=', 6, "$t: the rest refused (" . scalar(@refused) . ")");
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
    # Writes held far longer than the test runs (UNPAUSE ends it), and the
    # read timeout is an hour: a refusal that was not immediate would not
    # come within concurrent_requests' 10 s hang guard.
    redis_cmd('CLIENT', 'PAUSE', 600_000, 'WRITE');
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
    for my $round (1 .. 10) {
        my @raw = concurrent_requests(10, map { raw_post(1, big_batch("stall-$round-$_")) } 1 .. 20);
        $refused += grep { (status_of($_) // '') eq '503' } @raw;
        diag(join ' ', map { status_of($_) // 'none' } @raw) if $ENV{DEBUG_T};
    }
    my $after = $rss->();
    close $_ for @pending;
    is($refused, 200, "$t: 200 more batches refused at once while Redis stalls");
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
                config => "location = /status { recording_status; }\n"
                        . ingest_location("recording_redis 127.0.0.1:$port; recording_redis_read_timeout 400ms;"));
    my $first = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('u', 0),
                             timeout => 15);
    is($first->{status}, 503, "$t: the first batch: 503");
    like(error_log_text(), qr/recording: redis 127\.0\.0\.1:$port: no reply in time/,
         "$t: ... answered by the read timeout");
    is($first->{headers}{'retry-after'}, '5', "$t: ... with Retry-After");
    # For a second after the timeout no new connection is tried
    # (RedisClient::kRetryInterval): ten loopback requests take milliseconds
    # of it. A request that tried would wait on the silent server and count
    # as a reconnect.
    my @raw = concurrent_requests(15, map { raw_post(1, load_batch("u-$_", 0)) } 1 .. 10);
    is(scalar(grep { (status_of($_) // '') eq '503' } @raw), 10, "$t: the next 10: 503");
    is(status_json()->{redis}{reconnects}, 0, "$t: ... refused without trying Redis again");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

Test::More::done_testing();
