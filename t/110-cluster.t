# Redis Cluster (issue 3, part 5): `recording_redis <seeds> cluster;` on a
# real three-master cluster with one replica each (redis-server
# --cluster-enabled yes, redis-cli --cluster create):
#   1. routing: batches of many sessions over 16 queue shards land on the
#      masters owning their keys' slots; site settings are read from the
#      master owning recording:site:<id>; a daily session budget decided
#      by the master owning the day's keys (1b);
#   2. a slot migrated under a running nginx: MOVED, then ASK (the slot
#      MIGRATING/IMPORTING with the key already moved), then MOVED again;
#      then its master answering CLUSTERDOWN for a while;
#   3. failover mid-load: a master killed (SIGKILL) while several clients
#      post, its replica promoted at once (CLUSTER FAILOVER TAKEOVER);
#   4. the same with the cluster's own failover (node timeout 1000 ms);
#   5. a fake node: a redirection loop, masters named by host name, and
#      seeds that refuse or never answer.
# The invariant of every fault test: every batch answered 202 is in the
# cluster afterwards (found by session_id and seq); duplicates are counted
# and reported. Load is bounded in count and time.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::RedisCluster;
use Compress::Zlib ();
use File::Temp ();
use IO::Select ();
use IO::Socket::INET ();
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $why = Test::Nginx::RedisCluster::unavailable();
plan(skip_all => "no Redis Cluster here: $why") if $why;
plan('no_plan');

$SIG{PIPE} = 'IGNORE';
my $JSON = JSON::PP->new;

# No test here times a request: which path answered (a timeout, a retry, a
# refusal at once) is shown by the module's log and by what the nodes got.
my $c = Test::Nginx::RedisCluster->start(masters => 3, replicas => 1, node_timeout => 1000);
my @masters = $c->masters;
is(scalar @masters, 3, 'the cluster has three masters');
diag('masters ' . join(' ', @masters));

# Seeds: a master and a replica (any node can give the slot map).
my $SEEDS = "127.0.0.1:$masters[0] 127.0.0.1:" . $c->replica_of($masters[1]);

