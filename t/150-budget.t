# Daily session budgets (the site hash's daily_sessions): exactly that many
# sessions recorded whole per UTC day across two servers and their workers, every batch of any
# other session refused with 429 quota_exceeded and Retry-After until the
# next UTC midnight; the day's counts at documented keys; an admitted
# session's later batches ask Redis nothing; a site without the field is not
# limited; a value that does not parse is no budget (warned once); when Redis
# cannot answer the budget question the session is admitted (fail open).
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use JSON::PP ();
use POSIX qw(strftime);

my $SITE = 7;
my $ORIGIN = 'https://shop.example';

sub batch {
    my ($session, $seq) = @_;
    return qq({"session_id":"$session","seq":$seq,"events":[{"type":3,"timestamp":1700000000000,"data":{"source":1}}]});
}

sub raw_post {
    my ($site, $session, $seq) = @_;
    my $body = batch($session, $seq);
    return "POST /v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
         . "Origin: $ORIGIN\r\nContent-Type: application/json\r\nContent-Length: " . length($body)
         . "\r\n\r\n$body";
}

sub status_of { my ($raw) = @_; return defined $raw && $raw =~ m{^HTTP/1\.1 (\d{3})} ? $1 : 0 }

sub queued_elements {
    my $n = 0;
    $n += redis_cmd('LLEN', $_) for @{ redis_cmd('KEYS', 'recording:queue:*') };
    return $n;
}

sub sessions_in_queues {
    my %seen;
    for my $key (@{ redis_cmd('KEYS', 'recording:queue:*') }) {
        for my $e (@{ redis_cmd('LRANGE', $key, 0, -1) }) {
            my $j = JSON::PP::decode_json($e);
            $seen{ $j->{session_id} }++;
        }
    }
    return \%seen;
}

sub calls_of {
    my ($cmd) = @_;
    my ($n) = redis_cmd('INFO', 'commandstats') =~ /cmdstat_\Q$cmd\E:calls=(\d+)/;
    return $n // 0;
}

sub status_json { JSON::PP::decode_json(http_request(uri => '/status')->{body}) }

my $TODAY = strftime('%Y-%m-%d', gmtime);
my $KEYS = "recording:budget:{$SITE}:$TODAY";

