# The module's Redis connection: losing and regaining it, timeouts, refused
# connections, unix sockets, error replies, large elements, pipelining, and
# clients that go away while their batch is in flight.  Every scenario checks
# both the HTTP answers and what ended up in Redis.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use IO::Socket::INET ();
use IO::Socket::UNIX ();
use IO::Select ();
use Socket ();
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new->canonical;
my $QUEUE = 'recording:queue:0';   # shards default to 1

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

sub batch_json {
    my ($session, $seq) = @_;
    return qq({"session_id":"$session","seq":) . ($seq // 0)
         . qq(,"events":[{"type":2,"timestamp":1700000000000,"data":{"adds":[]}}]});
}

sub post_batch {
    my ($site, $body, %o) = @_;
    return http_request(method => 'POST', uri => "/v1/sites/$site/recordings",
                        body => $body, timeout => $o{timeout} // 5,
                        headers => ['Content-Type' => 'application/json',
                                    @{ $o{headers} || [] }]);
}

sub enable_site { redis_cmd('HSET', "recording:site:$_[0]", 'enabled', 1, 'sample_rate', 1) }

sub queue_elements { return @{ redis_cmd('LRANGE', $QUEUE, 0, -1) } }

# The element without its `_ingest` member: the client's bytes.
sub strip_ingest {
    my ($element) = @_;
    (my $s = $element) =~ s/,"_ingest":\{[^{}]*\}(?=\}\z)//;
    return $s;
}

# A port with nothing listening on it.
sub closed_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1) or die "bind: $@";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# A fake "Redis" in a forked child (killed at the end; it also exits by
# itself after 60 s or when we die).  It accepts connections and reads what
# comes; then, by $mode:
#   silent   never answers;
#   close    closes the connection as soon as a command arrives;
#   garbage  answers every read with bytes that are not RESP.
sub start_fake_redis {
    my ($mode) = @_;
    return start_silent_server() if $mode eq 'silent';
    return start_server(sub {
        my ($listener, $alive) = @_;
        my $sel = IO::Select->new($listener);
        while ($alive->()) {
            for my $fh ($sel->can_read(0.2)) {
                if ($fh == $listener) {
                    my $c = $listener->accept or next;
                    $sel->add($c);
                    next;
                }
                my $n = sysread($fh, my $buf, 65536);
                if (defined $n && $n > 0 && $mode eq 'garbage') {
                    syswrite($fh, "?this is not RESP\r\n");
                    next;
                }
                $sel->remove($fh);
                close $fh;
            }
        }
    });
}

