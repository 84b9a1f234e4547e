# The disk spool (recording_spool): while Redis is unreachable, accepted
# batches are written to the spool and answered 202; once Redis is back they
# are replayed into the same keys, oldest first, and the files removed. A
# spool left by a stop or a crash is replayed after the next start; a full
# spool means 503; several workers never corrupt or double-replay it.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::Recording::Load;
use Time::HiRes qw(time sleep);
use File::Path qw(make_path remove_tree);
use Compress::Zlib ();
use JSON::PP ();
use IO::Select ();
use IO::Socket::INET ();

my $SPOOL = servroot() . '/spool';

my $FILE = "$SPOOL/recording.spool";

sub spool_files {
    opendir my $d, $SPOOL or return ();
    return sort grep { !/^\.\.?$/ && $_ ne 'replay.lock' } readdir $d;
}

# The file exists while records wait in it: it is removed once replayed.
sub spool_has_records { return -e $FILE }

sub fresh_spool {
    remove_tree($SPOOL);
    make_path($SPOOL);
}

sub enable_site { redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1) }

sub start_with_spool {
    my (%o) = @_;
    start_nginx(error_log_level => 'info',
                main_config => 'worker_processes ' . ($o{workers} // 1) . ';',
                http_config => "recording_spool $SPOOL" . ($o{max_size} ? " max_size=$o{max_size}" : '') . ";\n"
                             . ($o{fsync} ? "recording_spool_fsync on;\n" : '')
                             . ($o{http} // ''),
                config => "location = /status { recording_status; }\n"
                        . ingest_location('recording_redis_connect_timeout 300ms; recording_redis_read_timeout 1s;'));
}

sub status_json { JSON::PP::decode_json(http_request(uri => '/status')->{body}) }

# Waits until the spool holds no record and Redis has $n elements.
sub replayed {
    my ($n) = @_;
    return poll_until(20, sub {
        my $total = 0;
        $total += redis_cmd('LLEN', $_) for @{ redis_cmd('KEYS', 'recording:queue:*') };
        !spool_has_records() && $total >= $n;
    });
}

sub post_batch {
    my ($session, $seq, $body) = @_;
    return http_request(method => 'POST', uri => '/v1/sites/1/recordings',
                        body => $body // load_batch($session, $seq), timeout => 5);
}

# Redis keeps what it acknowledged across the stops below.
redis_start('--appendonly', 'yes', '--appendfsync', 'always');

# ---------------------------------------------------------------------------
# 1. Without a spool: Redis stopped longer than the timeout means 503.
# ---------------------------------------------------------------------------
{
    my $t = 'no spool';
    redis_cmd('FLUSHALL');
    enable_site();
    start_nginx(error_log_level => 'info', config => ingest_location());
    is(post_batch('nospool', 0)->{status}, 202, "$t: 202 while Redis is up (site cached)");
    redis_stop();
    my $load = start_load(clients => 4, batches => 5, prefix => 'nospool', retries => 0);
    my $result = wait_load($load);
    is_deeply($result->{statuses}, { 503 => 4 }, "$t: Redis down: 503 for each (recorders stop there)");
    ok(!grep({ $_->[3] ne '5' } @{ $result->{answers} }), "$t: ... each with Retry-After: 5");
    redis_start();
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 2. With a spool: Redis down, every batch answered 202; Redis back, every
#    batch lands, in order, and the spool is emptied.
# ---------------------------------------------------------------------------
{
    my $t = 'outage';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool();
    is(post_batch('outage-warm', 0)->{status}, 202, "$t: 202 while Redis is up");
    redis_cmd('DEL', 'recording:queue:0');
    redis_stop();
    my $load = start_load(clients => 6, batches => 20, prefix => 'outage', retries => 0);
    my $result = wait_load($load);
    is_deeply($result->{statuses}, { 202 => 120 }, "$t: Redis down: every batch 202");
    ok(spool_has_records(), "$t: the spool holds them");
    my $s = status_json();
    is($s->{spool}{spooled_elements} // $s->{redis}{spooled_elements}, 120, "$t: spooled_elements")
        if exists $s->{spool};
    like(error_log_text(), qr/recording: redis \S+: (?:connect failed|connection lost)/, "$t: the outage is logged");

    redis_start();
    ok(replayed(120), "$t: replayed once Redis is back");
    is(check_delivery($t, $result, queued_elements()), 0, "$t: no duplicates");
    is(join(' ', spool_files()), '', "$t: the spool file removed");
    like(error_log_text(), qr/recording: spool: "[^"]+" replayed/, "$t: the replay is logged");

    # Afterwards batches go straight to Redis again.
    is(post_batch('outage-after', 0)->{status}, 202, "$t: 202 after the replay");
    ok(!spool_has_records(), "$t: ... not through the spool");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. Order across the outage's edges: recorders keep sending while Redis goes
#    down and comes back; each session's batches land in order.
# ---------------------------------------------------------------------------
{
    my $t = 'through the outage';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool();
    post_batch('warm', 0);
    my $load = start_load(clients => 6, batches => 60, prefix => 'edge', pause => 0.02, retries => 0);
    sleep 0.4;
    redis_stop();
    sleep 0.8;
    redis_start();
    my $result = wait_load($load);
    is_deeply($result->{statuses}, { 202 => 360 }, "$t: every batch 202");
    ok(replayed(360), "$t: everything landed");
    my $dups = check_delivery($t, $result, queued_elements());
    diag("$t: $dups duplicates");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 4. A spool left by a stop is replayed after the next start.
# ---------------------------------------------------------------------------
{
    my $t = 'left by a stop';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool();
    post_batch('warm', 0);
    redis_cmd('DEL', 'recording:queue:0');
    redis_stop();
    my @status = map { post_batch('stop', $_)->{status} } 0 .. 9;
    is("@status", join(' ', ('202') x 10), "$t: ten batches spooled");
    ok(stop_nginx(), "$t: nginx stops while Redis is down");
    ok(spool_has_records(), "$t: the spool stays");
    redis_start();
    enable_site();
    start_with_spool();
    ok(replayed(10), "$t: replayed after the next start");
    my @seqs = map { /"seq":(\d+)/ } @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    is("@seqs", '0 1 2 3 4 5 6 7 8 9', "$t: in order, once each");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 5. Two workers spool at once; one is killed (-9) mid-way; every batch
#    answered 202 is replayed exactly once.
# ---------------------------------------------------------------------------
{
    my $t = 'workers and a crash';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool(workers => 2);
    post_batch('warm', 0) for 1 .. 4;
    redis_cmd('DEL', 'recording:queue:0');
    redis_stop();
    my $load = start_load(clients => 8, batches => 25, prefix => 'crash', pause => 0.01, retries => 5);
    sleep 0.5;
    my ($master) = `cat @{[servroot()]}/logs/nginx.pid` =~ /(\d+)/;
    my @workers = grep { /^\d+$/ } map { (split)[0] } `ps -o pid= --ppid $master`;
    kill KILL => $workers[0];
    my $result = wait_load($load);
    is(join(' ', spool_files()), 'recording.spool', "$t: one spool file, shared");
    redis_start();
    enable_site();
    my $accepted = scalar keys %{ $result->{accepted} };
    cmp_ok($accepted, '>=', 190, "$t: batches accepted ($accepted of 200)");
    ok(replayed($accepted), "$t: replayed, the crashed worker's file too");
    my $dups = check_delivery($t, $result, queued_elements());
    # A request the killed worker spooled but could not answer is sent
    # again: each such one may arrive twice, nothing else may.
    my $unanswered = grep { $_->[2] eq 'none' } @{ $result->{answers} };
    cmp_ok($dups, '<=', $unanswered, "$t: nothing replayed twice ($dups duplicates, $unanswered unanswered and sent again)");
    like(error_log_text(), qr/worker process \d+ exited on signal 9/, "$t: the worker was killed");
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 6. A full spool means 503.
# ---------------------------------------------------------------------------
{
    my $t = 'full';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool(max_size => '1m');
    post_batch('warm', 0);
    redis_cmd('DEL', 'recording:queue:0');
    redis_stop();
    my $pad = 'z' x 150_000;
    my @status = map {
        post_batch("full-$_", 0, qq({"session_id":"full-$_","seq":0,"events":[{"type":5,"timestamp":1,"data":{"t":"$pad"}}]}))->{status}
    } 1 .. 10;
    my $accepted = grep { $_ == 202 } @status;
    is("@status", join(' ', ('202') x $accepted, ('503') x (10 - $accepted)), "$t: 202 until full, then 503");
    cmp_ok($accepted, '>=', 5, "$t: about 1m taken ($accepted batches of 150k)");
    cmp_ok($accepted, '<=', 7, "$t: ... and no more");
    like(error_log_text(), qr/recording: spool: full \(max_size=1048576\)/, "$t: logged");
    redis_start();
    enable_site();
    ok(replayed($accepted), "$t: the spooled ones replayed");
    is(redis_cmd('LLEN', 'recording:queue:0'), $accepted, "$t: exactly those");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 7. Files as a crash leaves them: a record cut short, a file cut in its
#    header, a file of another program, records for an unknown Redis.
# ---------------------------------------------------------------------------
sub little { my ($v, $n) = @_; return join '', map { chr(($v >> (8 * $_)) & 0xFF) } 0 .. $n - 1 }

sub record {
    my ($server, $key, @elements) = @_;
    my $command = '*' . (2 + @elements) . "\r\n\$5\r\nRPUSH\r\n\$" . length($key) . "\r\n$key\r\n"
                . join('', map { '$' . length($_) . "\r\n$_\r\n" } @elements);
    my $payload = little(scalar @elements, 4) . little(length $server, 2) . $server . little(length $key, 2) . $key . $command;
    return little(length $payload, 4) . little(Compress::Zlib::crc32($payload), 4) . $payload;
}

sub file_header { return 'RECSPOOL' . little(1, 4) . little(0, 4) . little(24, 8) }

sub spool_with {
    my (@content) = @_;
    fresh_spool();
    open my $f, '>:raw', $FILE or die "$FILE: $!";
    print $f @content;
    close $f;
}

{
    my $t = 'crash leftovers';
    redis_cmd('FLUSHALL');
    enable_site();
    my $server = '127.0.0.1:' . redis_port();

    # A record cut short at the end: the whole ones replayed, it dropped.
    my $one = record($server, 'recording:queue:0', '{"session_id":"torn","seq":0}', '{"session_id":"torn","seq":1}');
    my $two = record($server, 'recording:queue:0', '{"session_id":"torn","seq":2}');
    spool_with(file_header(), $one, substr($two, 0, length($two) - 3));
    start_with_spool();
    ok(poll_until(10, sub { !spool_has_records() }), "$t: a torn tail: the file is done");
    my @elements = @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    is("@elements", '{"session_id":"torn","seq":0} {"session_id":"torn","seq":1}',
       "$t: ... the whole record replayed, the one cut short not");
    like(error_log_text(), qr/\[warn\].*ends with a record cut short at offset \d+/, "$t: ... logged");
    ok(stop_nginx(), "$t: nginx stops");

    # Replayed up to the offset in the header, not from the start.
    redis_cmd('DEL', 'recording:queue:0');
    my $header = file_header();
    substr($header, 16, 8) = little(24 + length $one, 8);
    spool_with($header, $one, $two);
    start_with_spool();
    ok(poll_until(10, sub { !spool_has_records() }), "$t: resumed replay: done");
    @elements = @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    is("@elements", '{"session_id":"torn","seq":2}', "$t: ... from the offset the header keeps");
    ok(stop_nginx(), "$t: nginx stops");

    # Cut in its header before any record: the next write starts it over.
    redis_cmd('DEL', 'recording:queue:0');
    spool_with(substr(file_header(), 0, 10));
    start_with_spool();
    is(post_batch('after-short', 0)->{status}, 202, "$t: a file cut in its header: batches still 202");
    ok(poll_until(10, sub { !spool_has_records() }), "$t: ... and replayed");
    @elements = @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    like("@elements", qr/"session_id":"after-short"/, "$t: ... the batch landed");
    ok(stop_nginx(), "$t: nginx stops");

    # Another program's file, and records for a Redis no longer configured:
    # set aside, with an alert, never deleted.
    for my $case (['foreign', 'x' x 100, qr/is not a spool file/],
                  ['unknown-redis', file_header() . record('10.0.0.1:6379', 'recording:queue:0', '{"session_id":"elsewhere","seq":0}'),
                   qr/records for "10\.0\.0\.1:6379", which no "recording_redis" names/]) {
        my ($name, $content, $alert) = @$case;
        spool_with($content);
        start_with_spool();
        ok(poll_until(10, sub { grep { /^recording\.spool\.\d+\.bad$/ } spool_files() }), "$t: $name: set aside");
        like(error_log_text(), qr/\[alert\].*$alert/, "$t: $name: alert");
        ok(!spool_has_records(), "$t: $name: out of the way");
        is(post_batch("after-$name", 0)->{status}, 202, "$t: $name: batches still 202");
        ok(stop_nginx(), "$t: $name: nginx stops");
    }
}

# ---------------------------------------------------------------------------
# 8. recording_spool_fsync on: the same path, synced.
# ---------------------------------------------------------------------------
{
    my $t = 'fsync';
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_with_spool(fsync => 1);
    post_batch('warm', 0);
    redis_cmd('DEL', 'recording:queue:0');
    redis_stop();
    my @status = map { post_batch('fsync', $_)->{status} } 0 .. 4;
    is("@status", '202 202 202 202 202', "$t: spooled");
    redis_start();
    enable_site();
    ok(replayed(5), "$t: replayed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 9. At least once: Redis runs an RPUSH but its reply is lost (the
#    connection drops first). The batch is spooled and replayed, so Redis
#    holds it twice, the same element with the same request_id, and
#    spool.resent_elements counts it. A proxy in front of Redis drops the
#    connection instead of passing on the first reply after $LOSE appears.
# ---------------------------------------------------------------------------
{
    my $t = 'lost reply';
    my $LOSE = servroot() . '/lose-next-reply';
    unlink $LOSE;
    my $redis_port = redis_port();
    my ($port) = start_server(sub {
        my ($listener, $alive) = @_;
        my $sel = IO::Select->new($listener);
        my (%peer, %from_redis);
        my $drop = sub {
            my ($fh) = @_;
            my $other = $peer{fileno $fh};
            for my $s (grep { defined } $fh, $other) {
                delete $peer{fileno $s};
                delete $from_redis{fileno $s};
                $sel->remove($s);
                close $s;
            }
        };
        while ($alive->()) {
            for my $fh ($sel->can_read(0.1)) {
                if ($fh == $listener) {
                    my $client = $listener->accept or next;
                    my $redis = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $redis_port,
                                                      Proto => 'tcp') or do { close $client; next };
                    $peer{fileno $client} = $redis;
                    $peer{fileno $redis} = $client;
                    $from_redis{fileno $redis} = 1;
                    $sel->add($client, $redis);
                    next;
                }
                my $n = sysread($fh, my $buf, 65536);
                if (!$n || ($from_redis{fileno $fh} && unlink $LOSE)) {
                    $drop->($fh);
                    next;
                }
                syswrite($peer{fileno $fh}, $buf);
            }
        }
    });
    fresh_spool();
    redis_cmd('FLUSHALL');
    enable_site();
    start_nginx(error_log_level => 'info', no_default_redis => 1,
                http_config => "recording_spool $SPOOL;\n",
                config => "location = /status { recording_status; }\n"
                        . ingest_location("recording_redis 127.0.0.1:$port; recording_redis_read_timeout 5s;"));
    is(post_batch('warm', 0)->{status}, 202, "$t: through the proxy: 202 (site cached)");
    redis_cmd('DEL', 'recording:queue:0');
    is(status_json()->{spool}{resent_elements}, 0, "$t: nothing resent yet");

    open my $fh, '>', $LOSE or die "$LOSE: $!";
    close $fh;
    is(post_batch('twice', 0)->{status}, 202, "$t: reply lost: 202 from the spool");
    ok(!-e $LOSE, "$t: ... the proxy did drop the reply");
    ok(replayed(2), "$t: replayed");
    my @elements = @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
    is(scalar @elements, 2, "$t: Redis holds the batch twice");
    is($elements[0], $elements[1], "$t: ... the same element");
    my @ids = map { /"request_id":"([^"]+)"/ ? $1 : '' } @elements;
    ok(length $ids[0] && $ids[0] eq $ids[1], "$t: ... with the same request_id, by which consumers drop it");
    my $s = status_json();
    is($s->{spool}{resent_elements}, 1, "$t: spool.resent_elements counts the element sent again");
    is($s->{spool}{spooled_elements}, 1, "$t: spool.spooled_elements 1");
    like(error_log_text(), qr/recording: redis 127\.0\.0\.1:$port: connection lost/, "$t: the loss is logged");

    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

Test::More::done_testing();
