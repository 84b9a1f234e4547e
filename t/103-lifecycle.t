# Faults and lifecycle under load: Redis killed (-9) and restarted mid-load,
# nginx reloaded ten times under load, and stopped (quit) with batches in
# flight. The invariant: every batch that got 202 is in Redis afterwards,
# each session's batches in order; duplicates are reported. No timer of the
# module keeps a worker that is shutting down alive longer than its work.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::Recording::Load;
use Time::HiRes qw(time sleep);
use File::Path qw(make_path remove_tree);

my $SPOOL = servroot() . '/spool';

# Redis keeps what it acknowledged, even through kill -9.
redis_start('--appendonly', 'yes', '--appendfsync', 'always');

sub fresh {
    my (%o) = @_;
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1);
    remove_tree($SPOOL);
    make_path($SPOOL);
    start_nginx(error_log_level => 'info',
                main_config => 'worker_processes ' . ($o{workers} // 2) . ';',
                http_config => ($o{spool} ? "recording_spool $SPOOL;" : '') . ($o{http} // ''),
                config => ingest_location('recording_redis_connect_timeout 300ms; '
                                          . 'recording_redis_read_timeout ' . ($o{read_timeout} // '1s') . ';'
                                          . ($o{location} // '')));
    http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => load_batch('warm', 0)) for 1 .. 4;
    redis_cmd('DEL', 'recording:queue:0');
}

# Whether nginx's master (our child) exited within $timeout seconds.
sub exited {
    my ($master, $timeout) = @_;
    return defined Test::Nginx::Recording::_wait_exit($master, $timeout);
}

sub nginx_pid {
    open my $f, '<', servroot() . '/logs/nginx.pid' or return;
    my ($pid) = <$f> =~ /(\d+)/;
    return $pid;
}

sub workers {
    my $master = nginx_pid() or return;
    return grep { /^\d+$/ } map { (split)[0] } `ps -o pid= --ppid $master`;
}

# ---------------------------------------------------------------------------
# 1. Redis killed (-9) mid-load and restarted, no spool: answers during the
#    outage are 503 and recorders send again; nothing answered 202 is lost.
# ---------------------------------------------------------------------------
for my $spool (0, 1) {
    my $t = 'redis kill -9' . ($spool ? ', spool' : '');
    fresh(spool => $spool);
    my $load = start_load(clients => 8, batches => 60, prefix => "kill$spool", pause => 0.01,
                          retries => 200);
    sleep 0.4;
    redis_kill();
    sleep 0.7;
    redis_start();
    my $result = wait_load($load);
    is(scalar keys %{ $result->{accepted} }, 8 * 60, "$t: every batch accepted in the end");
    if ($spool) {
        ok(!exists $result->{statuses}{503}, "$t: no 503 with the spool");
        ok(poll_until(20, sub { !-e "$SPOOL/recording.spool" }), "$t: the spool replayed");
    } else {
        cmp_ok($result->{statuses}{503} // 0, '>', 0, "$t: 503 while Redis was down");
    }
    my $dups = check_delivery($t, $result, queued_elements());
    diag("$t: $dups duplicates");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 2. Ten reloads under load: old workers finish their batches.
# ---------------------------------------------------------------------------
{
    my $t = 'ten reloads';
    fresh(location => 'recording_batch_delay 5ms;');
    my $load = start_load(clients => 8, batches => 80, prefix => 'reload', pause => 0.01, retries => 0);
    my $reloads = 0;
    for (1 .. 10) {
        sleep 0.15;
        $reloads += reload_nginx() ? 1 : 0;
    }
    my $result = wait_load($load);
    is($reloads, 10, "$t: ten reloads");
    is_deeply($result->{statuses}, { 202 => 8 * 80 }, "$t: every batch answered 202");
    is(check_delivery($t, $result, queued_elements()), 0, "$t: no duplicates");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. Quit with batches waiting for Redis: they are answered and pushed
#    before the worker exits, and it exits as soon as they are.
# ---------------------------------------------------------------------------
{
    my $t = 'quit in flight';
    # The reply timer is set for an hour: a worker kept by it (or by the
    # connection) would outlive the 15 s hang guard below.
    fresh(workers => 1, location => 'recording_batch_delay 200ms;', read_timeout => '1h');
    redis_cmd('CLIENT', 'PAUSE', 700, 'WRITE');
    my $load = start_load(clients => 6, batches => 1, prefix => 'quit', retries => 0);
    sleep 0.3;
    my $master = nginx_pid();
    kill QUIT => $master;
    my $result = wait_load($load);
    ok(exited($master, 15), "$t: nginx exited once the batches were answered: the worker did not linger");
    is_deeply($result->{statuses}, { 202 => 6 }, "$t: every batch answered 202");
    is(check_delivery($t, $result, queued_elements()), 0, "$t: and in Redis");
    stop_nginx();
}

# ---------------------------------------------------------------------------
# 4. Quit with a spool configured and nothing to do: its timers do not keep
#    the worker.
# ---------------------------------------------------------------------------
{
    my $t = 'quit with a spool';
    fresh(workers => 1, spool => 1);
    my $master = nginx_pid();
    sleep 1.2;   # the spool's timer is armed
    kill QUIT => $master;
    # The spool's scan timer re-arms itself: had it kept the worker, the
    # worker would never exit, and the 15 s hang guard would end the wait.
    ok(exited($master, 15), "$t: nginx exited: the spool's timers did not keep the worker");
    stop_nginx();
}

# ---------------------------------------------------------------------------
# 5. Quit while Redis is down with a spool: the batches in flight go to the
#    spool, and the next start replays them.
# ---------------------------------------------------------------------------
{
    my $t = 'quit during an outage';
    fresh(workers => 1, spool => 1);
    redis_cmd('CLIENT', 'PAUSE', 3000, 'WRITE');
    my $load = start_load(clients => 4, batches => 1, prefix => 'qout', retries => 0, timeout => 8);
    sleep 0.3;
    my $master = nginx_pid();
    kill QUIT => $master;
    my $result = wait_load($load);
    ok(exited($master, 10), "$t: nginx exited");
    is_deeply($result->{statuses}, { 202 => 4 }, "$t: every batch answered 202 (by Redis or the spool)");
    redis_cmd('CLIENT', 'UNPAUSE');
    stop_nginx();
    {
        start_nginx(error_log_level => 'info', http_config => "recording_spool $SPOOL;",
                    config => ingest_location());
    }
    ok(poll_until(10, sub { !-e "$SPOOL/recording.spool" }), "$t: replayed after the next start");
    cmp_ok(check_delivery($t, $result, queued_elements()), '>=', 0, "$t: checked");
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

Test::More::done_testing();
