# scripts/storage-worker, killed over and over while it drains the queues:
# SIGKILL from outside at random moments, and by itself (its test hook,
# STORAGE_WORKER_CRASH) at each step of a batch: just after the LMOVE, in
# the middle of writing the line, after the write and before the LREM, and
# before the rename of a rewritten file. Two workers share the queues and
# the output directory. The queues hold what the module would push, plus
# what makes a storage worker's life hard: duplicates (the same element
# twice), batches out of seq order, two page views of a session at once,
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

my (%expected, @queues);   # "site/session" => [lines in order]; queue lists
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
    # Duplicates: the same element again, a little later.
    for my $i (reverse 0 .. $#arrival) {
        splice @arrival, $i + 1 + int rand 3, 0, $arrival[$i] if rand() < 0.08;
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

# ---------------------------------------------------------------------------
# Run two workers, pushing the queues in four parts while they run, killing
# them at random, restarting them as they die, until everything is drained.
# ---------------------------------------------------------------------------

redis_start();
my $out = File::Temp::tempdir('storage-worker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $logs = File::Temp::tempdir('storage-worker-logs-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $redis_url = 'redis://127.0.0.1:' . redis_port() . '/0';

my %running;   # worker pids not yet reaped, killed if the test dies
END { kill KILL => keys %running if %running }

sub start_worker {
    my ($name, $crash) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$logs/$name.log";
        open STDERR, '>&', \*STDOUT;
        $ENV{STORAGE_WORKER_CRASH} = $crash;
        exec $WORKER, '--redis', $redis_url, '--out', $out, '--name', $name, '--drain'
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

my $pushed = 0;
sub push_part {
    my ($part) = @_;
    for my $q (0 .. $#queues) {
        my @all = @{ $queues[$q] };
        my $per = int(@all / 4) + 1;
        my @chunk = grep { defined } @all[$part * $per .. ($part + 1) * $per - 1];
        redis_cmd('RPUSH', "recording:queue:$q", @chunk) if @chunk;
        $pushed += @chunk;
    }
}

sub drained {
    return 0 if @{ redis_cmd('KEYS', 'recording:queue:*') };
    return !grep { redis_cmd('LLEN', "recording:processing:$_") } qw(w1 w2);
}

my %pid = (w1 => undef, w2 => undef);
my (%exits, @bad_exits);
my ($external_kills, $starts) = (0, 0);
my $deadline = time + 150;
my $next_part = 0;
my $next_push = time;
my $next_kill = time + 0.5;
while (time < $deadline) {
    if ($next_part < 4 && time >= $next_push) {
        push_part($next_part++);
        $next_push = time + 1.5;
    }
    for my $name (sort keys %pid) {
        if ($pid{$name} && defined(my $st = reaped($pid{$name}, WNOHANG))) {
            my $how = ($st & 127) ? 'signal ' . ($st & 127) : 'exit ' . ($st >> 8);
            $exits{$how}++;
            push @bad_exits, "$name: $how" unless $how eq 'signal 9' || $how eq 'exit 0';
            undef $pid{$name};
        }
        if (!$pid{$name} && !($next_part == 4 && drained())) {
            $pid{$name} = start_worker($name, $CRASH);
            $starts++;
        }
    }
    last if $next_part == 4 && !grep { defined } values %pid;
    if (time >= $next_kill) {
        my @live = grep { defined } values %pid;
        if (@live) {
            kill KILL => $live[rand @live];
            $external_kills++;
        }
        $next_kill = time + 0.1 + rand 0.6;
    }
    sleep 0.02;
}
ok(time < $deadline, "the workers drained the queues in time, killed and restarted $starts times");
is(join(', ', @bad_exits), '', 'every worker ended by SIGKILL or a clean drain');
ok(drained(), 'queues and processing lists are empty');

# One more run of each, without crashes: nothing is left to do.
for my $name (qw(w1 w2)) {
    is(reaped(start_worker($name, 0), 0), 0, "a last run of $name exits 0");
}

# ---------------------------------------------------------------------------
# What is on disk.
# ---------------------------------------------------------------------------

sub slurp {
    open my $fh, '<:raw', $_[0] or return undef;
    local $/;
    return scalar <$fh>;
}

my (@missing, @wrong);
for my $key (sort keys %expected) {
    my $got = slurp("$out/$key.jsonl");
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
is_deeply(redis_cmd('LRANGE', 'recording:failed', 0, -1), \@garbage,
          'the garbage, and only it, is in recording:failed');

# ---------------------------------------------------------------------------
# The crashes really happened where they should.
# ---------------------------------------------------------------------------

my $log = join '', map { slurp($_) // '' } glob("$logs/*.log");
my %crashes = map { $_ => scalar(() = $log =~ /killed at \Q$_\E\b/g) }
              qw(after-pop mid-write after-write before-rename);
my $torn = () = $log =~ /cutting off a torn last line/g;
my $recovered = () = $log =~ /recovering \d+ batch/g;
my @tracebacks = $log =~ /^(Traceback.*?^\S.*?$)/msg;
is(join("\n", @tracebacks), '', 'no worker failed with an exception');
ok($crashes{$_} > 0, "killed by itself at $_ ($crashes{$_} times)") for sort keys %crashes;
ok($external_kills >= 20, "killed from outside at random moments ($external_kills times)");
ok($torn > 0, "torn lines cut off after a kill mid-write ($torn)");
ok($recovered > 0, "processing lists recovered after a restart ($recovered times)");
Test::More::note('worker exits: ' . join(', ', map { "$_ x$exits{$_}" } sort keys %exits));

Test::More::done_testing();
