# scripts/storage-worker, killed over and over while it drains the queues.
# Two workers share the queues and the output directory: one kills itself
# (its test hook, STORAGE_WORKER_CRASH) by SIGKILL at each step of a batch:
# just after the LMOVE, in the middle of writing the line, after the write
# and before the LREM, and before the rename of a rewritten file; the
# other gets SIGKILL from outside at random moments. The queues hold what the module would push, plus
# what makes a storage worker's life hard: duplicates (the same element
# twice, and resends: the same batch again with another _ingest, as a
# recorder sends it over a new WebSocket), batches out of seq order, two page views of a session at once,
# elements with raw newlines, large ones, and garbage. In the end every
# session's file must be exactly its batches, once each, in page-view and
# seq order, whatever was killed when.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Cwd ();
use File::Temp ();
use JSON::PP ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

my $WORKER = Cwd::abs_path('scripts/storage-worker');
my $PYTHON = '/usr/bin/python3';   # Debian's, with python3-redis
my $SHARDS = 4;
my $CRASH  = 0.04;                 # chance to die at each crash point

if (system($PYTHON, '-c', 'import redis') != 0) {
    fail('python3-redis is installed (scripts/install-deps test installs it)');
    Test::More::done_testing();
    exit 1;
}

my $seed = $ENV{TEST_SEED} // int(time * 1000) % 1_000_000;
srand($seed);
Test::More::note("data seed $seed (TEST_SEED=$seed repeats the data; the kills are random anyway)");
my $JSON = JSON::PP->new->canonical;

# ---------------------------------------------------------------------------
# The batches: 40 sessions on 3 sites, 1 to 3 page views each, 1 to 10
# batches per page view.
# ---------------------------------------------------------------------------

my $rid_counter = 0;
sub request_id { return sprintf '%032x', ++$rid_counter * 7919 }

sub element {
    my (%b) = @_;
    my @events = map {
        my $size = rand() < 0.03 ? 150_000 : 50 + int rand 400;   # some large ones
        { type => 3, timestamp => $b{ts} + $_, data => { source => 1, pad => 'x' x $size } }
    } 0 .. int rand 3;
    my $client = $JSON->encode({ session_id => $b{session}, page_id => $b{page},
                                 seq => $b{seq}, events => \@events });
    # Some clients send white space, newlines included: the module keeps it.
    $client =~ s/,"seq":/,\n  "seq" :\r\n/ if rand() < 0.05;
    chop $client;   # the closing brace; _ingest goes last, as the module puts it
    return $client . ',"_ingest":{"site_id":' . $b{site} . ',"received_at":' . ($b{ts} + 5)
         . ',"ip":"127.0.0.1","user_agent":"t","country":null,"request_id":"'
         . request_id() . '"}}';
}

# The same batch sent again by the recorder (over another WebSocket
# connection): the client's JSON as it was, a new request_id, later.
sub resend {
    my ($element) = @_;
    my $rid = request_id();
    $element =~ s/"received_at":(\d+)/'"received_at":' . ($1 + 1000)/e or die;
    $element =~ s/"request_id":"[0-9a-f]+"/"request_id":"$rid-2"/ or die;
    return $element;
}

# The line of an element in a session's file.
sub file_line { (my $l = $_[0]) =~ tr/\r\n/  /; return "$l\n" }