sub start {
    my (%o) = @_;
    start_nginx(error_log_level => 'info', main_config => "worker_processes 2;\n" . ($o{main} // ''),
                http_config => $o{http} // '', no_default_redis => $o{http} ? 1 : 0,
                config => "location = /status { recording_status; }\n" . ingest_location());
}

redis_start();

# ---------------------------------------------------------------------------
# 1. 30 new sessions, three batches each, all at once over 90 connections to
#    two nginx servers of two workers each, sharing one Redis: exactly 10
#    sessions recorded whole, the others refused on every batch.
# ---------------------------------------------------------------------------
{
    my $t = 'budget of 10';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 10);
    start();
    my ($second, $second_pid) = start_second_nginx();
    my @sessions = map { sprintf('budget-%02d', $_) } 1 .. 30;
    my @requests;
    for my $seq (0 .. 2) {
        # Each session's batches over both servers, alternately.
        push @requests, map { [ ($_ + $seq) % 2 ? $second : server_port(), raw_post($SITE, $sessions[$_], $seq) ] }
                        0 .. $#sessions;
    }
    my @answers = concurrent_requests(60, @requests);
    my (%by_session, %statuses);
    for my $i (0 .. $#requests) {
        my $status = status_of($answers[$i]);
        $statuses{$status}++;
        push @{ $by_session{ $sessions[$i % @sessions] } }, $status;
    }
    my @admitted = grep { join(',', @{ $by_session{$_} }) eq '202,202,202' } @sessions;
    my @refused = grep { join(',', @{ $by_session{$_} }) eq '429,429,429' } @sessions;
    is(scalar @admitted, 10, "$t: exactly 10 sessions got 202 on every batch")
        or diag(join ' ', map { "$_=" . join(',', @{ $by_session{$_} }) } @sessions);
    is(scalar @refused, 20, "$t: the other 20 got 429 on every batch (no session in part)");
    is(queued_elements(), 30, "$t: Redis holds exactly the admitted batches (10 x 3)");
    my $in_queues = sessions_in_queues();
    is(join(' ', sort keys %$in_queues), join(' ', sort @admitted), "$t: ... of the admitted sessions");

    my ($refusal) = grep { status_of($_) == 429 } @answers;
    like($refusal, qr/\r\n\r\n\Q{"error":"quota_exceeded"}\E$/, "$t: the 429's body is quota_exceeded");
    my ($retry) = $refusal =~ /\r\nRetry-After: (\d+)\r\n/i;
    my $to_midnight = 86400 - time % 86400;
    ok(defined $retry && $retry >= 1 && $retry <= 86400 && abs($retry - $to_midnight) <= 60,
       "$t: Retry-After is the seconds to the next UTC midnight ($retry, ~$to_midnight)");
    like($refusal, qr/\r\nAccess-Control-Allow-Origin: \Q$ORIGIN\E\r\n/i, "$t: ... with the CORS headers");

    is(redis_cmd('GET', "$KEYS:admitted"), 10, "$t: $KEYS:admitted counts 10 sessions");
    is(redis_cmd('GET', "$KEYS:refused"), 20, "$t: $KEYS:refused counts 20 sessions");
    is(redis_cmd('HLEN', "$KEYS:sessions"), 30, "$t: every session's decision is kept for the day");
    for my $key ("$KEYS:admitted", "$KEYS:refused", "$KEYS:sessions") {
        my $ttl = redis_cmd('TTL', $key);
        ok($ttl > 172700 && $ttl <= 172800, "$t: $key expires after 48 hours (TTL $ttl)");
    }

    my @s = (status_json(), JSON::PP::decode_json(http_request(port => $second, uri => '/status')->{body}));
    my $sum = sub { my ($f) = @_; my $n = 0; $n += $f->($_) for @s; $n };
    is($sum->(sub { $_[0]{batches}{quota_exceeded} }), 60, "$t: the two servers count 60 batches quota_exceeded");
    is($sum->(sub { $_[0]{batches}{queued} }), 30, "$t: ... and 30 queued");
    ok($s[1]{batches}{queued} > 0 && $s[1]{batches}{quota_exceeded} > 0, "$t: ... the second server took its share");
    is($sum->(sub { $_[0]{budget}{unavailable} }), 0, "$t: no budget question went unanswered");
    cmp_ok($sum->(sub { $_[0]{budget}{commands} }), '<=', 90, "$t: at most one budget question per batch");

    # Later batches of a session this worker decided on ask Redis nothing.
    my $evals = calls_of('eval');
    my $pushes = 0;
    for my $seq (3 .. 12) {
        for my $session ($admitted[0], $refused[0]) {
            my $res = http_request(raw => raw_post($SITE, $session, $seq));
            $pushes++ if ($res->{status} // 0) == 202;
        }
    }
    is($pushes, 10, "$t: the admitted session goes on being accepted, the refused one refused");
    # With two workers, each may ask once for each of the two sessions.
    cmp_ok(calls_of('eval') - $evals, '<=', 4, "$t: 20 later batches, at most one question per session and worker");
    is(redis_cmd('GET', "$KEYS:admitted"), 10, "$t: the day's count stays 10");
    stop_child($second_pid);
}

# ---------------------------------------------------------------------------
# 2. Without the field: no limit, no budget question.
# ---------------------------------------------------------------------------
{
    my $t = 'no budget';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1);
    redis_cmd('CONFIG', 'RESETSTAT');
    start();
    my @answers = concurrent_requests(60, map { raw_post($SITE, "free-$_", 0) } 1 .. 40);
    is(scalar(grep { status_of($_) == 202 } @answers), 40, "$t: 40 sessions all accepted");
    is(calls_of('eval'), 0, "$t: no budget question asked");
    is(scalar @{ redis_cmd('KEYS', 'recording:budget:*') }, 0, "$t: no budget key written");
}

