# recording_health: what a load balancer reads. 200 {"status":"ok"} while
# batches can be accepted (Redis answers, or a spool has room), 503 with the
# reason otherwise and while the worker shuts down; at most one PING per
# Redis and second, whatever the number of health requests; nginx -t's
# rules as for recording_status.
#
# No assertion on time: a change of state is waited for with a guard of
# several seconds (a hang guard), and the time it took is only printed.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use File::Path qw(make_path remove_tree);
use IO::Socket::INET ();
use Time::HiRes qw(time sleep);

my $SPOOL = servroot() . '/spool';
my $OK = '{"status":"ok"}';
my $DOWN = '{"status":"unavailable","reason":"redis_unreachable"}';

sub health { return http_request(uri => '/healthz', timeout => 5, @_) }

# Polls /healthz until it answers $status; prints how long that took.
sub becomes {
    my ($status, $what) = @_;
    my $from = time;
    my $res;
    my $ok = poll_until(15, sub { $res = health(); ($res->{status} // 0) == $status });
    diag(sprintf("%s: %d after %.2fs", $what, $status, time - $from));
    return $ok ? $res : undef;
}

sub pings {
    my ($line) = grep { /^cmdstat_ping:/ } split /\r?\n/, redis_cmd('INFO', 'commandstats');
    return $line && $line =~ /calls=(\d+)/ ? $1 : 0;
}

sub enable_site { redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1) }

my $HEALTH = "location = /healthz { recording_health; }\n";
my $TIMEOUTS = 'recording_redis_connect_timeout 300ms; recording_redis_read_timeout 1s;';

# ---------------------------------------------------------------------------
# 1. Redis answers: 200; HEAD too; other methods 405.
# ---------------------------------------------------------------------------
{
    my $t = 'redis up';
    start_nginx(http_config => "$TIMEOUTS\n", config => $HEALTH . ingest_location());
    my $res = health();
    is($res->{status}, 200, "$t: GET answers 200");
    is($res->{body}, $OK, "$t: ... with {\"status\":\"ok\"}");
    like($res->{headers}{'content-type'} // '', qr{^application/json}, "$t: ... as JSON");
    $res = health(method => 'HEAD');
    is($res->{status}, 200, "$t: HEAD answers 200");
    is($res->{body} // '', '', "$t: ... without a body");
    is(health(method => 'POST', body => 'x')->{status}, 405, "$t: POST answers 405");
}

# ---------------------------------------------------------------------------
# 2. Health asks Redis at most once a second, however often it is asked.
# ---------------------------------------------------------------------------
{
    my $t = 'one PING a second';
    ok(becomes(200, "$t: warm"), "$t: healthy");
    redis_cmd('CONFIG', 'RESETSTAT');
    my $from = time;
    my $n = 0;
    my $all_ok = 1;
    # Requests for three seconds: a PING per request would be hundreds.
    while (time - $from < 3 && $n < 5000) {
        my $res = health();
        $all_ok &&= ($res->{status} // 0) == 200;
        $n++;
    }
    my $seconds = time - $from;
    my $pings = pings();
    ok($all_ok, "$t: $n health requests all answered 200");
    # A bound that grows with the run's length, so a slow machine only
    # loosens it: a PING per request would be $n.
    # The once-a-second rule itself is HealthProbe's, unit-tested in core
    # with a clock the test sets; here, only counts are asserted.
    diag(sprintf("%s: %d PINGs for %d requests over %.1fs", $t, $pings, $n, $seconds));
    cmp_ok($pings, '>=', 1, "$t: Redis is asked (a PING)");
    cmp_ok($pings, '<', $n / 4, "$t: far fewer PINGs ($pings) than health requests ($n)");
}

# ---------------------------------------------------------------------------
# 3. Redis goes away: 503 with the reason; it comes back: 200 again.
# ---------------------------------------------------------------------------
{
    my $t = 'redis away';
    redis_stop();
    my $res = becomes(503, "$t: Redis stopped");
    ok($res, "$t: 503 once Redis is gone");
    is($res && $res->{body}, $DOWN, "$t: ... with the reason redis_unreachable");
    redis_start();
    ok(becomes(200, "$t: Redis started again"), "$t: 200 again once Redis is back");

    # A Redis that stops answering (but keeps the connection) is found out
    # too: by the PING that gets no reply.
    redis_cmd('CLIENT', 'PAUSE', 4000, 'ALL');
    ok(becomes(503, "$t: Redis paused"), "$t: 503 while Redis does not answer");
    ok(becomes(200, "$t: Redis unpaused"), "$t: 200 after the pause");
    unlike(join("\n", crash_lines()), qr/./, "$t: no alert or crash in the error log");
    stop_nginx();
}

# ---------------------------------------------------------------------------
# 4. With a spool: Redis away is fine while the spool has room; a full spool
#    with Redis away is not.
# ---------------------------------------------------------------------------
{
    my $t = 'spool';
    remove_tree($SPOOL);
    make_path($SPOOL);
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site();
    start_nginx(http_config => "recording_spool $SPOOL max_size=1m;\n$TIMEOUTS\n",
                config => $HEALTH . ingest_location());
    is(http_request(method => 'POST', uri => '/v1/sites/1/recordings',
                    body => '{"session_id":"s1","seq":0,"events":[{"type":4,"timestamp":1,"data":{}}]}')->{status},
       202, "$t: a batch while Redis is up (the site is cached)");
    redis_stop();
    # The spool takes batches: still healthy, however long Redis is away.
    ok(becomes(200, "$t: Redis stopped"), "$t: 200 while the spool has room");
    my $pad = 'x' x 200_000;
    my $full = 0;
    for my $seq (1 .. 20) {
        my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings',
            body => qq({"session_id":"s1","seq":$seq,"events":[{"type":4,"timestamp":1,"data":{"p":"$pad"}}]}));
        if (($res->{status} // 0) == 503) { $full = 1; last }
    }
    ok($full, "$t: batches fill the 1 MB spool until it refuses one");
    my $res = becomes(503, "$t: spool full");
    ok($res, "$t: 503 with Redis away and the spool full");
    is($res && $res->{body}, '{"status":"unavailable","reason":"redis_unreachable_spool_full"}',
       "$t: ... with the reason");
    redis_start();
    ok(becomes(200, "$t: Redis back"), "$t: 200 again once Redis is back");
    stop_nginx();
}

# ---------------------------------------------------------------------------
# 5. nginx -s quit: a health request the exiting worker still answers gets
#    503 "shutting_down", so a balancer stops sending before the worker is gone.
# ---------------------------------------------------------------------------
{
    my $t = 'shutting down';
    redis_start();
    start_nginx(http_config => "$TIMEOUTS\n", config => $HEALTH . ingest_location());
    ok(becomes(200, "$t: before"), "$t: 200 before the signal");
    # A request whose header is not finished keeps the worker (and its
    # connection) while nginx shuts down gracefully.
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(), Proto => 'tcp',
                                     Timeout => 5) or die "connect: $@";
    print {$sock} "GET /healthz HTTP/1.1\r\nHost: localhost\r\n";
    sleep 0.2;
    my $pid = do { open my $fh, '<', servroot() . '/logs/nginx.pid' or die $!; local $/; <$fh> + 0 };
    kill QUIT => $pid;
    ok(poll_until(15, sub { error_log_text() =~ /gracefully shutting down/ }),
       "$t: the worker is shutting down");
    print {$sock} "Connection: close\r\n\r\n";
    my $raw = '';
    my $deadline = time + 15;
    while (time < $deadline) {
        my $n = sysread($sock, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    close $sock;
    like($raw, qr{^HTTP/1\.1 503 }, "$t: the exiting worker answers 503");
    like($raw, qr/\r\n\r\n\Q{"status":"unavailable","reason":"shutting_down"}\E$/, "$t: ... with the reason");
    stop_nginx();
}

# ---------------------------------------------------------------------------
# 6. nginx -t: the same rules as recording_status.
# ---------------------------------------------------------------------------
{
    my $t = 'nginx -t';
    my ($rc, $out) = nginx_test(config => $HEALTH);
    is($rc, 0, "$t: recording_health; in a location is accepted") or diag($out);
    ($rc, $out) = nginx_test(config => "location = /healthz { recording_health on; }\n");
    isnt($rc, 0, "$t: recording_health on; is rejected");
    like($out, qr/\[emerg\] invalid number of arguments in "recording_health" directive/, "$t: ... naming it");
    ($rc, $out) = nginx_test(config => "recording_health;\n");
    isnt($rc, 0, "$t: at server level is rejected");
    like($out, qr/\[emerg\] "recording_health" directive is not allowed here/, "$t: ... 'not allowed here'");
    ($rc, $out) = nginx_test(config => "location = /healthz { recording_health; recording_health; }\n");
    isnt($rc, 0, "$t: twice in a location is rejected");
    like($out, qr/\[emerg\] "recording_health" directive is duplicate/, "$t: ... 'is duplicate'");
    ($rc, $out) = nginx_test(config => "location = /healthz { recording_health; recording_status; }\n");
    isnt($rc, 0, "$t: with recording_status in the same location is rejected");
    like($out, qr/\[emerg\] "recording_status" directive cannot share a location with another content handler/,
         "$t: ... 'cannot share a location'");
}

Test::More::done_testing();