# "site/session" => [lines in order]; queue lists; resend's line => the
# line of the batch it repeats (whichever copy a worker takes first is the
# one written: two workers, or a worker killed holding the original).
my (%expected, @queues, %original_of);
for my $s (1 .. 40) {
    my $site = 1 + $s % 3;
    my $session = sprintf 'sess-%02d-%04x', $s, int rand 65536;
    my $ts = 1_700_000_000_000 + $s * 10_000_000;
    my (@pages, @arrival);
    for my $p (1 .. 1 + int rand 3) {
        my @batches = map {
            $ts += 500 + int rand 2000;
            element(site => $site, session => $session, page => "page-$p", seq => $_, ts => $ts);
        } 0 .. int rand 10;
        push @pages, \@batches;
    }
    # The file: page views in the order they started, batches by seq.
    $expected{"$site/$session"} = [ map { (my $l = $_) =~ tr/\r\n/  /; "$l\n" } map { @$_ } @pages ];
    # The arrival: in order, except page views sent in reverse (late
    # batches) and, in some sessions, two page views at once (two tabs).
    my @sent = map { rand() < 0.4 ? [ reverse @$_ ] : [ @$_ ] } @pages;
    while (@sent) {
        my $i = (@sent > 1 && rand() < 0.3) ? 1 : 0;
        push @arrival, shift @{ $sent[$i] };
        splice @sent, $i, 1 unless @{ $sent[$i] };
    }
    # Duplicates, a little later: the same element again (a spool
    # replay), or a resend of the batch (a new _ingest).
    for my $i (reverse 0 .. $#arrival) {
        next unless rand() < 0.08;
        my $at = $i + 1 + int rand 3;
        my $dup = rand() < 0.5 ? $arrival[$i] : resend($arrival[$i]);
        $original_of{ file_line($dup) } = file_line($arrival[$i]);
        splice @arrival, ($at > @arrival ? scalar @arrival : $at), 0, $dup;
    }
    # Sessions share queues; each keeps its own order in its queue.
    my $q = $queues[$s % $SHARDS] //= [];
    my @merged;
    while (@$q || @arrival) {
        push @merged, (!@arrival || (@$q && rand() < 0.5)) ? shift @$q : shift @arrival;
    }
    @$q = @merged;
}
# Garbage, which must end in recording:failed and nowhere else.
my @garbage = ('not json',
    '{"session_id":"../../etc/passwd","page_id":"p","seq":0,"events":[{"type":2,"timestamp":1}],'
  . '"_ingest":{"site_id":1,"request_id":"ffff"}}');
unshift @{ $queues[0] }, @garbage;

my $total = 0;
$total += @$_ for @queues;
my $unique = 0;
$unique += @$_ for values %expected;
Test::More::note("$total elements in $SHARDS queues: $unique distinct batches of "
     . scalar(keys %expected) . ' sessions, ' . ($total - $unique - @garbage) . ' duplicates, '
     . scalar(@garbage) . ' garbage');

redis_start();
my $out = File::Temp::tempdir('storage-worker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $logs = File::Temp::tempdir('storage-worker-logs-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $redis_url = 'redis://127.0.0.1:' . redis_port() . '/0';

my %running;   # worker pids not yet reaped, killed if the test dies
END { kill KILL => keys %running if %running }

# A worker in the background; $dir given: with --drain into $dir, else
# as deployed (waiting for more) into $out.
sub start_worker {
    my ($name, $crash, $dir) = @_;
    my @mode = defined $dir ? ('--drain') : ();
    $dir //= $out;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$logs/$name.log";
        open STDERR, '>&', \*STDOUT;
        $ENV{STORAGE_WORKER_CRASH} = $crash;
        exec $WORKER, '--redis', $redis_url, '--out', $dir, '--name', $name, @mode
            or POSIX::_exit(127);
    }
    $running{$pid} = 1;
    return $pid;
}

# Reap a worker that has exited: its wait status, or undef if it still runs.
sub reaped {
    my ($pid, $flags) = @_;
    return undef unless waitpid($pid, $flags) == $pid;
    delete $running{$pid};
    return $?;
}

sub slurp {
    open my $fh, '<:raw', $_[0] or return undef;
    local $/;
    return scalar <$fh>;
}

# ---------------------------------------------------------------------------
# Each crash point once, for certain: seq 1 arrives first (appended), then
# seq 0 (a rewrite), then seq 1 again (a duplicate). The worker dies at the
# point, a restart finishes the work, and the file is seq 0, seq 1.
# ---------------------------------------------------------------------------