sub start_nginx_on_cluster {
    my (%o) = @_;
    start_nginx(no_default_redis => 1,
                main_config => 'worker_processes ' . ($o{workers} // 2) . ';',
                http_config => "recording_redis $SEEDS cluster;",
                config => ingest_location("recording_queue_shards $o{shards};"));
}

sub batch_json {
    my ($session, $seq) = @_;
    return qq({"session_id":"$session","seq":$seq,"events":[{"type":2,"timestamp":1700000000000,"data":{}}]});
}

sub post_batch {
    my ($site, $session, $seq) = @_;
    return http_request(method => 'POST', uri => "/v1/sites/$site/recordings",
                        body => batch_json($session, $seq), timeout => 10,
                        headers => ['Content-Type' => 'application/json'])->{status} // 0;
}

sub raw_post {
    my ($site, $session, $seq) = @_;
    my $body = batch_json($session, $seq);
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
         . 'Content-Type: application/json' . "\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
}

sub status_of { return ($_[0] // '') =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 0 }

sub queue_for {
    my ($site, $session, $shards) = @_;
    return 'recording:queue:' . (Compress::Zlib::crc32("$site:$session") % $shards);
}

# "session/seq" => [[key, port], ...] for every element in the cluster.
sub elements_by_batch {
    my %found;
    for my $e ($c->queue_elements) {
        my ($key, $port, $element) = @$e;
        my $doc = eval { $JSON->decode($element) } or next;
        push @{ $found{"$doc->{session_id}/$doc->{seq}"} }, [ $key, $port, $doc ];
    }
    return \%found;
}

sub recording_log_lines {
    return grep { /recording: / && !/\[debug\]/ } split /\n/, error_log_text();
}

# One site whose settings key lives on each master, and a disabled one.
my %site_on;   # master port => site id
for my $id (1 .. 200) {
    my $owner = $c->owner($c->keyslot("recording:site:$id"));
    $site_on{$owner} //= $id;
    last if keys %site_on == 3;
}
is(scalar keys %site_on, 3, 'a site key on every master');
$c->cmd(HSET => "recording:site:$_", enabled => 1, sample_rate => 1) for values %site_on;
my $DISABLED = 900;
$c->cmd(HSET => "recording:site:$DISABLED", enabled => 0, sample_rate => 1);
my @SITES = map { $site_on{$_} } sort keys %site_on;

# ---------------------------------------------------------------------------
# 1. Routing over 16 shards; site settings from the cluster.
# ---------------------------------------------------------------------------
{
    my $t = 'routing';
    my $SHARDS = 16;
    start_nginx_on_cluster(shards => $SHARDS);

    for my $port (sort keys %site_on) {
        is(post_batch($site_on{$port}, "site-on-$port", 0), 202,
           "$t: site $site_on{$port}, whose settings live on master $port, is enabled");
    }
    is(post_batch($DISABLED, 'disabled', 0), 403, "$t: a site disabled in the cluster: 403");
    is(post_batch(901, 'unknown', 0), 404, "$t: a site the cluster does not know: 404");

    my $N = 240;
    my @status;
    for (my $i = 0; $i < $N; $i += 12) {
        my @batch = grep { $_ < $N } $i .. $i + 11;
        my @res = concurrent_requests(10, map { raw_post($SITES[$_ % 3], "route-$_", $_) } @batch);
        $status[$batch[$_]] = status_of($res[$_]) for 0 .. $#batch;
    }
    is(scalar(grep { $_ == 202 } @status), $N, "$t: all $N batches of $N sessions answered 202");

    my $found = elements_by_batch();
    my (@missing, @misplaced, $dups, %keys_on);
    for my $i (0 .. $N - 1) {
        my $where = $found->{"route-$i/$i"};
        push @missing, $i unless $where;
        next unless $where;
        $dups += @$where - 1;
        my ($key, $port) = @{ $where->[0] };
        my $want = queue_for($SITES[$i % 3], "route-$i", $SHARDS);
        push @misplaced, "route-$i: in $key on $port, expected $want on "
                       . $c->owner($c->keyslot($want))
            if $key ne $want || $port != $c->owner($c->keyslot($key));
        $keys_on{$port}{$key} = 1;
    }
    ok(!@missing, "$t: every batch is in the cluster") or diag("missing: @missing");
    ok(!@misplaced, "$t: each in its shard's key, on the master owning that key's slot")
        or diag(join "\n", @misplaced[0 .. ($#misplaced > 9 ? 9 : $#misplaced)]);
    is($dups // 0, 0, "$t: no duplicates");
    is(scalar keys %keys_on, 3, "$t: the 16 shards' keys are spread over all three masters");
    diag("$t: queue keys per master: "
         . join(', ', map { "$_: " . scalar(keys %{ $keys_on{$_} }) } sort keys %keys_on));

    my $log = error_log_text();
    like($log, qr/\[notice\].*recording: redis cluster \Q$SEEDS\E: slot map from 127\.0\.0\.1:\d+: 3 masters, 16384 of 16384 slots served/,
         "$t: the slot map was read and logged");
    unlike($log, qr/recording: redis cluster .*: (?:MOVED|ASK) slot/, "$t: no redirection was needed");
    unlike($log, qr/recording: redis \S+: error reply/, "$t: no error reply");

    # A reload: the old workers' routes go (exit_process), the new workers
    # read the map for themselves.
    ok(reload_nginx(), "$t: nginx reloads");
    is(post_batch($SITES[0], 'after-reload', 0), 202, "$t: a batch after the reload: 202");
    ok($c->cmd(LRANGE => queue_for($SITES[0], 'after-reload', $SHARDS), -1, -1)->[0] =~ /"session_id":"after-reload"/,
       "$t: it is in the cluster");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 1b. A daily session budget over the cluster: the script's three keys share
#     a hash tag, so one master decides and counts; exactly the budget.
# ---------------------------------------------------------------------------
{
    my $t = 'budget';
    my $site = $SITES[1];
    $c->cmd(HSET => "recording:site:$site", daily_sessions => 5);
    start_nginx_on_cluster(shards => 4);
    my @sessions = map { "quota-$_" } 1 .. 15;
    my @res = concurrent_requests(30, map { my $seq = $_; map { raw_post($site, $_, $seq) } @sessions } 0, 1);
    my %by;
    push @{ $by{ $sessions[$_ % 15] } }, status_of($res[$_]) for 0 .. $#res;
    my @whole = grep { "@{ $by{$_} }" eq '202 202' } @sessions;
    my @refused = grep { "@{ $by{$_} }" eq '429 429' } @sessions;
    is(scalar @whole, 5, "$t: exactly 5 of 15 sessions accepted on both batches")
        or diag(join ' ', map { "$_=@{ $by{$_} }" } @sessions);
    is(scalar @refused, 10, "$t: the 10 others refused on both");
    my $day = POSIX::strftime('%Y-%m-%d', gmtime);
    my $key = "recording:budget:{$site}:$day:admitted";
    is($c->cmd(GET => $key), 5, "$t: $key is 5 on the master owning its slot");
    my $found = elements_by_batch();
    is(scalar(grep { /^quota-/ } keys %$found), 10, "$t: the cluster holds exactly the 10 admitted batches");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    $c->cmd(HDEL => "recording:site:$site", 'daily_sessions');
}

# ---------------------------------------------------------------------------
# 2. A slot migrated under a running nginx: MOVED, ASK, MOVED.
# ---------------------------------------------------------------------------

sub migrate {
    my ($slot, $from, $to, @keys) = @_;
    my ($from_id, $to_id) = map { $c->node_id($_) } $from, $to;
    my @r = ($c->call($to, qw(CLUSTER SETSLOT), $slot, IMPORTING => $from_id),
             $c->call($from, qw(CLUSTER SETSLOT), $slot, MIGRATING => $to_id));
    push @r, $c->call($from, MIGRATE => '127.0.0.1', $to, '', 0, 5000, KEYS => @keys) if @keys;
    my @bad = grep { ref } @r;
    die "migrating slot $slot: " . join(', ', map { $_->{error} } @bad) . "\n" if @bad;
}

# Gives the slot to $to on every master (the new owner first), and waits
# until every node agrees.
sub assign {
    my ($slot, $to, $from) = @_;
    my $id = $c->node_id($to);
    my @order = ($to, $from, grep { $_ != $to && $_ != $from } $c->masters);
    for my $port (@order) {
        my $r = $c->call($port, qw(CLUSTER SETSLOT), $slot, NODE => $id);
        die "SETSLOT NODE on $port: $r->{error}\n" if ref $r;
    }
    $c->wait_ok(10) or die "the cluster did not settle: $c->{why}\n";
}

# The seqs of session "mig" in $key on $port (with ASKING first, for a node
# importing the slot).
sub mig_seqs {
    my ($port, $key, $asking) = @_;
    my @replies = $c->pipeline($port, ($asking ? (['ASKING']) : ()), [LRANGE => $key, 0, -1]);
    return [ map { $_->{seq} } grep { $_->{session_id} eq 'mig' } map { $JSON->decode($_) } @{ $replies[-1] } ];
}

sub asking_calls {
    my ($port) = @_;
    my $stats = $c->call($port, 'INFO', 'commandstats');
    return $stats =~ /^cmdstat_asking:calls=(\d+)/m ? $1 : 0;
}

{
    my $t = 'migration';
    # One worker, so that the worker which learnt the map is the one that
    # meets the redirections; one shard: every batch goes to one key.
    start_nginx_on_cluster(shards => 1, workers => 1);
    my $KEY = 'recording:queue:0';
    my $slot = $c->keyslot($KEY);
    my $site = $SITES[0];
    my ($first, $second, $third) = ($c->owner($slot), grep { $_ != $c->owner($slot) } $c->masters);

    is(post_batch($site, 'mig', 1), 202, "$t: batch 1 queued");
    is_deeply(mig_seqs($first, $KEY), [1], "$t: on $first, the owner of slot $slot");

    # MOVED: the slot, with the key, now belongs to another master.
    migrate($slot, $first, $second, $KEY);
    assign($slot, $second, $first);
    is(post_batch($site, 'mig', 2), 202, "$t: batch 2 queued after the slot moved to $second");
    is_deeply(mig_seqs($second, $KEY), [1, 2], "$t: batch 2 followed the MOVED to $second");
    ok(poll_until(3, sub { error_log_text() =~ /recording: redis cluster .*: MOVED slot $slot to 127\.0\.0\.1:$second/ }),
       "$t: the MOVED is in the debug log");
    ok(poll_until(3, sub { count_matches(error_log_text(), qr/\[notice\].*slot map from/) >= 2 }),
       "$t: and the slot map was read again after it");

    # ASK: the slot is migrating from $second to $third, and the key has
    # already gone: $second answers ASK; the map still says $second.
    migrate($slot, $second, $third, $KEY);
    my $asking_before = asking_calls($third);
    is(post_batch($site, 'mig', 3), 202, "$t: batch 3 queued while the slot migrates to $third");
    is(post_batch($site, 'mig', 4), 202, "$t: batch 4 too (the map is not changed by ASK)");
    is(asking_calls($third) - $asking_before, 2, "$t: $third got ASKING before each of them");
    is_deeply(mig_seqs($third, $KEY, 'asking'), [1, 2, 3, 4],
              "$t: batches 3 and 4 went to the importing node, after 1 and 2");
    like(error_log_text(), qr/recording: redis cluster .*: ASK slot $slot to 127\.0\.0\.1:$third/,
         "$t: the ASK is in the debug log");

    # The migration ends: $second answers MOVED.
    assign($slot, $third, $second);
    is(post_batch($site, 'mig', 5), 202, "$t: batch 5 queued after the migration ended");
    is_deeply(mig_seqs($third, $KEY), [1 .. 5], "$t: all five on $third, in order");
    is(scalar(grep { /\[(?:error|warn)\].*recording: redis cluster/ } recording_log_lines()), 0,
       "$t: redirections are not errors of the cluster route")
        or diag(join "\n", recording_log_lines());
    is(scalar(grep { /\[error\].*recording: redis \S+: error reply: (?:MOVED|ASK)/ } recording_log_lines()), 0,
       "$t: ... nor of a node's connection")
        or diag(join "\n", recording_log_lines());

    # CLUSTERDOWN: the slot's owner forgets the slot (and so answers
    # CLUSTERDOWN to everything) for 300 ms: the batch is sent again
    # until it is served again, within the reply timeout (1 s).
    my $r = $c->call($third, qw(CLUSTER DELSLOTS), $slot);
    die "DELSLOTS: $r->{error}\n" if ref $r;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        sleep 0.3;
        eval { $c->call($third, qw(CLUSTER ADDSLOTS), $slot) };
        POSIX::_exit(0);
    }
    my $from = length error_log_text();
    is(post_batch($site, 'mig', 6), 202, "$t: batch 6 queued although $third answered CLUSTERDOWN for a while");
    waitpid($pid, 0);
    # It waited for the slot to be served again: refused with CLUSTERDOWN,
    # sent again, and served (the notice comes with a retried command's
    # answer); it is where the slot is served, after the others.
    my $log = substr(error_log_text(), $from);
    like($log, qr/\[warn\].*recording: redis cluster .*: CLUSTERDOWN .*, retrying/,
         "$t: batch 6 met CLUSTERDOWN and was retried (logged)");
    like($log, qr/\[notice\].*recording: redis cluster .*: serving again/,
         "$t: and a retry was served (the recovery is logged)");
    unlike($log, qr/no master could take a command in time/, "$t: ... before its deadline");
    is_deeply(mig_seqs($third, $KEY), [1 .. 6], "$t: batch 6 is there, after the others");
    $c->wait_ok(10) or die "the cluster did not settle: $c->{why}\n";

    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3 and 4. Failover mid-load.
# ---------------------------------------------------------------------------

# $clients processes post $n batches between them, each its share in turn
# (a new connection each, $pause s apart), trying a batch again 50 ms after
# any answer but 202, for up to $retry_for seconds (as the recording script
# would). Returns when they are all started; collect() waits for them and
# gives, per batch, the statuses of its attempts.
sub start_load {
    my (%o) = @_;
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my @pids;
    for my $k (0 .. $o{clients} - 1) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $out = '';
            for (my $i = $k; $i < $o{n}; $i += $o{clients}) {
                my @statuses;
                my $until = time + $o{retry_for};
                while (1) {
                    my $status = eval { post_batch($SITES[$i % 3], "$o{prefix}-$i", $i) } // 0;
                    push @statuses, $status;
                    last if $status == 202 || time > $until;
                    sleep 0.05;
                }
                $out .= sprintf "%d %.3f %s\n", $i, time, join(',', @statuses);
                sleep $o{pause};
            }
            open my $fh, '>', "$dir/$k" or POSIX::_exit(1);
            print {$fh} $out;
            close $fh;
            POSIX::_exit(0);   # no END blocks: they would stop nginx and the cluster
        }
        push @pids, $pid;
    }
    return { dir => $dir, pids => \@pids, %o };
}

sub collect {
    my ($load) = @_;
    waitpid($_, 0) for @{ $load->{pids} };
    my %result;
    for my $k (0 .. $load->{clients} - 1) {
        open my $fh, '<', "$load->{dir}/$k" or next;
        while (<$fh>) {
            my ($i, $at, $statuses) = split;
            $result{$i} = { at => $at, statuses => [ split /,/, $statuses ] };
        }
    }
    return \%result;
}

# Checks the invariant and reports the figures.
sub check_load {
    my ($t, $load, $result) = @_;
    my ($n, $prefix) = @$load{qw(n prefix)};
    my $found = elements_by_batch();
    my (%count, @lost, $dups);
    for my $i (0 .. $n - 1) {
        my $r = $result->{$i} or do { $count{unanswered}++; next };
        my @s = @{ $r->{statuses} };
        $count{attempts} += @s;
        $count{non202} += grep { $_ != 202 } @s;
        $count{"status_$_"}++ for grep { $_ != 202 } @s;
        my $ok = $s[-1] == 202;
        $count{ok}++ if $ok;
        $count{ok_first}++ if $ok && @s == 1;
        my $copies = @{ $found->{"$prefix-$i/$i"} || [] };
        $count{found}++ if $copies;
        $dups += $copies - 1 if $copies > 1;
        push @lost, $i if $ok && !$copies;
    }
    ok(!@lost, "$t: every batch answered 202 is in the cluster") or diag("lost: @lost");
    is($count{unanswered} // 0, 0, "$t: every client finished its share");
    diag(sprintf "$t: %d batches, %d attempts, %d answered 202 (%d at the first attempt), "
               . "%d other answers (%s), %d found in the cluster, %d duplicates",
         $n, $count{attempts} // 0, $count{ok} // 0, $count{ok_first} // 0, $count{non202} // 0,
         join(' ', map { /status_(\d+)/; "$1: $count{$_}" } sort grep { /^status_/ } keys %count) || 'none',
         $count{found} // 0, $dups // 0);
    return \%count;
}

sub failover_scenario {
    my (%o) = @_;
    my $t = $o{name};
    start_nginx_on_cluster(shards => 16);
    my $t0 = time;
    my $victim = $o{victim};
    my $replica = $c->replica_of($victim);
    ok($replica, "$t: master $victim has replica $replica");

    my $load = start_load(n => 400, clients => 8, retry_for => 10, pause => 0.03, prefix => $o{prefix});
    sleep 0.6;
    my $kill_at = time;
    $c->kill_node($victim);
    $o{after_kill}->($replica) if $o{after_kill};
    ok(poll_until(15, sub { (grep { $_ == $replica } $c->masters) && $c->wait_ok(0) }),
       "$t: the cluster is ok again with $replica as master") or diag($c->{why});
    my $promoted = time - $kill_at;
    my $result = collect($load);
    my $load_time = time - $t0;

    my $count = check_load($t, $load, $result);
    is($count->{ok}, 400, "$t: every batch was queued in the end (tried again while refused)");
    diag(sprintf "$t: load %.1fs, master %s killed %.1fs in, cluster ok %.2fs after the kill",
         $load_time, $victim, $kill_at - $t0, $promoted);

    # After the failover, batches get 202 at once.
    my @after = map { post_batch($SITES[$_ % 3], "$o{prefix}-after-$_", $_) } 0 .. 39;
    is(scalar(grep { $_ == 202 } @after), 40, "$t: 40 batches after the failover: all 202 at once")
        or diag("statuses: @after");
    my $found = elements_by_batch();
    is(scalar(grep { $found->{"$o{prefix}-after-$_/$_"} } 0 .. 39), 40, "$t: and all in the cluster");

    like(error_log_text(), qr/slot map from .*16384 of 16384 slots served/, "$t: the new map was read");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    diag("$t: the module's log:\n" . join("\n", map { s/^\S+ \S+ //r } recording_log_lines()))
        if $ENV{TEST_VERBOSE};
}

# 3. The replica takes over at once.
failover_scenario(
    name => 'failover (takeover)', prefix => 'fo1',
    victim => $c->owner($c->keyslot('recording:queue:0')),
    after_kill => sub {
        my ($replica) = @_;
        my $r = $c->call($replica, qw(CLUSTER FAILOVER TAKEOVER));
        die "CLUSTER FAILOVER TAKEOVER: $r->{error}\n" if ref $r;
    },
);

# 4. The cluster notices and promotes the replica by itself: meanwhile it
#    answers CLUSTERDOWN, which the module retries.
{
    my ($victim) = grep { $c->replica_of($_) } $c->masters;
    failover_scenario(name => 'failover (automatic)', prefix => 'fo2', victim => $victim);
}

# ---------------------------------------------------------------------------
# 5. What a real cluster does not do on demand: a fake node.
# ---------------------------------------------------------------------------

sub parse_resp_commands {
    my ($buf) = @_;
    my @cmds;
    while ($$buf =~ /\A\*(\d+)\r\n/) {
        my ($n, $pos, @args) = ($1, length $&);
        for (1 .. $n) {
            last unless substr($$buf, $pos) =~ /\A\$(\d+)\r\n/;
            my $len = $1;
            last if length($$buf) < $pos + length($&) + $len + 2;
            push @args, substr($$buf, $pos + length($&), $len);
            $pos += length($&) + $len + 2;
        }
        last unless @args == $n;
        substr($$buf, 0, $pos) = '';
        push @cmds, \@args;
    }
    return @cmds;
}

sub resp_node { my ($host, $port) = @_; return "*3\r\n\$" . length($host) . "\r\n$host\r\n:$port\r\n\$2\r\nid\r\n" }

# A node answering CLUSTER SLOTS with $o{slots}->($port) (RESP), RPUSH with
# $o{rpush}->($port), HMGET with an enabled site, anything else +OK (or,
# with silent => 1, nothing at all); the names of the commands it got go to
# $dir/<port>.
my $FAKE_DIR = File::Temp::tempdir(CLEANUP => 1);
sub start_fake_node {
    my (%o) = @_;
    return start_server(sub {
        my ($listener, $alive) = @_;
        my $port = $listener->sockport;
        open my $log, '>>', "$FAKE_DIR/$port" or POSIX::_exit(1);
        $log->autoflush(1);
        my $sel = IO::Select->new($listener);
        my %buf;
        while ($alive->()) {
            for my $fh ($sel->can_read(0.05)) {
                if ($fh == $listener) {
                    my $s = $listener->accept or next;
                    $sel->add($s);
                    $buf{ fileno $s } = '';
                    next;
                }
                my $n = sysread($fh, $buf{ fileno $fh }, 65536, length $buf{ fileno $fh });
                if (!$n) {
                    $sel->remove($fh);
                    delete $buf{ fileno $fh };
                    close $fh;
                    next;
                }
                for my $cmd (parse_resp_commands(\$buf{ fileno $fh })) {
                    my $name = uc $cmd->[0];
                    print {$log} "$name\n";
                    next if $o{silent};
                    syswrite($fh, $name eq 'CLUSTER' ? $o{slots}->($port)
                                : $name eq 'RPUSH'   ? $o{rpush}->($port)
                                : $name eq 'HMGET'   ? "*2\r\n\$1\r\n1\r\n\$1\r\n1\r\n"
                                :                      "+OK\r\n");
                }
            }
        }
    });
}

sub commands_to { my ($port) = @_; open my $fh, '<', "$FAKE_DIR/$port" or return (); return map { chomp; $_ } <$fh> }

sub start_nginx_on_fake {
    my ($seeds, $timeout) = @_;
    $timeout //= '300ms';
    start_nginx(no_default_redis => 1, config => ingest_location(<<"CONF"));
            recording_redis $seeds cluster;
            recording_redis_connect_timeout $timeout;
            recording_redis_read_timeout $timeout;
CONF
}

{
    my $t = 'redirection loop';
    my ($port, $pid) = start_fake_node(
        slots => sub { "*1\r\n*3\r\n:0\r\n:16383\r\n" . resp_node('127.0.0.1', $_[0]) },
        rpush => sub { "-MOVED 8135 127.0.0.1:$_[0]\r\n" });
    start_nginx_on_fake("127.0.0.1:$port");
    is(post_batch(1, 'loop', 0), 503, "$t: a node that keeps answering MOVED to itself: 503");
    is(scalar(grep { $_ eq 'RPUSH' } commands_to($port)), 6, "$t: the batch was sent once and redirected 5 times");
    is(count_matches(error_log_text(), qr/recording: redis cluster \S+: too many redirections: MOVED 8135/), 1,
       "$t: logged once");
    is(post_batch(1, 'loop', 1), 503, "$t: the next batch too");
    is(count_matches(error_log_text(), qr/too many redirections/), 1, "$t: still logged once");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

{
    my $t = 'host names';
    my ($port, $pid) = start_fake_node(
        slots => sub { "*2\r\n*3\r\n:0\r\n:8191\r\n" . resp_node('127.0.0.1', $_[0])
                     . "*3\r\n:8192\r\n:16383\r\n" . resp_node('redis-2.invalid', $_[0]) },
        rpush => sub { ":1\r\n" });
    start_nginx_on_fake("127.0.0.1:$port");
    # recording:site:1 (slot 4160) and recording:queue:0 (8135): served.
    is(post_batch(1, 'names', 0), 202, "$t: a batch whose keys are in the ranges of an IP address: 202");
    like(error_log_text(), qr/\[warn\].*recording: redis cluster \S+: 1 slot ranges skipped: their masters are named by host name \("redis-2\.invalid"\)/,
         "$t: the range of a host name is skipped, with a warning");
    # recording:site:42 (slot 10845): no master.  It waits for a map that
    # routes it until the timeouts (300ms each) have passed, then is
    # answered: the hang guard (10s) would end a request that waited longer.
    is(post_batch(42, 'names', 1), 503, "$t: a site whose settings key is in a skipped range: 503");
    is(count_matches(error_log_text(), qr/\[error\].*recording: redis cluster \S+: no master could take a command in time/), 1,
       "$t: answered at its deadline ('no master could take a command in time')");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);

    ($port, $pid) = start_fake_node(
        slots => sub { "*1\r\n*3\r\n:0\r\n:16383\r\n" . resp_node('redis-1.invalid', $_[0]) },
        rpush => sub { ":1\r\n" });
    start_nginx_on_fake("127.0.0.1:$port");
    is(post_batch(1, 'names', 2), 503, "$t: only host names: 503");
    like(error_log_text(), qr/no slot map from 127\.0\.0\.1:$port: every master is named by a host name/,
         "$t: and why");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

{
    my $t = 'no seed answers';
    my @closed = map { IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1) } 1 .. 2;
    my @ports = map { $_->sockport } @closed;
    close $_ for @closed;
    # The silent seed notes the commands it gets, and answers none.
    my ($silent, $pid) = start_fake_node(silent => 1);
    start_nginx_on_fake(join(' ', (map { "127.0.0.1:$_" } @ports), "127.0.0.1:$silent"), '1s');
    is(post_batch(1, 'none', 0), 503, "$t: seeds refusing and one never answering: 503");
    # Answered after the silent one's read timeout: its "no reply in time",
    # then "no node gave the slot map", both logged before the answer.
    my $log = error_log_text();
    like($log, qr/\[error\].*recording: redis 127\.0\.0\.1:$silent: no reply in time.*\n(?s:.*)\[error\].*recording: redis cluster \S+ \S+ \S+: no node gave the slot map/,
         "$t: after the silent seed's read timeout ('no reply in time', then 'no node gave the slot map')");
    like($log, qr/recording: redis 127\.0\.0\.1:$ports[0]: connect failed/, "$t: the first seed refused");
    unlike($log, qr/no master could take a command in time/, "$t: not by the batch's own deadline");
    is(join(',', commands_to($silent)), 'CLUSTER', "$t: the silent seed was asked for the map, once");
    is(post_batch(1, 'none', 1), 503, "$t: the next batch too");
    is(join(',', commands_to($silent)), 'CLUSTER',
       "$t: at once, while the silent seed is known not to answer: it was not asked again");
    like(error_log_text(), qr/\[error\].*recording: redis cluster \S+ \S+ \S+: no node gave the slot map/,
         "$t: logged");
    is(count_matches(error_log_text(), qr/no node gave the slot map/), 1, "$t: once");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);
}

{
    my $t = 'not a cluster';
    redis_start();   # the harness's Redis, without cluster mode
    start_nginx_on_fake('127.0.0.1:' . redis_port());
    is(post_batch(1, 'plain', $_), 503, "$t: batch $_ to a Redis without cluster mode: 503") for 0 .. 2;
    is(count_matches(error_log_text(), qr/recording: redis cluster \S+: no slot map from 127\.0\.0\.1:\d+: ERR This instance has cluster support disabled/),
       1, "$t: why, logged once");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    redis_stop();
}