# ---------------------------------------------------------------------------
# 3. A budget of 0 refuses every session; a value that does not parse is no
#    budget, warned about once.
# ---------------------------------------------------------------------------
{
    my $t = 'zero and unreadable';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 0);
    redis_cmd('HSET', 'recording:site:8', 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 'lots');
    start();
    is(http_request(raw => raw_post($SITE, 'zero-1', 0))->{status}, 429, "$t: a budget of 0 refuses");
    my @ok = grep { (http_request(raw => raw_post(8, "any-$_", 0))->{status} // 0) == 202 } 1 .. 6;
    is(scalar @ok, 6, "$t: \"lots\" is no budget: every session accepted");
    my $warnings = () = error_log_text() =~ /\[warn\] .*recording: site "8": "daily_sessions" is not a whole number/g;
    cmp_ok($warnings, '>=', 1, "$t: the unreadable budget is warned about");
    cmp_ok($warnings, '<=', 2, "$t: ... once per worker, not per batch ($warnings for 6 batches, 2 workers)");
}

# ---------------------------------------------------------------------------
# 4. Fail open: Redis refuses the budget question (a user without scripting):
#    the session is admitted, counted in budget.unavailable, and asked again.
# ---------------------------------------------------------------------------
{
    my $t = 'fail open';
    redis_cmd('FLUSHALL');
    redis_cmd('ACL', 'SETUSER', 'edge', 'on', '>secret', '~*', '+@all', '-@scripting');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 1);
    my $port = redis_port();
    start(http => "recording_redis 127.0.0.1:$port user=edge password=secret;\n");
    my @statuses = map { http_request(raw => raw_post($SITE, "open-$_", 0))->{status} // 0 } 1 .. 3;
    is("@statuses", '202 202 202', "$t: three sessions over a budget of 1 all admitted");
    is(queued_elements(), 3, "$t: ... and queued");
    is(status_json()->{budget}{unavailable}, 3, "$t: budget.unavailable counts the three");
    redis_cmd('ACL', 'DELUSER', 'edge');
}

# ---------------------------------------------------------------------------
# The clock: nginx runs under libfaketime, its wall clock offset by what the
# test writes into a file (its monotonic clock, timers, is left alone). The
# offsets put nginx at chosen times of today, UTC, or of tomorrow.
# ---------------------------------------------------------------------------
my $FAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
die "libfaketime is missing: scripts/install-deps test installs it\n" unless -e $FAKETIME;
my $CLOCK = servroot() . '/faketime';

# nginx's clock at `$seconds` after today's UTC midnight (may pass 86400).
sub set_clock {
    my ($seconds) = @_;
    my $midnight = time - time % 86400;
    open my $fh, '>', "$CLOCK.new" or die "$CLOCK: $!";
    printf {$fh} "%+d\n", int($midnight + $seconds - time);
    close $fh;
    chmod 0644, "$CLOCK.new";
    rename "$CLOCK.new", $CLOCK or die "$CLOCK: $!";
}

sub start_with_clock {
    local $ENV{LD_PRELOAD} = $FAKETIME;
    local $ENV{FAKETIME_TIMESTAMP_FILE} = $CLOCK;
    local $ENV{FAKETIME_NO_CACHE} = 1;
    local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = 1;
    # nginx keeps only the environment its `env` directives name in workers.
    start(main => join '', map { "env $_;\n" } qw(LD_PRELOAD FAKETIME_TIMESTAMP_FILE FAKETIME_NO_CACHE
                                                   FAKETIME_DONT_FAKE_MONOTONIC));
}

sub admitted_of {
    my (@sessions) = @_;
    return scalar grep { (http_request(raw => raw_post($SITE, $_, 0))->{status} // 0) == 202 } @sessions;
}

# ---------------------------------------------------------------------------
# 5. Even pacing: at 06:00 a budget of 100 has admitted at most its quarter
#    and a burst of 5 (30); at 12:00 its half and the burst (55).
# ---------------------------------------------------------------------------
{
    my $t = 'pacing';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 100,
              'daily_sessions_pace', 'even');
    set_clock(6 * 3600 + 1);
    start_with_clock();
    is(admitted_of(map { "dawn-$_" } 1 .. 50), 30, "$t: at 06:00, 30 of 50 new sessions admitted (25 + 5)");
    set_clock(12 * 3600 + 1);
    is(admitted_of(map { "noon-$_" } 1 .. 40), 25, "$t: at 12:00, 25 more of 40 (55 in all)");
    is(admitted_of(map { "dawn-$_" } 31 .. 50), 0, "$t: the sessions refused at dawn stay refused");
    is(redis_cmd('GET', "$KEYS:admitted"), 55, "$t: the day's count is 55");
    is(redis_cmd('GET', "$KEYS:refused"), 35, "$t: 35 refused (20 at dawn, 15 at noon)");
}

# ---------------------------------------------------------------------------
# 6. The day's end: the budget of today is used up at 23:59:00; Retry-After
#    says the minute that is left; after midnight the same sessions start a
#    new day's count. (The minute is room for a slow machine, not a timing.)
# ---------------------------------------------------------------------------
{
    my $t = 'day boundary';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 2);
    set_clock(86400 - 60);
    start_with_clock();
    is(admitted_of('eve-a', 'eve-b'), 2, "$t: two sessions admitted at 23:59:00");
    my $res = http_request(raw => raw_post($SITE, 'eve-c', 0));
    is($res->{status}, 429, "$t: a third refused");
    my $retry = $res->{headers}{'retry-after'} // '';
    ok($retry =~ /^\d+$/ && $retry >= 1 && $retry <= 60, "$t: Retry-After is the seconds left to midnight ($retry)");
    set_clock(86400 + 5);
    is(admitted_of('eve-c', 'eve-a'), 2, "$t: after midnight the refused session and an old one are admitted");
    is(admitted_of('eve-d'), 0, "$t: ... and use up the new day's budget");
    my $tomorrow = strftime('%Y-%m-%d', gmtime(time - time % 86400 + 86400));
    is(redis_cmd('GET', "recording:budget:{$SITE}:$tomorrow:admitted"), 2, "$t: the new day counts at its own key");
    is(redis_cmd('GET', "$KEYS:admitted"), 2, "$t: today's count stays 2");
}

stop_nginx();
Test::More::done_testing();