sub raw_post {
    my ($site, $body) = @_;
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

sub status_of { return ($_[0] // '') =~ m{^HTTP/1\.\d (\d{3})} ? $1 : undef }

# Writes a whole request and closes the connection without reading.
sub post_and_hang_up {
    my ($site, $body) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                  Proto => 'tcp', Timeout => 3) or die "connect: $@";
    my $data = raw_post($site, $body);
    while (length $data) {
        my $n = syswrite($s, $data) // die "write: $!";
        substr($data, 0, $n) = '';
    }
    close $s;
}

# ---------------------------------------------------------------------------
# 1. Redis restarted between two batches: the second one reconnects.
# ---------------------------------------------------------------------------
{
    my $t = 'restart';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(1);
    start_nginx(config => ingest_location());

    my $res = post_batch(1, batch_json('before-restart'));
    is($res->{status}, 202, "$t: batch before the restart is queued");
    is($res->{body}, '{"status":"queued"}', "$t: queued body");
    my @el = queue_elements();
    is(scalar @el, 1, "$t: one element in Redis before the restart");
    like($el[0] // '', qr/"session_id":"before-restart"/, "$t: it is the first batch");

    redis_restart();   # empty again: no persistence
    enable_site(1);
    ok(poll_until(3, sub { error_log_text() =~ /recording: redis \S+: connection lost/ }),
       "$t: the worker noticed the lost connection")
        or diag(join "\n", grep { /recording:/ } split /\n/, error_log_text());

    $res = post_batch(1, batch_json('after-restart'));
    is($res->{status}, 202, "$t: batch after the restart is queued (reconnected)");
    @el = queue_elements();
    is(scalar @el, 1, "$t: it landed in the restarted Redis");
    like($el[0] // '', qr/"session_id":"after-restart"/, "$t: and it is the second batch");

    my $log = error_log_text();
    like($log, qr/\[error\].*recording: redis 127\.0\.0\.1:\d+: connection lost/,
         "$t: error log has 'connection lost'");
    like($log, qr/\[notice\].*recording: redis 127\.0\.0\.1:\d+: answering again/,
         "$t: error log has 'answering again'");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 2. Redis stopped, site not cached: 503 with CORS headers; started: 202.
# ---------------------------------------------------------------------------
{
    my $t = 'redis down, site unknown to the cache';
    redis_start();
    redis_cmd('FLUSHALL');
    start_nginx(config => ingest_location());   # a new zone: nothing cached
    redis_stop();

    my $res = post_batch(2, batch_json('down1'),
                         headers => [Origin => 'https://shop.example']);
    is($res->{status}, 503, "$t: 503");
    is($res->{body}, '{"error":"queue_unavailable"}', "$t: queue_unavailable body");
    is($res->{headers}{'content-type'}, 'application/json', "$t: JSON content type");
    is($res->{headers}{'access-control-allow-origin'}, 'https://shop.example',
       "$t: Access-Control-Allow-Origin still present");
    is($res->{headers}{'access-control-allow-credentials'}, 'true',
       "$t: Access-Control-Allow-Credentials still present");
    is($res->{headers}{'vary'}, 'Origin', "$t: Vary: Origin still present");
    like(error_log_text(), qr/\[error\].*recording: redis 127\.0\.0\.1:\d+: connect failed/,
         "$t: 'connect failed' logged");

    redis_start();
    enable_site(2);
    is(redis_cmd('LLEN', $QUEUE), 0, "$t: nothing queued while Redis was down");
    $res = post_batch(2, batch_json('up1'));
    is($res->{status}, 202, "$t: 202 once Redis is back");
    my @el = queue_elements();
    is(scalar @el, 1, "$t: one element after Redis came back");
    like($el[0] // '', qr/"session_id":"up1"/, "$t: the batch sent after the restart");
    like(error_log_text(), qr/recording: redis \S+: answering again/,
         "$t: 'answering again' logged after the failure");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. Redis stopped after the site was cached: settings from the cache, the
#    push fails => 503.
# ---------------------------------------------------------------------------
{
    my $t = 'redis down, site cached';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(3);
    start_nginx(config => ingest_location());
    my $res = post_batch(3, batch_json('cached1'));
    is($res->{status}, 202, "$t: first batch queued (site now cached)");
    is(redis_cmd('LLEN', $QUEUE), 1, "$t: first batch landed");

    redis_stop();
    $res = post_batch(3, batch_json('cached2'));
    is($res->{status}, 503, "$t: 503 when the push cannot be made");
    is($res->{body}, '{"error":"queue_unavailable"}', "$t: queue_unavailable body");

    redis_start();   # empty: the site is only known to the cache now
    $res = post_batch(3, batch_json('cached3'));
    is($res->{status}, 202, "$t: after Redis is back, the cached settings still serve");
    my @el = queue_elements();
    is(scalar @el, 1, "$t: only the batch sent after the restart is there");
    like($el[0] // '', qr/"session_id":"cached3"/, "$t: and it is that batch");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 4. A Redis that never answers: the read timeout bounds the wait.
# ---------------------------------------------------------------------------
{
    my $t = 'silent redis';
    my ($port, $pid) = start_silent_server();
    start_nginx(no_default_redis => 1, config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_read_timeout 300ms;
R
    # The server accepts and never answers: only the read timeout can end
    # the wait (the client's 30 s is a hang guard, not a speed verdict).
    my $res = post_batch(4, batch_json('silent1'), timeout => 30);
    is($res->{status}, 503, "$t: 503 when Redis does not answer");
    is($res->{body}, '{"error":"queue_unavailable"}', "$t: queue_unavailable body");
    like(error_log_text(), qr/recording: redis 127\.0\.0\.1:$port: no reply in time/,
         "$t: the read timeout answered it");

    my $res2 = post_batch(4, batch_json('silent2'), timeout => 30);
    is($res2->{status}, 503, "$t: the worker still answers a second request with 503");
    is($res2->{headers}{'x-pid'}, $res->{headers}{'x-pid'}, "$t: same worker answered both");

    my $log = error_log_text();
    is(count_matches($log, qr/recording: redis 127\.0\.0\.1:$port: no reply in time, dropping the connection/),
       1, "$t: the timeout is logged once for two requests (once per change of state)");
    unlike($log, qr/answering again/, "$t: a server that never answers is not reported as recovered");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

# ---------------------------------------------------------------------------
# 4a. worker_shutdown_timeout: an exiting worker whose Redis never answers
#     closes the connection when the timeout comes (nginx closes what is
#     left through each connection's handler), not after the read timeout.
# ---------------------------------------------------------------------------
{
    my $t = 'worker_shutdown_timeout';
    my ($port, $pid) = start_silent_server();
    start_nginx(no_default_redis => 1, main_config => 'worker_shutdown_timeout 1s;',
                config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_read_timeout 1h;
R
    my $client = fork // die "fork: $!";
    if ($client == 0) {
        post_batch(4, batch_json('shutdown1'), timeout => 20);
        POSIX::_exit(0);
    }
    sleep 0.5;   # the batch is in flight: its HMGET waits for the silent server
    ok(stop_nginx(), "$t: nginx -s quit ends within the harness's grace, not after the read timeout");
    waitpid($client, 0);
    stop_child($pid);
}

# ---------------------------------------------------------------------------
# 4b. Redis drops the connection with the command unanswered, or answers
#     with bytes that are not RESP: 503 at once (not after the read
#     timeout), the loss is logged, and the worker goes on.
# ---------------------------------------------------------------------------
for my $mode (qw(close garbage)) {
    my $t = "fake redis ($mode)";
    my ($port, $pid) = start_fake_redis($mode);
    start_nginx(no_default_redis => 1, config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_read_timeout 1h;
R
    # With a read timeout of an hour, only noticing the loss can answer
    # within the client's 15 s hang guard.
    my (@status, @pids);
    for my $i (1 .. 3) {
        my $res = post_batch(4, batch_json("$mode$i"), timeout => 15);
        push @status, $res->{status} // 'none';
        push @pids, $res->{headers}{'x-pid'} // 'none';
    }
    is("@status", '503 503 503', "$t: 503 for each request, without waiting for the read timeout");
    unlike(error_log_text(), qr/no reply in time/, "$t: no read timeout fired");
    is(scalar(keys %{{ map { $_ => 1 } @pids }}), 1, "$t: one worker answered all (no crash)");
    like(error_log_text(), qr/recording: redis 127\.0\.0\.1:$port: connection lost/,
         "$t: 'connection lost' logged");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

# ---------------------------------------------------------------------------
# 5. Nothing listening: immediate 503, "connect failed" logged once.
# ---------------------------------------------------------------------------
{
    my $t = 'closed port';
    my $port = closed_port();
    start_nginx(no_default_redis => 1, config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_connect_timeout 1h;
            recording_redis_read_timeout 1h;
R
    # Both timeouts are an hour: an answer within the client's 15 s hang
    # guard can only come from the refused connect itself.
    my @status;
    for my $i (1 .. 5) {
        push @status, post_batch(5, batch_json("closed$i"), timeout => 15)->{status} // 'none';
    }
    is("@status", '503 503 503 503 503', "$t: every request is answered 503, without waiting for a timeout");
    my $log = error_log_text();
    is(count_matches($log, qr/recording: redis 127\.0\.0\.1:$port: connect failed/), 1,
       "$t: 'connect failed' is logged once for five requests")
        or diag(join "\n", grep { /connect failed/ } split /\n/, $log);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 5b. recording_redis_connect_timeout: a listener whose accept queue is full
#     drops our SYNs, so the connect never completes.
# ---------------------------------------------------------------------------
SKIP: {
    my $t = 'connect timeout';
    my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                         Proto => 'tcp', Listen => 1) or die "bind: $@";
    my $port = $listener->sockport;
    my @fill;
    my $pending = 0;
    for (1 .. 8) {   # connect until one stays pending: the queue is full
        my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        $s->blocking(0);
        connect($s, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1')));
        push @fill, $s;
        next if IO::Select->new($s)->can_write(0.3);
        $pending = 1;
        last;
    }
    skip "$t: this kernel does not drop SYNs on a full accept queue", 7 unless $pending;

    start_nginx(no_default_redis => 1, config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_connect_timeout 300ms;
            recording_redis_read_timeout 1h;
R
    # The read timeout is an hour: within the client's 15 s hang guard only
    # the connect timeout can answer (the log line below names it).
    my @status;
    for my $i (1 .. 2) {
        push @status, post_batch(5, batch_json("ctimeout$i"), timeout => 15)->{status} // 'none';
    }
    is("@status", '503 503', "$t: 503 when the connect does not complete");
    my $log = error_log_text();
    is(count_matches($log, qr/recording: redis 127\.0\.0\.1:$port: connect timed out/), 1,
       "$t: 'connect timed out' logged once for two requests")
        or diag(join "\n", grep { /recording:/ } split /\n/, $log);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    close $_ for @fill, $listener;
}

# ---------------------------------------------------------------------------
# 6. A unix socket address.
# ---------------------------------------------------------------------------
{
    my $t = 'unix socket';
    my $dir = servroot() . '/redis-unix';
    mkdir $dir;
    my $path = "$dir/redis.sock";
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/redis.stdout";
        open STDERR, '>&', \*STDOUT;
        { exec 'redis-server', '--port', '0', '--unixsocket', $path, '--unixsocketperm', '777',
               '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', $dir; }
        POSIX::_exit(127);
    }
    track_child($pid);

    # Minimal RESP over the unix socket.
    my $ucmd = sub {
        my @args = @_;
        my $s = IO::Socket::UNIX->new(Peer => $path) or return undef;
        $s->blocking(0);
        my $req = '*' . @args . "\r\n" . join '', map { '$' . length($_) . "\r\n$_\r\n" } @args;
        my $buf = '';
        local $SIG{PIPE} = 'IGNORE';
        syswrite($s, $req);
        my $reply = eval { Test::Nginx::Recording::_resp_parse($s, \$buf, time + 3) };
        close $s;
        return $reply;
    };
    ok(poll_until(5, sub { (($ucmd->('PING') // '') eq 'PONG') }), "$t: redis on $path is up");
    $ucmd->('HSET', 'recording:site:6', 'enabled', '1');

    start_nginx(no_default_redis => 1,
                config => ingest_location("recording_redis unix:$path;"));
    my $res = post_batch(6, batch_json('unix1'));
    is($res->{status}, 202, "$t: 202 through the unix socket");
    my $el = $ucmd->('LRANGE', $QUEUE, 0, -1) || [];
    is(scalar @$el, 1, "$t: the element is in the unix-socket Redis");
    like($el->[0] // '', qr/"session_id":"unix1"/, "$t: it is the batch");
    my $ingest = eval { $JSON->decode($el->[0])->{_ingest} } || {};
    is($ingest->{site_id}, 6, "$t: with its _ingest");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

# ---------------------------------------------------------------------------
# 7. Clients hanging up while their batch is in flight.
# ---------------------------------------------------------------------------
{
    my $t = 'hang-up, silent redis';
    my ($port, $pid) = start_silent_server();
    start_nginx(no_default_redis => 1, config => ingest_location(<<"R"));
            recording_redis 127.0.0.1:$port;
            recording_redis_read_timeout 1s;
R
    my $first = post_batch(7, batch_json('hup0'), timeout => 5);
    is($first->{status}, 503, "$t: baseline 503 from the silent Redis");
    my $worker = $first->{headers}{'x-pid'};
    ok($worker, "$t: worker pid known ($worker)");

    post_and_hang_up(7, batch_json('hup1'));
    post_and_hang_up(7, batch_json('hup2'));
    sleep 1.5;   # past the read timeout: the in-flight calls are answered
    my $res = post_batch(7, batch_json('hup3'), timeout => 5);
    is($res->{status}, 503, "$t: the worker still answers after the timeout");
    is($res->{headers}{'x-pid'}, $worker, "$t: same worker pid (it did not crash)");
    ok(kill(0 => $worker), "$t: worker process alive");
    my $log = error_log_text();
    unlike($log, qr/\[alert\]|exited on signal/, "$t: no [alert] or crash in the log");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}
{
    my $t = 'hang-up, real redis';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(7);
    start_nginx(config => ingest_location());
    my $first = post_batch(7, batch_json('live0'));
    is($first->{status}, 202, "$t: baseline 202");
    my $worker = $first->{headers}{'x-pid'};
    post_and_hang_up(7, batch_json("live-$_")) for 1 .. 50;
    my $landed = 0;
    poll_until(2, sub { ($landed = redis_cmd('LLEN', $QUEUE)) >= 51 });
    is($landed, 51, "$t: all 50 batches of the hung-up clients landed (plus the baseline)");
    my %seen = map { /"session_id":"(live-\d+)"/ ? ($1 => 1) : () } queue_elements();
    is(scalar keys %seen, 50, "$t: 50 distinct sessions");
    my $res = post_batch(7, batch_json('live-after'));
    is($res->{status}, 202, "$t: worker healthy afterwards");
    is($res->{headers}{'x-pid'}, $worker, "$t: same worker pid");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 8. An error reply: RPUSH onto a string.
# ---------------------------------------------------------------------------
{
    my $t = 'error reply';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(8);
    redis_cmd('SET', $QUEUE, 'x');
    start_nginx(config => ingest_location());
    my $res = post_batch(8, batch_json('wrongtype'));
    is($res->{status}, 503, "$t: 503 when Redis refuses the RPUSH");
    is($res->{body}, '{"error":"queue_unavailable"}', "$t: queue_unavailable body");
    is(redis_cmd('GET', $QUEUE), 'x', "$t: the key is untouched");
    is(post_batch(8, batch_json('wrongtype-2'))->{status}, 503, "$t: and again");
    is(count_matches(error_log_text(), qr/\[error\].*recording: redis \S+: error reply: WRONGTYPE/), 1,
       "$t: the error reply is logged once, at error, for two batches");

    # The connection survives an error reply.
    redis_cmd('DEL', $QUEUE);
    $res = post_batch(8, batch_json('after-wrongtype'));
    is($res->{status}, 202, "$t: next batch queued on the same connection");
    is(redis_cmd('LLEN', $QUEUE), 1, "$t: and it landed");
    like(error_log_text(), qr/\[notice\].*recording: redis \S+: answering again/, "$t: the recovery is logged");
    unlike(error_log_text(), qr/connection lost/, "$t: the connection was not dropped");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 9. A ~1.5 MB batch: writes and replies above hiredis's 16 KiB chunks.
# ---------------------------------------------------------------------------
{
    my $t = 'large element';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(9);
    start_nginx(config => ingest_location("            recording_redis_read_timeout 1h;\n"),
                http_config => 'client_max_body_size 4m;');
    my @events;
    my $i = 0;
    my $len = 0;
    while ($len < 1_500_000) {
        my $e = qq({"type":3,"timestamp":) . (1700000000000 + $i)
              . qq(,"data":{"source":0,"texts":[],"adds":[{"id":$i,"node":"}) . ('x' x 1000) . qq("}]}});
        push @events, $e;
        $len += length($e) + 1;
        $i++;
    }
    my $body = qq({"session_id":"big","seq":7,"events":[) . join(',', @events)
             . qq(],"page_id":"p/1","n":1.23456789012345678});
    cmp_ok(length $body, '>', 1_400_000, "$t: body is " . length($body) . ' bytes');
    # A write that stalled would wait for the read timeout (an hour here):
    # the client's 30 s is a hang guard.
    my $res = post_batch(9, $body, timeout => 30);
    is($res->{status}, 202, "$t: queued, without stalling");
    my @el = queue_elements();
    is(scalar @el, 1, "$t: one element");
    ok(defined $el[0] && strip_ingest($el[0]) eq $body,
       "$t: element is byte-identical to the body apart from _ingest")
        or diag('element length ' . length($el[0] // '') . ', body length ' . length $body);
    like($el[0] // '', qr/,"_ingest":\{"site_id":9,/, "$t: _ingest added");

    # A second, small batch on the same connection after the big one.
    $res = post_batch(9, batch_json('small-after-big'));
    is($res->{status}, 202, "$t: next batch after the big one queued");
    is(redis_cmd('LLEN', $QUEUE), 2, "$t: and landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 9b. A reply bigger than hiredis's 16 KiB read: the HMGET answer carries a
#     sample_rate padded with 200 KB of white space (still the number 1).
# ---------------------------------------------------------------------------
{
    my $t = 'large reply';
    redis_start();
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', 'recording:site:19', 'enabled', '1', 'sample_rate', '1' . (' ' x 200_000));
    start_nginx(config => ingest_location(<<"R"));
            recording_redis_read_timeout 1h;
R
    # Waiting for more data would wait for an hour: the client's 15 s is a
    # hang guard, so a 202 means the whole reply was read as it came.
    my $res = post_batch(19, batch_json('big-reply'), timeout => 15);
    is($res->{status}, 202, "$t: queued, the reply read without waiting for more data");
    my @el = queue_elements();
    is(scalar @el, 1, "$t: the element landed");
    like($el[0] // '', qr/"session_id":"big-reply"/, "$t: it is the batch");
    unlike(error_log_text(), qr/no reply in time/, "$t: no reply timeout");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 10. 200 concurrent requests: batched and pipelined on one connection.
# ---------------------------------------------------------------------------
{
    my $t = 'pipelining';
    redis_start();
    redis_cmd('FLUSHALL');
    enable_site(10);
    start_nginx(config => ingest_location());
    redis_cmd('CONFIG', 'RESETSTAT');
    my $connections = sub { (redis_cmd('INFO', 'stats') =~ /total_connections_received:(\d+)/)[0] };
    my $before = $connections->();
    my $n = 200;
    my @raw = concurrent_requests(15, map { raw_post(10, batch_json("pipe-$_")) } 1 .. $n);
    # Each harness command has its own connection (the INFO just below too).
    is($connections->() - $before - 1, 1, "$t: the worker used one Redis connection for all");
    my %codes;
    $codes{ status_of($_) // 'none' }++ for @raw;
    is_deeply(\%codes, { 202 => $n }, "$t: all $n answered 202");
    my %seen = map { /"session_id":"(pipe-\d+)"/ ? ($1 => 1) : () } queue_elements();
    is(scalar keys %seen, $n, "$t: $n distinct elements landed");
    is(redis_cmd('LLEN', $QUEUE), $n, "$t: and nothing else");
    my $stats = redis_cmd('INFO', 'commandstats');
    my ($hmget) = $stats =~ /cmdstat_hmget:calls=(\d+)/;
    my ($rpush) = $stats =~ /cmdstat_rpush:calls=(\d+)/;
    # Batches taken close together share an RPUSH (recording_batch_*).
    cmp_ok($rpush, '<', $n, "$t: fewer RPUSH calls than batches ($rpush for $n)");
    cmp_ok($rpush, '>=', 1, "$t: ... and some");
    is($hmget, 1, "$t: one site lookup for the burst");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

Test::More::done_testing();
