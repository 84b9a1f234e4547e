# Daily session budgets (the site hash's daily_sessions): exactly that many
# sessions recorded whole per UTC day across the workers, every batch of any
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
my $KEYS = "recording:budget:{$SITE:$TODAY}";

sub start {
    my (%o) = @_;
    start_nginx(error_log_level => 'info', main_config => 'worker_processes 2;',
                http_config => $o{http} // '', no_default_redis => $o{http} ? 1 : 0,
                config => "location = /status { recording_status; }\n" . ingest_location());
}

redis_start();

# ---------------------------------------------------------------------------
# 1. 30 new sessions, three batches each, all at once over 90 connections,
#    two workers: exactly 10 sessions recorded whole, the others refused on
#    every batch.
# ---------------------------------------------------------------------------
{
    my $t = 'budget of 10';
    redis_cmd('FLUSHALL');
    redis_cmd('HSET', "recording:site:$SITE", 'enabled', 1, 'sample_rate', 1, 'daily_sessions', 10);
    start();
    my @sessions = map { sprintf('budget-%02d', $_) } 1 .. 30;
    my @requests;
    for my $seq (0 .. 2) {
        push @requests, map { raw_post($SITE, $_, $seq) } @sessions;
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

    my $s = status_json();
    is($s->{batches}{quota_exceeded}, 60, "$t: the status counts 60 batches quota_exceeded");
    is($s->{batches}{queued}, 30, "$t: ... and 30 queued");
    is($s->{budget}{unavailable}, 0, "$t: no budget question went unanswered");
    cmp_ok($s->{budget}{commands}, '<=', 90, "$t: at most one budget question per batch");

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

stop_nginx();
Test::More::done_testing();