for my $point (qw(after-pop mid-write after-write before-rename)) {
    my @b = map { element(site => 1, session => "crash-$point", page => 'p', seq => $_,
                          ts => 1_800_000_000_000 + $_ * 1000) } 0, 1;
    redis_cmd('FLUSHALL');
    redis_cmd('RPUSH', 'recording:queue:0', $b[1], $b[0], $b[1]);
    my $dir = File::Temp::tempdir('storage-worker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $name = "crash-$point";
    my $st = reaped(start_worker($name, "$point=1", $dir), 0);
    ok(($st & 127) == 9 && slurp("$logs/$name.log") =~ /killed at \Q$point\E/,
       "$point: the worker dies there") or diag(slurp("$logs/$name.log"));
    is(reaped(start_worker($name, '', $dir), 0), 0, "$point: restarted, it drains and exits 0")
        or diag(slurp("$logs/$name.log"));
    my $want = join '', map { (my $l = $_) =~ tr/\r\n/  /; "$l\n" } @b;
    is(slurp("$dir/1/crash-$point.jsonl"), $want, "$point: the file is seq 0 and seq 1, once each");
}
like(slurp("$logs/crash-mid-write.log"), qr/cutting off a torn last line/,
     'the torn line left by mid-write was cut off');

# ---------------------------------------------------------------------------
# Resends: a batch is (session_id, page_id, seq), whatever its _ingest. The
# queue gets seq 0 and 1 of page view p, seq 0 again with another
# request_id (resent on a new connection), seq 0 of another page view q
# (the same seq, another batch), seq 2, then seq 1 resent; a second run
# gets seq 2 resent once more (the file is the record, across restarts);
# a third gets seq 3 of p and its resend, and is killed after writing seq
# 3 (in its place, before q: a rewrite); its restart finds seq 3 in its
# processing list and then the resend, both already written.
# ---------------------------------------------------------------------------

{
    my $t = 1_900_000_000_000;
    my @p = map { element(site => 1, session => 'resends', page => 'p', seq => $_, ts => $t + $_ * 1000) } 0 .. 3;
    my $q = element(site => 1, session => 'resends', page => 'q', seq => 0, ts => $t + 500);
    redis_cmd('FLUSHALL');
    redis_cmd('RPUSH', 'recording:queue:0', $p[0], $p[1], resend($p[0]), $q, $p[2], resend($p[1]));
    my $dir = File::Temp::tempdir('storage-worker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    is(reaped(start_worker('resends', '', $dir), 0), 0, 'resends: the worker drains and exits 0')
        or diag(slurp("$logs/resends.log"));
    my $want = join '', map { (my $l = $_) =~ tr/\r\n/  /; "$l\n" } $p[0], $p[1], $p[2], $q;
    is(slurp("$dir/1/resends.jsonl"), $want,
       'resends: page view p seq 0, 1, 2 once each (the first copy), then q seq 0');
    like(slurp("$logs/resends.log"), qr/4 written, 2 duplicates dropped/, 'resends: 2 dropped as duplicates');
    redis_cmd('RPUSH', 'recording:queue:2', resend($p[2]));
    is(reaped(start_worker('resends', '', $dir), 0), 0, 'resends: a second run exits 0');
    is(slurp("$dir/1/resends.jsonl"), $want, 'resends: seq 2 resent later is dropped too');
    redis_cmd('RPUSH', 'recording:queue:1', $p[3], resend($p[3]));
    my $st = reaped(start_worker('resends', 'after-write=1', $dir), 0);
    is($st & 127, 9, 'resends: the third run dies after writing seq 3');
    is(reaped(start_worker('resends', '', $dir), 0), 0, 'resends: restarted, it drains and exits 0');
    $want = join '', map { (my $l = $_) =~ tr/\r\n/  /; "$l\n" } @p, $q;
    is(slurp("$dir/1/resends.jsonl"), $want, 'resends: p seq 0 to 3, then q, each once');
}

# A file from a worker that dropped duplicates by request_id only: seq 1
# in it twice. A third copy is dropped; a page view that started earlier
# (a rewrite) goes first and the two old copies stay, in their order. And
# page_id 5 (a number) is not page_id "5".
{
    my $t = 1_950_000_000_000;
    my @p = map { element(site => 1, session => 'legacy', page => 'p', seq => $_, ts => $t + $_ * 1000) } 0, 1;
    my $again = resend($p[1]);
    my $r = element(site => 1, session => 'legacy', page => 'r', seq => 0, ts => $t - 1000);
    my @five = (element(site => 1, session => 'five', page => 5, seq => 0, ts => $t),
                element(site => 1, session => 'five', page => '5', seq => 0, ts => $t + 10_000));
    my $dir = File::Temp::tempdir('storage-worker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    mkdir "$dir/1" or die;
    open my $fh, '>:raw', "$dir/1/legacy.jsonl" or die;
    print $fh map { file_line($_) } $p[0], $p[1], $again;
    close $fh;
    redis_cmd('FLUSHALL');
    redis_cmd('RPUSH', 'recording:queue:0', resend($p[1]), $r, @five);
    is(reaped(start_worker('legacy', '', $dir), 0), 0, 'legacy file: the worker drains and exits 0')
        or diag(slurp("$logs/legacy.log"));
    is(slurp("$dir/1/legacy.jsonl"), join('', map { file_line($_) } $r, $p[0], $p[1], $again),
       'legacy file: r goes first, seq 1 stays twice as it was, no third copy');
    is(slurp("$dir/1/five.jsonl"), join('', map { file_line($_) } @five),
       'page_id 5 and "5" are two page views');
}
redis_cmd('FLUSHALL');
redis_cmd('FLUSHALL');

# ---------------------------------------------------------------------------
# The soak.
# ---------------------------------------------------------------------------

# What the module would do: a few elements every 50 ms (each queue in its
# order), for about six seconds.
my @pushes;
for my $i (0 .. 1000) {
    my @step = map { $queues[$_][$i] ? [ $_, $queues[$_][$i] ] : () } 0 .. $#queues;
    last unless @step;
    push @pushes, @step;
}

sub drained {
    return 0 if @{ redis_cmd('KEYS', 'recording:queue:*') };
    return !grep { redis_cmd('LLEN', "recording:processing:$_") } qw(w1 w2);
}

# The soak: w1 kills itself at the crash points (STORAGE_WORKER_CRASH=0.04
# at each); w2 is killed from outside 0.1 to 0.4 s after each start, 40
# times at most, so that draining always gets somewhere, even on a loaded
# machine where Python starts slowly. Both run as deployed (no --drain),
# are restarted as they die, and get SIGTERM once all is written.
my $KILL_BUDGET = 40;
my %crash = (w1 => $CRASH, w2 => 0);
my %pid = (w1 => undef, w2 => undef);
my %kill_at;
my (%exits, @bad_exits);
my ($external_kills, $starts) = (0, 0);
my $deadline = time + 150;
my $next_push = time;
my $done;
while (time < $deadline) {
    if (@pushes && time >= $next_push) {
        for (1 .. 4) {
            my $p = shift @pushes or last;
            redis_cmd('RPUSH', "recording:queue:$p->[0]", $p->[1]);
        }
        $next_push = time + 0.05;
    }
    for my $name (sort keys %pid) {
        if ($pid{$name} && defined(my $st = reaped($pid{$name}, WNOHANG))) {
            my $how = ($st & 127) ? 'signal ' . ($st & 127) : 'exit ' . ($st >> 8);
            $exits{$how}++;
            # SIGTERM at the end: exit 0, or the signal if it came before
            # Python set its handler up.
            push @bad_exits, "$name: $how"
                unless $how eq 'signal 9' || ($done && $how =~ /^(exit 0|signal 15)$/);
            undef $pid{$name};
        }
        if (!$pid{$name} && !$done) {
            $pid{$name} = start_worker($name, $crash{$name});
            $starts++;
            $kill_at{$name} = $crash{$name} ? $deadline : time + 0.1 + rand 0.3;
        }
        if ($pid{$name} && !$done && $external_kills < $KILL_BUDGET && time >= $kill_at{$name}) {
            kill KILL => $pid{$name};
            $external_kills++;
            $kill_at{$name} = $deadline;   # once per run
        }
    }
    last if $done && !grep { defined } values %pid;
    if (!$done && !@pushes && drained()) {
        $done = 1;
        kill TERM => grep { defined } values %pid;
    }
    sleep 0.02;
}
ok(time < $deadline, "the workers drained the queues in time, killed and restarted $starts times");
is(join(', ', @bad_exits), '', 'every worker ended by SIGKILL, or by SIGTERM at the end');
ok(drained(), 'queues and processing lists are empty');

# One more run of each, without crashes: nothing is left to do.
for my $name (qw(w1 w2)) {
    is(reaped(start_worker($name, 0, $out), 0), 0, "a last run of $name with --drain exits 0");
}

# ---------------------------------------------------------------------------
# What is on disk.
# ---------------------------------------------------------------------------

my (@missing, @wrong);
for my $key (sort keys %expected) {
    my $got = slurp("$out/$key.jsonl");
    $got = join '', map { $original_of{$_} // $_ } split /(?<=\n)/, $got if defined $got;
    if (!defined $got) {
        push @missing, $key;
        next;
    }
    my $want = join '', @{ $expected{$key} };
    next if $got eq $want;
    my @g = split /(?<=\n)/, $got;
    my %seen;
    my $dups = grep { $seen{$_}++ } @g;
    my %have = map { $_ => 1 } @g;
    my $lost = grep { !$have{$_} } @{ $expected{$key} };
    push @wrong, "$key: " . scalar(@g) . ' lines, expected ' . scalar(@{ $expected{$key} })
        . " ($lost lost, $dups duplicated, otherwise out of order or torn)";
}
is(join(', ', @missing), '', 'a file for every session');
is(join("\n", @wrong), '', "every file is exactly its batches, once each, in page-view and seq order ($unique batches)");

my @files = grep { -f } glob("$out/*/*");
is(scalar(@files), scalar(keys %expected), 'no other file in the output');
is(join(' ', glob("$out/.tmp/*")), '', 'no temporary file left');
# (in either order: the two workers may have taken one each)
is_deeply([ sort @{ redis_cmd('LRANGE', 'recording:failed', 0, -1) } ], [ sort @garbage ],
          'the garbage, and only it, is in recording:failed');

# ---------------------------------------------------------------------------
# The crashes really happened where they should.
# ---------------------------------------------------------------------------

my ($w1_log, $w2_log) = map { slurp("$logs/$_.log") // '' } qw(w1 w2);
my %crashes = map { $_ => scalar(() = $w1_log =~ /killed at \Q$_\E\b/g) }
              qw(after-pop mid-write after-write before-rename);
my $self_kills = 0;
$self_kills += $_ for values %crashes;
my $w2_mid_batch = () = $w2_log =~ /recovering \d+ batch/g;
my $torn = () = "$w1_log$w2_log" =~ /cutting off a torn last line/g;
my @tracebacks = "$w1_log$w2_log" =~ /^(Traceback.*?^\S.*?$)/msg;
is(join("\n", @tracebacks), '', 'no worker failed with an exception');
ok($self_kills >= 10, "w1 killed itself at the crash points ($self_kills times: "
   . join(', ', map { "$_ $crashes{$_}" } sort keys %crashes) . ')');
ok($external_kills >= 10, "w2 killed from outside at random moments ($external_kills times)");
ok($w2_mid_batch > 0, "... mid-batch: a batch left in its processing list ($w2_mid_batch times)");
Test::More::note("torn lines cut off: $torn; worker exits: "
                 . join(', ', map { "$_ x$exits{$_}" } sort keys %exits));

Test::More::done_testing();
