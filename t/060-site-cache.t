# The shared-memory site cache: one lookup per site and TTL for the whole
# server (all workers), answers (unknown sites too) kept for the TTL, the last
# answer used when Redis refuses the lookup, and site ids as exact strings.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use IO::Socket::INET ();

my $JSON = JSON::PP->new;
my $QUEUE = 'recording:queue:0';   # shards default to 1

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

my $SEQ = 0;
sub batch_json {
    my ($session) = @_;
    return qq({"session_id":"$session","seq":) . $SEQ++
         . qq(,"events":[{"type":4,"timestamp":1700000000000,"data":{"href":"https://a/b"}}]});
}

sub post_batch {
    my ($site, $session, %o) = @_;
    return http_request(method => 'POST', uri => "/v1/sites/$site/recordings",
                        body => batch_json($session), timeout => $o{timeout} // 5,
                        headers => ['Content-Type' => 'application/json']);
}

sub hmget_calls {
    my ($calls) = redis_cmd('INFO', 'commandstats') =~ /cmdstat_hmget:calls=(\d+)/;
    return $calls // 0;
}

sub fresh_redis {
    redis_start();
    redis_cmd('FLUSHALL');
    redis_cmd('CONFIG', 'RESETSTAT');
}

sub raw_post {
    my ($site, $session) = @_;
    my $body = batch_json($session);
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

# The TTL tests use a TTL of 3 s: the requests that must fall inside it take
# milliseconds, and the lookup count (hmget_calls) is what shows that an
# answer came from the cache. Sleeping longer than asked is always fine.
# Waits until $seconds have passed since $since (a time() value).
sub sleep_past {
    my ($since, $seconds) = @_;
    my $left = $since + $seconds - time;
    sleep $left if $left > 0;
}

# ---------------------------------------------------------------------------
# 1. Two workers share the cache: one HMGET for the whole server.
# ---------------------------------------------------------------------------
{
    my $t = 'two workers';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
    start_nginx(main_config => 'worker_processes 2;',
                config => ingest_location('recording_site_cache_ttl 60s;'));

    my (%codes, %pids);
    my $sent = 0;
    # Each request on its own connection; keep going (bounded) until both
    # workers have served some.
    while ($sent < 40 || (keys %pids < 2 && $sent < 400)) {
        my $res = post_batch(1, "two-workers-$sent");
        $sent++;
        $codes{ $res->{status} // 'none' }++;
        $pids{ $res->{headers}{'x-pid'} }++ if $res->{headers}{'x-pid'};
    }
    is_deeply(\%codes, { 202 => $sent }, "$t: all $sent requests answered 202");
    is(scalar keys %pids, 2, "$t: both workers served ("
       . join(', ', map { "pid $_: $pids{$_}" } sort keys %pids) . ')');
    is(hmget_calls(), 1, "$t: INFO commandstats shows cmdstat_hmget:calls=1");
    is(redis_cmd('LLEN', $QUEUE), $sent, "$t: $sent elements landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 2. An answer is used for up to the TTL, then fetched again.
# ---------------------------------------------------------------------------
{
    my $t = 'ttl';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:2', 'enabled', '1');
    start_nginx(config => ingest_location('recording_site_cache_ttl 3s;'));

    my $t0 = time;
    is(post_batch(2, 'ttl-a')->{status}, 202, "$t: enabled site: 202");
    redis_cmd('HSET', 'recording:site:2', 'enabled', '0');
    my $res = post_batch(2, 'ttl-b');
    is($res->{status}, 202, "$t: disabled in Redis, but the cached answer still says enabled");
    is(hmget_calls(), 1, "$t: one lookup so far");

    sleep_past($t0, 3.2);
    $res = post_batch(2, 'ttl-c');
    is($res->{status}, 403, "$t: after the TTL the new answer is used: 403");
    is($res->{body}, '{"error":"site_disabled"}', "$t: site_disabled body");
    is(hmget_calls(), 2, "$t: a second lookup after the TTL");

    my @el = @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
    is_deeply([map { /"session_id":"([^"]+)"/ ? $1 : '?' } @el], ['ttl-a', 'ttl-b'],
              "$t: the two batches accepted within the TTL landed, not the third");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. "Unknown site" is cached too.
# ---------------------------------------------------------------------------
{
    my $t = 'unknown site cached';
    fresh_redis();
    start_nginx(config => ingest_location('recording_site_cache_ttl 3s;'));

    my $t0 = time;
    my $res = post_batch(3, 'unknown-a');
    is($res->{status}, 404, "$t: unknown site: 404");
    is($res->{body}, '{"error":"unknown_site"}', "$t: unknown_site body");
    redis_cmd('HSET', 'recording:site:3', 'enabled', '1');
    $res = post_batch(3, 'unknown-b');
    is($res->{status}, 404, "$t: enabled in Redis meanwhile, still 404 within the TTL");
    is(hmget_calls(), 1, "$t: one lookup for both");
    is(redis_cmd('LLEN', $QUEUE), 0, "$t: nothing queued yet");

    sleep_past($t0, 3.2);
    $res = post_batch(3, 'unknown-c');
    is($res->{status}, 202, "$t: 202 after the TTL");
    my @el = @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
    is(scalar @el, 1, "$t: one element");
    like($el[0] // '', qr/"session_id":"unknown-c"/, "$t: the batch sent after the TTL");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 4. The lookup fails (WRONGTYPE): the last answer is used.
# ---------------------------------------------------------------------------
{
    my $t = 'stale answer';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:4', 'enabled', '1');
    start_nginx(config => ingest_location('recording_site_cache_ttl 3s;'));

    my $t0 = time;
    is(post_batch(4, 'stale-a')->{status}, 202, "$t: cached as enabled");
    redis_cmd('DEL', 'recording:site:4');
    redis_cmd('SET', 'recording:site:4', 'x');
    sleep_past($t0, 3.2);

    my $res = post_batch(4, 'stale-b');
    is($res->{status}, 202, "$t: lookup refused after the TTL, the last answer is used: 202");
    is(hmget_calls(), 2, "$t: the expired entry was looked up again");
    like(error_log_text(), qr/\[error\].*recording: redis \S+: error reply: WRONGTYPE/,
         "$t: the error reply is logged");
    $res = post_batch(4, 'stale-c');
    is($res->{status}, 202, "$t: and the next request too");

    my @el = @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
    is_deeply([map { /"session_id":"([^"]+)"/ ? $1 : '?' } @el], ['stale-a', 'stale-b', 'stale-c'],
              "$t: all three batches landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 5. A sample_rate change is picked up after the TTL.
# ---------------------------------------------------------------------------
{
    my $t = 'sample_rate change';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:5', 'enabled', '1', 'sample_rate', '1');
    start_nginx(config => ingest_location('recording_site_cache_ttl 3s;'));

    my $t0 = time;
    is(post_batch(5, 'rate-a')->{status}, 202, "$t: rate 1: 202");
    redis_cmd('HSET', 'recording:site:5', 'sample_rate', '0');
    is(post_batch(5, 'rate-b')->{status}, 202, "$t: rate 0 in Redis, cached rate 1 within the TTL: 202");

    sleep_past($t0, 3.2);
    my $res = post_batch(5, 'rate-c');
    is($res->{status}, 200, "$t: after the TTL: 200");
    is($res->{body}, '{"status":"sampled_out"}', "$t: sampled_out body");
    my @el = @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
    is_deeply([map { /"session_id":"([^"]+)"/ ? $1 : '?' } @el], ['rate-a', 'rate-b'],
              "$t: the sampled-out batch did not land");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 6. Site ids are strings: 007 and 7 are different hashes and cache entries.
# ---------------------------------------------------------------------------
{
    my $t = 'leading zeros';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:007', 'enabled', '1');
    redis_cmd('HSET', 'recording:site:7', 'enabled', '0');
    start_nginx(config => ingest_location());

    my $res = post_batch('007', 'zeros-a');
    is($res->{status}, 202, "$t: /v1/sites/007 uses recording:site:007 (enabled): 202");
    $res = post_batch('7', 'zeros-b');
    is($res->{status}, 403, "$t: /v1/sites/7 uses recording:site:7 (disabled): 403, not 007's cached answer");
    $res = post_batch('0007', 'zeros-c');
    is($res->{status}, 404, "$t: /v1/sites/0007 has no hash: 404");
    is(hmget_calls(), 3, "$t: three lookups, one per spelling");

    my @el = @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
    is(scalar @el, 1, "$t: one element");
    my $doc = eval { $JSON->decode($el[0] // '') } || {};
    is($doc->{session_id}, 'zeros-a', "$t: the 007 batch");
    my $site_id = $doc->{_ingest}{site_id};
    ok(defined $site_id && !ref $site_id && $site_id == 7, "$t: _ingest.site_id is 7");
    like($el[0] // '', qr/"_ingest":\{"site_id":7,/, "$t: as the JSON integer 7 (not \"007\", not 007)");

    # Both spellings stay cached separately.
    redis_cmd('HSET', 'recording:site:007', 'enabled', '0');
    redis_cmd('HSET', 'recording:site:7', 'enabled', '1');
    is(post_batch('007', 'zeros-d')->{status}, 202, "$t: 007 still cached as enabled");
    is(post_batch('7', 'zeros-e')->{status}, 403, "$t: 7 still cached as disabled");
    is(hmget_calls(), 3, "$t: no further lookups");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 7. A full zone evicts the least recently used answers and keeps working.
# ---------------------------------------------------------------------------
{
    my $t = 'eviction';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1');
    start_nginx(http_config => 'recording_site_cache_size 32k;',
                config => ingest_location('recording_site_cache_ttl 60s;'));

    is(post_batch(1, 'evict-a')->{status}, 202, "$t: site 1 cached as enabled");
    my $n = 400;   # far more answers than 32 KiB hold
    my %codes;
    $codes{ post_batch(1000 + $_, "evict-$_")->{status} // 'none' }++ for 1 .. $n;
    is_deeply(\%codes, { 404 => $n }, "$t: $n unknown sites answered 404");
    is(hmget_calls(), 1 + $n, "$t: one lookup each");

    is(post_batch(1000 + $n, 'evict-recent')->{status}, 404, "$t: the latest site is still cached");
    is(hmget_calls(), 1 + $n, "$t: (no new lookup for it)");

    redis_cmd('HSET', 'recording:site:1', 'enabled', '0');
    my $res = post_batch(1, 'evict-b');
    is($res->{status}, 403, "$t: site 1 was evicted: looked up again, now disabled");
    is(hmget_calls(), 2 + $n, "$t: (one new lookup)");
    is(redis_cmd('LLEN', $QUEUE), 1, "$t: only the first batch landed");
    unlike(error_log_text(), qr/ngx_slab_alloc\(\) failed/, "$t: no allocation failure logged");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 8. An expired answer is refreshed once for the server: while one worker
#    fetches (its lease), the other keeps using the old answer.
# ---------------------------------------------------------------------------
{
    my $t = 'refresh lease';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:8', 'enabled', '1');
    start_nginx(main_config => 'worker_processes 2;',
                config => ingest_location('recording_site_cache_ttl 3s;'));

    is(post_batch(8, 'lease-0')->{status}, 202, "$t: cached");
    my ($rounds, $both, $total, %codes) = (0, 0, 1);
    my @calls;
    while ($rounds < 3 && !$both) {   # until a burst reached both workers
        $rounds++;
        sleep 3.2;                    # the answer expires
        my $before = hmget_calls();
        my @raw = concurrent_requests(10, map { raw_post(8, "lease-$rounds-$_") } 1 .. 60);
        $total += @raw;
        my %pids;
        for (@raw) {
            my $r = $_ // '';
            $codes{ $r =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 'none' }++;
            $pids{$1} = 1 if $r =~ /^X-Pid: (\d+)/mi;
        }
        push @calls, hmget_calls() - $before;
        $both = keys %pids == 2;
    }
    is_deeply(\%codes, { 202 => $total - 1 }, "$t: every request of the bursts answered 202");
    ok($both, "$t: a burst reached both workers (after $rounds round(s))");
    is("@calls", join(' ', (1) x @calls), "$t: one HMGET per expiry for the whole server (per round: @calls)");
    is(redis_cmd('LLEN', $QUEUE), $total, "$t: all $total batches landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# A session's batches keep their order across a refresh: a batch that comes
# while the worker looks the expired site up waits behind that lookup
# instead of overtaking the batch that started it with the old answer.
# ---------------------------------------------------------------------------
{
    my $t = 'order across a refresh';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:9', 'enabled', 1);
    start_nginx(main_config => 'worker_processes 1;',
                config => ingest_location('recording_site_cache_ttl 300ms;'));
    is(post_batch(9, 'warm')->{status}, 202, "$t: cached");
    redis_cmd('DEL', $QUEUE);
    my @orders;
    for my $round (1 .. 3) {
        sleep 0.4;   # the answer expires
        # Redis holds every command for a moment: batch 1 takes the refresh
        # and waits on its HMGET before batch 2 is sent.
        redis_cmd('CLIENT', 'PAUSE', 400);
        my @socks;
        for my $seq (1, 2) {
            my $body = qq({"session_id":"ordered","seq":$seq,"events":[{"type":3,"timestamp":1}]});
            my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(), Timeout => 5)
                or die "connect: $!";
            print $sock "POST /v1/sites/9/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
            push @socks, $sock;
            sleep 0.1;
        }
        for my $sock (@socks) {
            local $/;
            my $answer = <$sock> // '';
            like($answer, qr{^HTTP/1\.1 202}, "$t: round $round: 202");
        }
        my @seqs = map { /"seq":(\d+)/ ? $1 : '?' } @{ redis_cmd('LRANGE', $QUEUE, 0, -1) };
        push @orders, "@seqs";
        redis_cmd('DEL', $QUEUE);
    }
    is_deeply(\@orders, [("1 2") x 3], "$t: seq 1 then seq 2 in every round (@{[ join ' | ', @orders ]})");
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# Locations reading sites from different Redis servers do not share answers.
# ---------------------------------------------------------------------------
{
    my $t = 'one cache entry per server';
    fresh_redis();
    my $dir = servroot() . '/redis-b';
    mkdir $dir;
    my $port_b = do {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0) or die $!;
        my $p = $s->sockport; close $s; $p;
    };
    system('redis-server', '--port', $port_b, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
           '--daemonize', 'yes', '--dir', $dir, '--logfile', "$dir/redis.log") == 0 or die "redis-server b";
    my $b = sub { system('redis-cli', '-p', $port_b, @_) == 0 or die "redis-cli b" };
    poll_until(5, sub { system("redis-cli -p $port_b ping >/dev/null 2>&1") == 0 });
    redis_cmd('HSET', 'recording:site:3', 'enabled', 1);
    $b->(qw(HSET recording:site:3 enabled 0));
    start_nginx(config => ingest_location() . <<"CONF");
        location ~ "^/b/(?<site_id>[0-9]+)\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis 127.0.0.1:$port_b;
        }
CONF
    is(post_batch(3, 'a')->{status}, 202, "$t: site 3 is enabled on the first Redis");
    my $res = http_request(method => 'POST', uri => '/b/3', body => batch_json('b'));
    is($res->{status}, 403, "$t: and disabled on the second, whatever the first answered");
    ok(stop_nginx(), "$t: nginx stops gracefully");
    system("redis-cli -p $port_b shutdown nosave >/dev/null 2>&1");
}

Test::More::done_testing();
