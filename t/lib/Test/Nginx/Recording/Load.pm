package Test::Nginx::Recording::Load;

# Bounded load for the forwarding tests: clients that behave like recorders
# (one session each, batches sent one after another in seq order, a batch
# answered 503 or not at all sent again), run in child processes while the
# test breaks things; then the invariant every fault test checks: every
# batch that got 202 is in Redis, found by its session_id and seq, each
# session's batches in order, and how many arrived twice.
#
#   my $load = start_load(clients => 8, batches => 50, site => 1);
#   ... kill Redis, reload nginx ...
#   my $result = wait_load($load);
#   check_delivery('name', $result, queued_elements());

use strict;
use warnings;

use Exporter 'import';
use POSIX ();
use Time::HiRes qw(time sleep);
use Test::More ();

# Loaded by the test file already; its import would take arguments as a plan.
require Test::Nginx::Recording;
sub http_request { Test::Nginx::Recording::http_request(@_) }
sub redis_cmd    { Test::Nginx::Recording::redis_cmd(@_) }
sub servroot     { Test::Nginx::Recording::servroot() }

our @EXPORT = qw(start_load wait_load queued_elements check_delivery load_batch);

# A small batch of a session: the same bytes whenever it is sent again.
sub load_batch {
    my ($session, $seq) = @_;
    return qq({"session_id":"$session","seq":$seq,"events":[{"type":3,"timestamp":)
         . (1700000000000 + $seq) . qq(,"data":{"source":1,"positions":[{"x":$seq,"y":2,"id":3,"timeOffset":0}]}}]});
}

my $LOADS = 0;

# Options: clients, batches (per client), site, uri (default the contract's),
# prefix (of session ids), retries (per batch, after a 503 or no answer),
# pause (seconds between a client's batches), timeout (per request),
# deadline (seconds for the whole load).
sub start_load {
    my (%o) = @_;
    my $clients = $o{clients} // 4;
    my $batches = $o{batches} // 20;
    my $site    = $o{site} // 1;
    my $uri     = $o{uri} // "/v1/sites/$site/recordings";
    my $prefix  = $o{prefix} // 'load' . ++$LOADS;
    my $retries = $o{retries} // 20;
    my $pause   = $o{pause} // 0;
    my $timeout = $o{timeout} // 5;
    my $until   = time + ($o{deadline} // 60);
    my $dir = servroot() . "/load-$prefix";
    mkdir $dir;

    my @pids;
    for my $c (1 .. $clients) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            my $session = "$prefix-$c";
            open my $out, '>', "$dir/$c" or POSIX::_exit(1);
            $out->autoflush(1);
            SEQ: for my $seq (0 .. $batches - 1) {
                for my $attempt (0 .. $retries) {
                    last SEQ if time > $until;
                    my $res = http_request(method => 'POST', uri => $uri, body => load_batch($session, $seq),
                                           headers => ['Content-Type' => 'application/json'],
                                           timeout => $timeout);
                    my $status = $res->{status} // 'none';
                    my $retry_after = $res->{headers}{'retry-after'} // '-';
                    print $out "$session $seq $status $retry_after\n";
                    next SEQ if $status eq '202' || $status eq '200';
                    sleep 0.05;
                }
                last;   # gave up on this batch: a recorder would stop too
            }
            continue {
                sleep $pause if $pause;
            }
            close $out;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    return { pids => \@pids, dir => $dir, clients => $clients, prefix => $prefix };
}

# Waits for the clients; returns { answers => [[session, seq, status,
# retry_after], ...], accepted => { "session seq" => 1 }, statuses => { status => n } }.
sub wait_load {
    my ($load) = @_;
    waitpid $_, 0 for @{ $load->{pids} };
    my (@answers, %accepted, %statuses);
    for my $c (1 .. $load->{clients}) {
        open my $in, '<', "$load->{dir}/$c" or next;
        while (my $line = <$in>) {
            chomp $line;
            my @f = split / /, $line;
            push @answers, \@f;
            $statuses{ $f[2] }++;
            $accepted{"$f[0] $f[1]"} = 1 if $f[2] eq '202';
        }
    }
    return { answers => \@answers, accepted => \%accepted, statuses => \%statuses };
}

# Every element of every recording:queue:* list, in list order.
sub queued_elements {
    my (@elements);
    my $keys = redis_cmd('KEYS', 'recording:queue:*');
    for my $key (sort @$keys) {
        push @elements, @{ redis_cmd('LRANGE', $key, 0, -1) };
    }
    return @elements;
}

# The invariant: every 202 is in Redis; each session's batches in seq
# order (first arrivals); duplicates counted and reported. Returns the
# number of duplicates.
sub check_delivery {
    my ($t, $result, @elements) = @_;
    my (%count, %order);
    for my $e (@elements) {
        my ($session) = $e =~ /"session_id":"([^"]+)"/;
        my ($seq) = $e =~ /"seq":(\d+)/;
        next unless defined $session && defined $seq;
        push @{ $order{$session} }, $seq unless $count{"$session $seq"}++;
    }
    my @missing = grep { !$count{$_} } sort keys %{ $result->{accepted} };
    Test::More::is(scalar @missing, 0, "$t: every batch answered 202 is in Redis ("
                   . scalar(keys %{ $result->{accepted} }) . " accepted)")
        or Test::More::diag("missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]");
    my @unordered = grep {
        my @s = @{ $order{$_} };
        grep { $s[$_] <= $s[$_ - 1] } 1 .. $#s;
    } sort keys %order;
    Test::More::is(scalar @unordered, 0, "$t: each session's batches in the order they were sent")
        or Test::More::diag("out of order: $_: @{ $order{$_} }") for @unordered[0 .. ($#unordered < 4 ? $#unordered : 4)];
    my $duplicates = 0;
    $duplicates += $_ - 1 for values %count;
    my %statuses = %{ $result->{statuses} };
    Test::More::note("$t: answers " . join(', ', map { "$_: $statuses{$_}" } sort keys %statuses)
                     . "; elements in Redis " . scalar(@elements) . "; duplicates $duplicates");
    return $duplicates;
}

1;
