# Operability: recording_status (JSON and Prometheus) summed over two
# workers, the $recording_* variables in an access log, the level and
# frequency of the module's error log lines, `nginx -t` on recording_status,
# and the counters across a reload.  Every figure is asserted exactly,
# computed from what the test sent (timings excepted: of the push
# histogram, only its shape and its consistency with its sum are checked).
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use JSON::PP ();
use IO::Socket::INET ();
use File::Spec ();
use File::Path ();
use IO::Select ();
use POSIX ();

my $JSON = JSON::PP->new;
my $P = 'nginx_recording_';

# The outcomes, as the status names them (internal_error is "internal").
my @OUTCOMES = qw(queued sampled_out method_not_allowed unknown_site site_disabled
                  unsupported_encoding invalid_encoding payload_too_large invalid_json
                  invalid_session_id invalid_seq invalid_events quota_exceeded queue_unavailable internal);
# The histogram's upper bounds, in order, as both formats write them.
my @LE = qw(0.0005 0.001 0.002 0.005 0.01 0.02 0.05 0.1 0.2 0.5 1 2 +Inf);

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

my $SEQ = 0;
sub batch_json {
    my ($session, %o) = @_;
    my $seq = exists $o{seq} ? $o{seq} : $SEQ++;
    my $href = 'https://a/' . ($o{pad} // 'b');
    return qq({"session_id":"$session","seq":$seq,)
         . qq("events":[{"type":4,"timestamp":1700000000000,"data":{"href":"$href"}}]});
}

sub site_uri { return "/v1/sites/$_[0]/recordings" }

# A port with nothing listening on it.
sub closed_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1) or die "bind: $@";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub fresh_redis {
    redis_start();
    redis_cmd('FLUSHALL');
}

sub status_response {
    my (%o) = @_;
    return http_request(method => $o{method} // 'GET', uri => $o{uri} // '/status',
                        headers => $o{headers} // [], timeout => 5);
}

sub status_json {
    my $res = status_response();
    my $j = eval { $JSON->decode($res->{body} // '') };
    die "GET /status: no JSON (status " . ($res->{status} // 'none') . "): "
        . ($res->{body} // $res->{error} // '') . "\n" unless ref $j eq 'HASH';
    return $j;
}

# A number as both formats should agree on it.
sub norm {
    my ($v) = @_;
    return 'undef' unless defined $v;
    return $v unless $v =~ /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;
    my $n = 0 + $v;
    return $n == int($n) && abs($n) < 1e15 ? sprintf('%d', $n) : sprintf('%.6f', $n);
}

# The Prometheus samples the JSON document stands for: {"name{labels}" =>
# value}, and the JSON leaves no rule knows (they would have no twin).
sub prometheus_twins {
    my ($j) = @_;
    my (%p, @unknown);
    for my $k (sort keys %$j) {
        my $v = $j->{$k};
        if ($k eq 'version') {
            $p{qq(${P}build_info{version="$v"})} = 1;
        } elsif ($k eq 'batches') {
            $p{qq(${P}batches_total{outcome="$_"})} = $v->{$_} for keys %$v;
        } elsif ($k =~ /^(?:preflights|received_bytes|decoded_bytes)$/) {
            $p{"$P${k}_total"} = $v;
        } elsif ($k eq 'redis') {
            for my $r (sort keys %$v) {
                my $w = $v->{$r};
                if ($r eq 'commands') {
                    $p{qq(${P}redis_commands_total{command="$_"})} = $w->{$_} for keys %$w;
                } elsif ($r eq 'pushed_elements' || $r eq 'reconnects') {
                    $p{"${P}redis_${r}_total"} = $w;
                } elsif ($r eq 'replies') {
                    $p{qq(${P}redis_replies_total{kind="$_"})} = $w->{$_} for keys %$w;
                } elsif ($r eq 'inflight_elements') {
                    $p{"${P}redis_inflight_elements"} = $w;
                } elsif ($r eq 'servers') {
                    for my $s (keys %$w) {
                        for my $f (keys %{ $w->{$s} }) {
                            if ($f eq 'connections') {
                                $p{qq(${P}redis_connections{server="$s"})} = $w->{$s}{$f};
                            } else {
                                push @unknown, "redis.servers.$s.$f";
                            }
                        }
                    }
                } elsif ($r eq 'push_duration_seconds') {
                    for my $h (keys %$w) {
                        if ($h eq 'buckets') {
                            $p{qq(${P}redis_push_duration_seconds_bucket{le="$_"})} = $w->{$h}{$_}
                                for keys %{ $w->{$h} };
                        } elsif ($h eq 'sum' || $h eq 'count') {
                            $p{"${P}redis_push_duration_seconds_$h"} = $w->{$h};
                        } else {
                            push @unknown, "redis.push_duration_seconds.$h";
                        }
                    }
                } else {
                    push @unknown, "redis.$r";
                }
            }
        } elsif ($k eq 'pending_bytes') {
            $p{"${P}pending_bytes"} = $v;
        } elsif ($k eq 'pending_limit_refusals') {
            $p{"${P}pending_limit_refusals_total"} = $v;
        } elsif ($k eq 'spool') {
            for my $f (keys %$v) {
                if ($f eq 'bytes' || $f eq 'files') {   # gauges
                    $p{"${P}spool_$f"} = $v->{$f};
                } elsif ($f =~ /^(?:spooled_elements|replayed_elements|resent_elements|full_refusals|write_failures)$/) {
                    $p{"${P}spool_${f}_total"} = $v->{$f};
                } else {
                    push @unknown, "spool.$f";
                }
            }
        } elsif ($k eq 'site_cache') {
            for my $c (keys %$v) {
                $p{"${P}site_cache_" . ($c eq 'entries' ? $c : "${c}_total")} = $v->{$c};
            }
        } elsif ($k eq 'budget') {
            $p{"${P}budget_${_}_total"} = $v->{$_} for keys %$v;
        } elsif ($k eq 'websocket') {
            for my $c (keys %$v) {
                $p{"${P}websocket_" . ($c eq 'connections_open' ? $c : "${c}_total")} = $v->{$c};
            }
        } else {
            push @unknown, $k;
        }
    }
    $_ = norm($_) for values %p;
    return (\%p, \@unknown);
}

# Parses the text exposition format: ({"name{labels}" => value},
# {family => type}, [problems]).
sub parse_prometheus {
    my ($text) = @_;
    my (%samples, %type, %help, @problems);
    for my $line (split /\n/, $text) {
        if ($line =~ /^# HELP (\S+) \S/) {
            $help{$1} = 1;
        } elsif ($line =~ /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/) {
            push @problems, "TYPE of $1 given twice" if $type{$1};
            $type{$1} = $2;
            push @problems, "TYPE of $1 has no HELP before it" unless $help{$1};
        } elsif ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^{}]*\})? (\S+)$/) {
            my ($name, $labels, $value) = ($1, $2 // '', $3);
            push @problems, "sample $name$labels given twice" if exists $samples{"$name$labels"};
            $samples{"$name$labels"} = norm($value);
            my $family = $name;
            $family =~ s/_(?:bucket|sum|count)$// if !$type{$name};
            push @problems, "sample $name has no TYPE line before it" unless $type{$family};
            push @problems, "histogram sample $name without its family's suffix"
                if ($type{$family} // '') eq 'histogram' && $name !~ /_(?:bucket|sum|count)$/;
        } else {
            push @problems, "unparsable line: '$line'";
        }
    }
    push @problems, 'does not end with a newline' unless $text =~ /\n\z/;
    return (\%samples, \%type, \@problems);
}

# The histogram as numbers, checked for shape: cumulative counts by bound,
# +Inf equal to count, and a sum that the buckets allow (every observation
# lies in its bucket's (lower, upper] range, to the microsecond).
sub check_histogram {
    my ($t, $h, $expected_count) = @_;
    my $b = $h->{buckets};
    is_deeply([sort keys %$b], [sort @LE], "$t: histogram bounds are exactly @LE");
    my @cum = map { $b->{$_} // 0 } @LE;
    my @bad = grep { $cum[$_] < $cum[$_ - 1] } 1 .. $#cum;
    ok(!@bad, "$t: buckets are cumulative (non-decreasing): @cum");
    is($cum[-1], $h->{count}, "$t: +Inf bucket == count");
    is($h->{count}, $expected_count, "$t: count == RPUSH replies ($expected_count)");
    my ($low, $high) = (0, 0);
    for my $i (0 .. $#LE) {
        my $n = $cum[$i] - ($i ? $cum[$i - 1] : 0);
        $low  += $n * ($i ? $LE[$i - 1] : 0);
        $high += $n * ($LE[$i] eq '+Inf' ? 9e9 : $LE[$i]);
    }
    if ($expected_count) {
        cmp_ok($h->{sum}, '>', 0, "$t: sum > 0");
    } else {
        cmp_ok($h->{sum}, '==', 0, "$t: sum == 0");
    }
    ok($h->{sum} >= $low - 1e-6 && $h->{sum} <= $high + 1e-6,
       "$t: sum $h->{sum} lies within what the buckets allow [$low, $high]");
}

# ---------------------------------------------------------------------------
# 1. Two workers, a known mix of requests: exact figures in both formats.
# 5. ... and across a reload.
# ---------------------------------------------------------------------------
my $MAX_DECODED = 300;
{
    my $t = 'status';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
    redis_cmd('HSET', 'recording:site:2', 'enabled', '1', 'sample_rate', '0');
    redis_cmd('HSET', 'recording:site:3', 'enabled', '0');
    # site 4: no hash at all
    my $dead = closed_port();
    my $real_name = '127.0.0.1:' . redis_port();
    my $dead_name = "127.0.0.1:$dead";

    my %conf = (main_config => 'worker_processes 2;', config => <<"CONF" . ingest_location(<<"X"));
        location = /status { recording_status; }
        location ~ "^/dead/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis $dead_name;
            add_header X-Pid \$pid always;
        }
        location = /bad-site/recordings {
            recording_ingest;
            recording_site_id "not-a-number";
            add_header X-Pid \$pid always;
        }
CONF
            recording_max_decoded_size $MAX_DECODED;
X
    start_nginx(%conf);

    # The model: what each request must add to the figures.
    my %exp = (batches => { map { $_ => 0 } @OUTCOMES },
               preflights => 0, received_bytes => 0, decoded_bytes => 0,
               rpush => 0, hmget => 0, pushed => 0, ok => 0, error => 0, none => 0,
               hits => 0, misses => 0, entries => 0, histogram => 0);
    my (%looked_up, %real_used, %dead_used, %pushed_by, @wrong);
    my $sent = 0;

    my $lookup = sub {   # a site lookup on the real Redis by worker $pid
        my ($site, $pid) = @_;
        if ($looked_up{$site}++) {
            $exp{hits}++;
        } else {
            $exp{misses}++; $exp{hmget}++; $exp{ok}++; $exp{entries}++;
            $real_used{$pid} = 1;
        }
    };

    my $n = 0;
    my %kinds = (
        queued => sub {
            my $b = batch_json("mix-q-" . $n++);
            return (site_uri(1), $b, [], 202, 'queued', length $b, length $b, 1, 1);
        },
        queued_gzip => sub {
            my $raw = batch_json("mix-gz-" . $n++);
            my $gz = gzip_bytes($raw);
            return (site_uri(1), $gz, ['Content-Encoding' => 'gzip'], 202, 'queued',
                    length $gz, length $raw, 1, 1);
        },
        sampled_out => sub {
            my $b = batch_json("mix-s-" . $n++);
            return (site_uri(2), $b, [], 200, 'sampled_out', length $b, length $b, 2, 0);
        },
        site_disabled => sub {
            my $b = batch_json("mix-d-" . $n++);
            return (site_uri(3), $b, [], 403, 'site_disabled', length $b, length $b, 3, 0);
        },
        unknown_site => sub {    # no hash in Redis
            my $b = batch_json("mix-u-" . $n++);
            return (site_uri(4), $b, [], 404, 'unknown_site', length $b, length $b, 4, 0);
        },
        bad_site_id => sub {     # refused before the body is read
            return ('/bad-site/recordings', batch_json('mix-b'), [], 404, 'unknown_site',
                    0, 0, undef, 0);
        },
        unsupported_encoding => sub {
            my $b = batch_json('mix-br');
            return (site_uri(1), $b, ['Content-Encoding' => 'br'], 415, 'unsupported_encoding',
                    length $b, 0, undef, 0);
        },
        invalid_encoding => sub {
            my $b = 'this is not gzip';
            return (site_uri(1), $b, ['Content-Encoding' => 'gzip'], 400, 'invalid_encoding',
                    length $b, 0, undef, 0);
        },
        payload_too_large => sub {
            my $b = batch_json('mix-big', pad => 'x' x $MAX_DECODED);
            return (site_uri(1), $b, [], 413, 'payload_too_large', length $b, 0, undef, 0);
        },
        invalid_json => sub {
            my $b = '{"session_id":';
            return (site_uri(1), $b, [], 400, 'invalid_json', length $b, length $b, undef, 0);
        },
        invalid_session_id => sub {
            my $b = batch_json('bad id!');
            return (site_uri(1), $b, [], 400, 'invalid_session_id', length $b, length $b, undef, 0);
        },
        invalid_seq => sub {
            my $b = batch_json('mix-seq', seq => -1);
            return (site_uri(1), $b, [], 400, 'invalid_seq', length $b, length $b, undef, 0);
        },
        invalid_events => sub {
            my $b = '{"session_id":"mix-ev","seq":1,"events":[]}';
            return (site_uri(1), $b, [], 400, 'invalid_events', length $b, length $b, undef, 0);
        },
        queue_unavailable => sub {   # the lookup cannot reach its Redis
            my $b = batch_json("mix-dead-" . $n++);
            return ("/dead/sites/1/recordings", $b, [], 503, 'queue_unavailable',
                    length $b, length $b, 'dead', 0);
        },
    );

    my $fire = sub {
        my ($kind) = @_;
        $sent++;
        if ($kind eq 'method_not_allowed' || $kind eq 'preflight') {
            my $pre = $kind eq 'preflight';
            my $res = http_request(method => $pre ? 'OPTIONS' : 'GET', uri => site_uri(1),
                                   headers => ['Origin' => 'https://example.com'], timeout => 5);
            push @wrong, "$kind: " . ($res->{status} // 'none')
                unless ($res->{status} // 0) == ($pre ? 204 : 405);
            $pre ? $exp{preflights}++ : $exp{batches}{method_not_allowed}++;
            return $res;
        }
        my ($uri, $body, $headers, $status, $outcome, $received, $decoded, $site, $push)
            = $kinds{$kind}->();
        my $res = http_request(method => 'POST', uri => $uri, body => $body, timeout => 5,
                               headers => ['Content-Type' => 'application/json', @$headers]);
        my $pid = $res->{headers}{'x-pid'} // 'none';
        push @wrong, "$kind: got " . ($res->{status} // 'none') . ", expected $status"
            unless ($res->{status} // 0) == $status;
        $exp{batches}{$outcome}++;
        $exp{received_bytes} += $received;
        $exp{decoded_bytes} += $decoded;
        if (defined $site && $site eq 'dead') {
            $exp{misses}++; $exp{hmget}++; $exp{none}++;
            $dead_used{$pid}++;
        } elsif (defined $site) {
            $lookup->($site, $pid);
        }
        if ($push) {
            $exp{rpush}++; $exp{ok}++; $exp{pushed}++; $exp{histogram}++;
            $real_used{$pid} = 1;
            $pushed_by{$pid}++;
        }
        return $res;
    };

    # The mix; some kinds more than once (the site cache then answers).
    $fire->($_) for qw(queued queued_gzip queued sampled_out sampled_out site_disabled
                       site_disabled unknown_site unknown_site bad_site_id method_not_allowed
                       unsupported_encoding invalid_encoding payload_too_large invalid_json
                       invalid_session_id invalid_seq invalid_events queue_unavailable
                       queue_unavailable queue_unavailable preflight preflight);
    # Until both workers pushed (bounded), every request on its own connection.
    for (1 .. 300) {
        last if keys %pushed_by >= 2 && keys %dead_used >= 2;
        $fire->(keys %pushed_by >= 2 ? 'queue_unavailable' : 'queued');
    }
    ok(!@wrong, "$t: every one of the $sent requests got its expected status")
        or diag(join "\n", @wrong);
    is(scalar keys %pushed_by, 2, "$t: both workers pushed ("
       . join(', ', map { "pid $_: $pushed_by{$_}" } sort keys %pushed_by) . ')');
    my $reconnects = 0;
    $reconnects += $_ - 1 for values %dead_used;   # a worker's first attempt is no reconnect

    # --- JSON ---
    my $res = status_response();
    is($res->{status}, 200, "$t: GET /status answers 200");
    is($res->{headers}{'content-type'}, 'application/json', "$t: JSON by default");
    my $j = eval { $JSON->decode($res->{body} // '') };
    ok(ref $j eq 'HASH', "$t: the body is a JSON object") or diag($res->{body});
    $j = {} unless ref $j eq 'HASH';
    like($j->{version} // '', qr/^\d+\.\d+\.\d+/, "$t: version");
    is_deeply([sort keys %{ $j->{batches} || {} }], [sort @OUTCOMES],
              "$t: batches has one counter per outcome");
    is($j->{batches}{$_}, $exp{batches}{$_}, "$t: batches.$_ == $exp{batches}{$_}") for @OUTCOMES;
    is($j->{preflights}, $exp{preflights}, "$t: preflights");
    is($j->{received_bytes}, $exp{received_bytes}, "$t: received_bytes (sum of the bodies read)");
    is($j->{decoded_bytes}, $exp{decoded_bytes}, "$t: decoded_bytes (sum of the bodies decoded)");
    my $r = $j->{redis} || {};
    is($r->{commands}{rpush}, $exp{rpush}, "$t: redis.commands.rpush");
    is($r->{commands}{hmget}, $exp{hmget},
       "$t: redis.commands.hmget (one per site on the real Redis, one per failed lookup)");
    is($r->{pushed_elements}, $exp{pushed}, "$t: redis.pushed_elements");
    is($r->{replies}{ok}, $exp{ok}, "$t: redis.replies.ok");
    is($r->{replies}{error}, $exp{error}, "$t: redis.replies.error");
    is($r->{replies}{none}, $exp{none}, "$t: redis.replies.none (the dead server's lookups)");
    is($r->{reconnects}, $reconnects, "$t: redis.reconnects (dead server, by worker: "
       . join(', ', map { "$dead_used{$_}" } sort keys %dead_used) . ')');
    is($r->{inflight_elements}, 0, "$t: redis.inflight_elements");
    is_deeply([sort keys %{ $r->{servers} || {} }], [sort $real_name, $dead_name],
              "$t: redis.servers names both servers");
    is($r->{servers}{$real_name}{connections}, scalar keys %real_used,
       "$t: connections to the real Redis == workers that used it");
    is($r->{servers}{$dead_name}{connections}, 0, "$t: no connection to the dead server");
    check_histogram($t, $r->{push_duration_seconds} || {}, $exp{histogram});
    like($res->{body} // '', qr/"sum":\d+\.\d{6}[,}]/, "$t: histogram sum in seconds, to the microsecond");
    is($j->{site_cache}{hits}, $exp{hits}, "$t: site_cache.hits");
    is($j->{site_cache}{misses}, $exp{misses}, "$t: site_cache.misses");
    is($j->{site_cache}{entries}, $exp{entries}, "$t: site_cache.entries (sites 1-4)");
    is($j->{pending_bytes}, 0, "$t: pending_bytes: nothing held once every batch was answered");
    is($j->{pending_limit_refusals}, 0, "$t: pending_limit_refusals: the bound (64m) was never reached");
    is_deeply($j->{spool}, { map { $_ => 0 } qw(spooled_elements replayed_elements resent_elements full_refusals
                                                write_failures bytes files) },
              "$t: spool: every figure 0 without recording_spool");

    # --- Prometheus ---
    my ($twins, $unknown) = prometheus_twins($j);
    ok(!@$unknown, "$t: every JSON figure has a known Prometheus twin") or diag("@$unknown");
    my $prom = status_response(uri => '/status?format=prometheus');
    is($prom->{status}, 200, "$t: ?format=prometheus answers 200");
    is($prom->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
       "$t: ?format=prometheus: text exposition Content-Type");
    my ($samples, $types, $problems) = parse_prometheus($prom->{body} // '');
    ok(!@$problems, "$t: the exposition parses") or diag(join "\n", @$problems);
    is_deeply($samples, $twins, "$t: Prometheus samples == the JSON figures, one for one");
    my @counters = grep { $types->{$_} eq 'counter' } keys %$types;
    my @badly_named = grep { !/_total$/ } @counters;
    ok(@counters >= 10 && !@badly_named,
       "$t: every counter's name ends in _total (@{[scalar @counters]} counters)") or diag("@badly_named");
    my @not_counters = grep { /_total$/ && $types->{$_} ne 'counter' } keys %$types;
    ok(!@not_counters, "$t: no non-counter is named _total") or diag("@not_counters");
    ok(!grep({ !/^\Q$P\E/ } keys %$types), "$t: every family is prefixed $P");
    is($types->{"${P}redis_push_duration_seconds"}, 'histogram', "$t: the push duration is a histogram");
    is($types->{"${P}redis_connections"}, 'gauge', "$t: connections is a gauge");
    is($types->{"${P}site_cache_entries"}, 'gauge', "$t: site cache entries is a gauge");
    is($types->{"${P}redis_inflight_elements"}, 'gauge', "$t: in-flight elements is a gauge");
    is($types->{"${P}pending_bytes"}, 'gauge', "$t: pending bytes is a gauge");
    is($types->{"${P}spool_bytes"}, 'gauge', "$t: spool bytes is a gauge");
    is($types->{"${P}spool_files"}, 'gauge', "$t: spool files is a gauge");
    is($types->{"${P}$_"}, 'counter', "$t: $_ is a counter")
        for qw(pending_limit_refusals_total spool_spooled_elements_total spool_replayed_elements_total spool_resent_elements_total
               spool_full_refusals_total spool_write_failures_total);
    my @le = ($prom->{body} // '') =~ /^\Q${P}\Eredis_push_duration_seconds_bucket\{le="([^"]+)"\}/mg;
    is("@le", "@LE", "$t: buckets in order, +Inf last");
    like($prom->{body} // '', qr/^\Q${P}\Eredis_push_duration_seconds_sum \d+\.\d{6}$/m,
         "$t: _sum in seconds");
    like($prom->{body} // '',
         qr/_bucket\{le="\+Inf"\} \d+\n\Q${P}\Eredis_push_duration_seconds_sum \S+\n\Q${P}\Eredis_push_duration_seconds_count \d+\n/,
         "$t: _bucket, then _sum, then _count");

    my $accept = status_response(headers => ['Accept' => 'text/plain;version=0.0.4']);
    is($accept->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
       "$t: Accept: text/plain;version=0.0.4: text exposition Content-Type");
    is($accept->{body}, $prom->{body}, "$t: Accept header: the same exposition as ?format=prometheus");
    my $scraper = status_response(headers => ['Accept' => 'application/openmetrics-text;version=1.0.0,'
        . 'application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1']);
    is($scraper->{body}, $prom->{body}, "$t: Prometheus's own Accept header: the exposition");
    my $json_again = status_response(headers => ['Accept' => 'application/json']);
    is($json_again->{headers}{'content-type'}, 'application/json', "$t: Accept: application/json: JSON");
    is($json_again->{body}, $res->{body}, "$t: reading the figures changes none of them");
    is(status_response(method => 'POST')->{status}, 405, "$t: POST /status: 405");
    no_crash($t);

    # --- 5. Reload: the figures stay and keep counting ---
    # Counters (and the cache's entries) stay; the connection gauges are live.
    my ($before) = prometheus_twins($j);
    my %before = map { $_ => $before->{$_} } grep { !/redis_connections\{/ } keys %$before;
    ok(reload_nginx(), "$t: reload");
    my $gauge = sub { (status_json()->{redis}{servers}{$real_name} || {})->{connections} // -1 };
    ok(poll_until(5, sub { $gauge->() == 0 }),
       "$t: after the reload the gauge drops to the live workers' connections (none yet): " . $gauge->());
    my $after = status_json();
    my ($now) = prometheus_twins($after);
    my %now = map { $_ => $now->{$_} } grep { !/redis_connections\{/ } keys %$now;
    is_deeply(\%now, \%before, "$t: every figure survives the reload")
        or diag(join "\n", map { "$_: $before{$_} -> " . ($now{$_} // 'none') }
                           grep { ($now{$_} // '') ne $before{$_} } sort keys %before);

    my (%new_pids, $more);
    for (1 .. 300) {
        last if keys %new_pids >= 2;
        my $res = $fire->('queued');
        $more++;
        $new_pids{ $res->{headers}{'x-pid'} // 'none' }++;
    }
    ok(!@wrong, "$t: after the reload, every request got its expected status") or diag(join "\n", @wrong);
    is(scalar keys %new_pids, 2, "$t: both new workers pushed ($more batches)");
    my $s = status_json();
    is($s->{batches}{queued}, $exp{batches}{queued}, "$t: after the reload: batches.queued counts on");
    is($s->{redis}{commands}{rpush}, $exp{rpush}, "$t: after the reload: rpush");
    is($s->{redis}{commands}{hmget}, $exp{hmget}, "$t: after the reload: no new HMGET (the cache survived)");
    is($s->{redis}{pushed_elements}, $exp{pushed}, "$t: after the reload: pushed_elements");
    is($s->{redis}{replies}{ok}, $exp{ok}, "$t: after the reload: replies.ok");
    is($s->{redis}{reconnects}, $reconnects, "$t: after the reload: new workers' first connects are no reconnects");
    is($s->{received_bytes}, $exp{received_bytes}, "$t: after the reload: received_bytes");
    is($s->{decoded_bytes}, $exp{decoded_bytes}, "$t: after the reload: decoded_bytes");
    is($s->{site_cache}{hits}, $exp{hits}, "$t: after the reload: site_cache.hits");
    is($s->{site_cache}{entries}, $exp{entries}, "$t: after the reload: site_cache.entries");
    is($s->{redis}{push_duration_seconds}{count}, $exp{histogram}, "$t: after the reload: histogram count");
    is($s->{redis}{servers}{$real_name}{connections}, scalar keys %new_pids,
       "$t: after the reload: connections == the new workers connected");
    is($s->{redis}{inflight_elements}, 0, "$t: after the reload: nothing in flight");
    no_crash("$t (reload)");

    # README: the figures "carry on across nginx -s reload" -- also one that
    # resizes the site cache (its zone holds the figures).  The cache's
    # content may go; the counters may not.
    my ($counters_before) = prometheus_twins($s);
    ok(reload_nginx(%conf, http_config => 'recording_site_cache_size 2m;'),
       "$t: reload with another recording_site_cache_size");
    my ($counters_after) = prometheus_twins(status_json());
    my @lost = grep { !/redis_connections\{|site_cache_entries/
                      && ($counters_after->{$_} // 'none') ne $counters_before->{$_} } sort keys %$counters_before;
    ok(!@lost, "$t: every counter survives a reload that resizes the site cache")
        or diag(scalar(@lost) . " counters changed, e.g.:\n"
                . join "\n", map { "$_: $counters_before->{$_} -> " . ($counters_after->{$_} // 'none') }
                              @lost[0 .. ($#lost < 4 ? $#lost : 4)]);
    no_crash("$t (resize)");
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 2. The variables, in an access log.
# ---------------------------------------------------------------------------
{
    my $t = 'variables';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
    redis_cmd('HSET', 'recording:site:2', 'enabled', '1', 'sample_rate', '0');
    my $dead = closed_port();
    my $log = servroot() . '/logs/recording.log';
    unlink $log;
    start_nginx(http_config => <<"HTTP", config => <<"CONF" . ingest_location('recording_queue_shards 4;'));
    log_format recording '\$http_x_tag|\$status|\$recording_outcome|\$recording_session_id|\$recording_queue|\$recording_decoded_bytes|\$recording_redis_time';
    access_log $log recording;
HTTP
        location ~ "^/dead/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis 127.0.0.1:$dead;
        }
        location = /status { recording_status; }
CONF

    my %want;   # tag => [status, outcome, session, queue (1: a push), decoded bytes, redis time (1: a push)]
    my ($received_sum, $decoded_sum) = (0, 0);
    my $post = sub {
        my ($tag, $uri, $body, $headers, @want) = @_;
        my $res = http_request(method => 'POST', uri => $uri, body => $body, timeout => 5,
                               headers => ['X-Tag' => $tag, 'Content-Type' => 'application/json',
                                           @{ $headers || [] }]);
        $want{$tag} = [@want];
        $received_sum += length $body;
        $decoded_sum += $want[4] if $want[4] ne '-';
        return $res;
    };
    my $plain = batch_json('var-plain');
    my $gzraw = batch_json('var-gzip');
    my $sampled = batch_json('var-sampled');
    my $bad_session = batch_json('no way');
    my $bad_seq = batch_json('var-seq', seq => 1.5);
    my $deadbody = batch_json('var-dead');
    $post->('plain', site_uri(1), $plain, [], 202, 'queued', 'var-plain', 1, length $plain, 1);
    $post->('gzip', site_uri(1), gzip_bytes($gzraw), ['Content-Encoding' => 'gzip'],
            202, 'queued', 'var-gzip', 1, length $gzraw, 1);
    $post->('sampled', site_uri(2), $sampled, [], 200, 'sampled_out', 'var-sampled', 0, length $sampled, 0);
    # Bodies over client_body_buffer_size: nginx keeps them in a temporary file.
    my $big = batch_json('var-big', pad => 'x' x 40000);
    my $biggz = batch_json('var-biggz', pad => 'y' x 100000);
    $post->('big', site_uri(1), $big, [], 202, 'queued', 'var-big', 1, length $big, 1);
    $post->('biggz', site_uri(1), gzip_bytes($biggz), ['Content-Encoding' => 'gzip'],
            202, 'queued', 'var-biggz', 1, length $biggz, 1);
    $post->('badjson', site_uri(1), '{nope', [], 400, 'invalid_json', '-', 0, 5, 0);
    $post->('badsession', site_uri(1), $bad_session, [], 400, 'invalid_session_id', '-', 0,
            length $bad_session, 0);
    $post->('badseq', site_uri(1), $bad_seq, [], 400, 'invalid_seq', 'var-seq', 0, length $bad_seq, 0);
    $post->('badenc', site_uri(1), 'not gzip', ['Content-Encoding' => 'gzip'],
            400, 'invalid_encoding', '-', 0, '-', 0);
    $post->('dead', '/dead/sites/1/recordings', $deadbody, [], 503, 'queue_unavailable', 'var-dead', 0,
            length $deadbody, 0);
    http_request(method => 'OPTIONS', uri => site_uri(1), timeout => 5,
                 headers => ['X-Tag' => 'options', 'Origin' => 'https://example.com']);
    $want{options} = [204, 'preflight', '-', 0, '-', 0];
    http_request(method => 'GET', uri => site_uri(1), timeout => 5, headers => ['X-Tag' => 'get']);
    $want{get} = [405, 'method_not_allowed', '-', 0, '-', 0];

    my %line;
    poll_until(5, sub {
        open my $fh, '<', $log or return 0;
        %line = map { chomp; my @f = split /\|/, $_, -1; ($f[0] => [@f[1 .. $#f]]) } <$fh>;
        return keys %line >= keys %want;
    });
    # Where each push landed, to compare with $recording_queue.
    my %landed;
    for my $shard (0 .. 3) {
        for my $el (@{ redis_cmd('LRANGE', "recording:queue:$shard", 0, -1) }) {
            $landed{$1} = "recording:queue:$shard" if $el =~ /"session_id":"([^"]+)"/;
        }
    }
    for my $tag (sort keys %want) {
        my ($status, $outcome, $session, $push, $decoded, $timed) = @{ $want{$tag} };
        my $got = $line{$tag};
        ok($got, "$t: $tag: a log line") or next;
        my ($g_status, $g_outcome, $g_session, $g_queue, $g_decoded, $g_time) = @$got;
        is($g_status, $status, "$t: $tag: \$status");
        is($g_outcome, $outcome, "$t: $tag: \$recording_outcome");
        is($g_session, $session, "$t: $tag: \$recording_session_id");
        if ($push) {
            like($g_queue, qr/^recording:queue:[0-3]$/, "$t: $tag: \$recording_queue is a queue key");
            is($g_queue, $landed{$session} // 'not in Redis', "$t: $tag: \$recording_queue is where it landed");
            like($g_time, qr/^\d+\.\d{3}$/, "$t: $tag: \$recording_redis_time in ms, to the microsecond");
        } else {
            is($g_queue, '-', "$t: $tag: no \$recording_queue");
            is($g_time, '-', "$t: $tag: no \$recording_redis_time");
        }
        is($g_decoded, $decoded, "$t: $tag: \$recording_decoded_bytes");
    }
    my $s = status_json();
    is($s->{received_bytes}, $received_sum, "$t: received_bytes == the bodies' lengths ($received_sum)");
    is($s->{decoded_bytes}, $decoded_sum, "$t: decoded_bytes == the variable's values summed ($decoded_sum)");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3. Log levels: refusals at info; Redis failures at error once per change
#    of state, and the recovery at notice.
# ---------------------------------------------------------------------------
{
    my $t = 'log levels';
    fresh_redis();
    my $notice_log = servroot() . '/logs/notice.log';
    unlink $notice_log;
    start_nginx(http_config => <<"HTTP", config => <<'CONF' . ingest_location('add_header X-Request-Id $request_id always;'));
    error_log logs/error.log debug;
    error_log $notice_log notice;
HTTP
        location = /status { recording_status; }
CONF
    redis_stop();   # before any worker connected
    my $real = '127.0.0.1:' . redis_port();
    my $post = sub {
        my ($body) = @_;
        return http_request(method => 'POST', uri => site_uri(1), body => $body, timeout => 5,
                            headers => ['Content-Type' => 'application/json']);
    };
    my $redis_lines = sub {
        my ($from) = @_;
        return grep { /recording: redis \Q$real\E: / } split /\n/, substr(error_log_text(), $from);
    };

    # A client's mistake.
    my $res = $post->('{nope');
    is($res->{status}, 400, "$t: invalid JSON: 400");
    my $id = $res->{headers}{'x-request-id'} // 'none';
    like($id, qr/^[0-9a-f]{32}$/, "$t: \$request_id in the response");
    my @refused = grep { /batch refused: invalid_json/ } split /\n/, error_log_text();
    is(scalar @refused, 1, "$t: one 'batch refused' line") or diag(join "\n", @refused);
    like($refused[0] // '',
         qr/^\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d \[info\] \d+#\d+: \*\d+ recording: batch refused: invalid_json, site "1", session "", request "\Q$id\E"/,
         "$t: at [info], with reason, site, session and the response's request id");
    http_request(method => 'GET', uri => '/no-such-file.html', timeout => 5);
    my $notice_text = do { local (@ARGV, $/) = ($notice_log); <> } // '';
    like($notice_text, qr/\[error\].*no-such-file/, "$t: (the notice-level log gets this server's errors)");
    unlike($notice_text, qr/batch refused/, "$t: ... but not the refusal (below notice)");

    # Redis down from the start: three lookups fail.
    my @status = map { $post->(batch_json("down-$_"))->{status} // 'none' } 1 .. 3;
    is("@status", '503 503 503', "$t: Redis down: 503 for each batch");
    my @lines = $redis_lines->(0);
    is(scalar(grep { /connect failed/ } @lines), 1, "$t: 'connect failed' logged once for three batches")
        or diag(join "\n", @lines);
    like((grep { /connect failed/ } @lines)[0] // '', qr/ \[error\] /, "$t: ... at [error]");
    is(scalar(grep { /\[error\]/ } @lines), 1, "$t: and no other [error] about Redis");

    # Back: the first reply is the recovery.
    redis_start();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
    @status = map { $post->(batch_json("up-$_"))->{status} // 'none' } 1 .. 2;
    is("@status", '202 202', "$t: Redis back: 202");
    @lines = $redis_lines->(0);
    my @again = grep { /answering again/ } @lines;
    is(scalar @again, 1, "$t: 'answering again' logged once") or diag(join "\n", @lines);
    like($again[0] // '', qr/ \[notice\] /, "$t: ... at [notice]");

    my $s = status_json();
    is($s->{redis}{replies}{none}, 3, "$t: replies.none: the three failed lookups");
    is($s->{redis}{reconnects}, 3, "$t: reconnects: every attempt after the first");
    is($s->{redis}{commands}{hmget}, 4, "$t: hmget: three failed and one answered");
    is($s->{redis}{replies}{ok}, 3, "$t: replies.ok: one HMGET, two RPUSH");
    is($s->{redis}{servers}{$real}{connections}, 1, "$t: connected");

    # Lost while connected, then back.
    my $from = length error_log_text();
    redis_stop();
    poll_until(3, sub { grep { /connection lost/ } $redis_lines->($from) });
    @status = map { $post->(batch_json("lost-$_"))->{status} // 'none' } 1 .. 3;
    is("@status", '503 503 503', "$t: Redis lost: 503 for each batch (site cached)");
    @lines = $redis_lines->($from);
    is(scalar(grep { /\[error\]/ } @lines), 1, "$t: one [error] line for the loss and three failed batches")
        or diag(join "\n", @lines);
    like((grep { /\[error\]/ } @lines)[0] // '', qr/connection lost/, "$t: ... 'connection lost'");
    $s = status_json();
    is($s->{redis}{servers}{$real}{connections}, 0, "$t: connections 0 while Redis is down");
    redis_start();
    is($post->(batch_json('back'))->{status}, 202, "$t: Redis back again: 202");
    @lines = $redis_lines->($from);
    is(scalar(grep { /answering again/ } @lines), 1, "$t: 'answering again' once more")
        or diag(join "\n", @lines);
    is(scalar(grep { /\[error\]/ } @lines), 1, "$t: no new [error] on recovery");

    # An error reply (the queue is not a list): logged once, then the recovery.
    $from = length error_log_text();
    redis_cmd('SET', 'recording:queue:0', 'not a list');
    @status = map { $post->(batch_json("wrongtype-$_"))->{status} // 'none' } 1 .. 2;
    is("@status", '503 503', "$t: error replies: 503 for each batch");
    @lines = $redis_lines->($from);
    my @errors = grep { /\[error\]/ } @lines;
    is(scalar @errors, 1, "$t: one [error] line for two error replies") or diag(join "\n", @lines);
    like($errors[0] // '', qr/error reply: WRONGTYPE/, "$t: ... 'error reply: WRONGTYPE'");
    redis_cmd('DEL', 'recording:queue:0');
    is($post->(batch_json('fixed'))->{status}, 202, "$t: queue fixed: 202");
    is(scalar(grep { /answering again/ } $redis_lines->($from)), 1, "$t: 'answering again' after the error replies");

    $s = status_json();
    is($s->{batches}{queue_unavailable}, 8, "$t: batches.queue_unavailable");
    is($s->{batches}{queued}, 4, "$t: batches.queued");
    is($s->{batches}{invalid_json}, 1, "$t: batches.invalid_json");
    is($s->{redis}{commands}{rpush}, 9, "$t: rpush: 3 unanswered, 2 error replies, 4 acknowledged");
    is($s->{redis}{commands}{hmget}, 4, "$t: hmget: no more lookups (cached)");
    is($s->{redis}{replies}{none}, 6, "$t: replies.none: three lookups and three pushes");
    is($s->{redis}{replies}{ok}, 5, "$t: replies.ok: one HMGET and four RPUSH");
    is($s->{redis}{replies}{error}, 2, "$t: replies.error");
    is($s->{redis}{reconnects}, 7, "$t: reconnects");
    is($s->{redis}{pushed_elements}, 4, "$t: pushed_elements");
    check_histogram($t, $s->{redis}{push_duration_seconds}, 6);   # RPUSH replies: 4 ok + 2 error
    is($s->{redis}{inflight_elements}, 0, "$t: nothing in flight");
    is($s->{redis}{servers}{$real}{connections}, 1, "$t: connected again");
    is($s->{site_cache}{misses}, 4, "$t: site_cache.misses");
    is($s->{site_cache}{hits}, 8, "$t: site_cache.hits");
    is($s->{site_cache}{entries}, 1, "$t: site_cache.entries");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

# ---------------------------------------------------------------------------
# 3b. A server that accepts and never answers: "no reply in time" once.
# ---------------------------------------------------------------------------
{
    my $t = 'no reply';
    my ($port, $child) = start_silent_server();
    my $name = "127.0.0.1:$port";
    start_nginx(no_default_redis => 1, config => <<"CONF" . ingest_location(<<"X"));
        location = /status { recording_status; }
CONF
            recording_redis $name;
            recording_redis_read_timeout 300ms;
X
    # The read timeout (300ms) is the only thing that can answer the first
    # batch (the server accepts, so no connect timeout): the hang guard (15s)
    # would end the request, with no status, if it did not fire.  Which path
    # answered is shown by the log and the counters below, not by the clock.
    my @status;
    for my $n (1 .. 2) {
        push @status, http_request(method => 'POST', uri => site_uri(1), body => batch_json("silent-$n"),
                                   timeout => 15)->{status} // 'none';
    }
    is("@status", '503 503', "$t: 503 for each batch");
    # The first: answered by the read timeout ("no reply in time",
    # replies.none 1).  The server timed out: for RedisClient::kRetryInterval
    # batches are refused at once, without a new connection or command
    # (hmget 1, reconnects 0): the second never waited for a reply.
    my @lines = grep { /recording: redis \Q$name\E: / } split /\n/, error_log_text();
    is(scalar @lines, 1, "$t: one line about the server") or diag(join "\n", @lines);
    like($lines[0] // '', qr/ \[error\] .*no reply in time/, "$t: ... '[error] ... no reply in time'");
    my $s = status_json();
    is($s->{redis}{commands}{hmget}, 1, "$t: hmget: only the first batch's");
    is($s->{redis}{replies}{none}, 1, "$t: replies.none: it timed out");
    is($s->{redis}{replies}{ok} + $s->{redis}{replies}{error}, 0, "$t: no other reply");
    is($s->{redis}{reconnects}, 0, "$t: reconnects: none within the retry interval");
    is($s->{redis}{servers}{$name}{connections}, 0, "$t: the connection was dropped");
    is($s->{batches}{queue_unavailable}, 2, "$t: batches.queue_unavailable");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($child);
}

# ---------------------------------------------------------------------------
# 3c. The memory bound: pending_bytes while a batch waits for Redis, and
#     pending_limit_refusals when the next one would pass the bound.
# ---------------------------------------------------------------------------

# Takes one complete RESP command off the front of $$buf: its arguments, or
# nothing while it is incomplete.
sub take_resp_command {
    my ($buf) = @_;
    return unless $$buf =~ /\A\*(\d+)\r\n/;
    my ($n, $pos, @args) = ($1, length("*$1\r\n"));
    for (1 .. $n) {
        return unless substr($$buf, $pos, 32) =~ /\A\$(\d+)\r\n/;
        my ($len, $head) = ($1, length("\$$1\r\n"));
        return if length($$buf) < $pos + $head + $len + 2;
        push @args, substr($$buf, $pos + $head, $len);
        $pos += $head + $len + 2;
    }
    substr($$buf, 0, $pos, '');
    return \@args;
}

{
    my $t = 'pending';
    # A Redis that answers site lookups (enabled, rate 1) and takes RPUSH
    # without ever acknowledging them; it notes each element's length.
    my $pushed_log = servroot() . '/logs/fake-rpush.log';
    unlink $pushed_log;
    my ($port, $child) = start_server(sub {
        my ($listener, $alive) = @_;
        my $sel = IO::Select->new($listener);
        my %buf;
        while ($alive->()) {
            for my $fh ($sel->can_read(0.1)) {
                if ($fh == $listener) {
                    my $c = $listener->accept or next;
                    $sel->add($c);
                    $buf{"$c"} = '';
                    next;
                }
                if (!sysread($fh, $buf{"$fh"}, 65536, length $buf{"$fh"})) {
                    $sel->remove($fh);
                    close $fh;
                    next;
                }
                while (my $cmd = take_resp_command(\$buf{"$fh"})) {
                    my $name = uc $cmd->[0];
                    if ($name eq 'HMGET') {
                        syswrite($fh, "*2\r\n\$1\r\n1\r\n\$1\r\n1\r\n");
                    } elsif ($name eq 'RPUSH') {
                        open my $log, '>>', $pushed_log or die "$pushed_log: $!";
                        print {$log} length($_), "\n" for @$cmd[2 .. $#$cmd];
                        close $log;
                    } else {
                        syswrite($fh, "+OK\r\n");
                    }
                }
            }
        }
    });
    start_nginx(no_default_redis => 1, http_config => 'recording_pending_limit 64k;',
                config => <<"CONF" . ingest_location(<<"X"));
        location = /status { recording_status; }
CONF
            recording_redis 127.0.0.1:$port;
            recording_redis_read_timeout 15s;
X
    my $s = status_json();
    is($s->{pending_bytes}, 0, "$t: idle: pending_bytes 0");

    # A: about 40 KB, held (gathered, then in flight) until the read timeout.
    my $a = batch_json('pending-a', pad => 'a' x 40000);
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(), Proto => 'tcp',
                                     Timeout => 3) or die "connect: $@";
    print {$sock} "POST " . site_uri(1) . " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "Content-Type: application/json\r\nContent-Length: " . length($a) . "\r\n\r\n$a";
    my $pushed = sub {   # the lengths noted, or (in scalar context) how many
        my @lengths;
        if (open my $fh, '<', $pushed_log) { @lengths = map { chomp; $_ } <$fh> }
        return @lengths;
    };
    ok(poll_until(3, sub { $pushed->() == 1 }), "$t: the fake Redis got A's RPUSH");
    my ($len) = $pushed->();
    # What a worker holds for an element: its bulk string, "$<len>\r\n<element>\r\n".
    my $held = length("\$$len\r\n") + ($len // 0) + 2;
    $s = status_json();
    is($s->{pending_bytes}, $held, "$t: while A waits: pending_bytes == its RPUSH bulk ($held)");
    is($s->{redis}{inflight_elements}, 1, "$t: ... and it is in flight");
    my ($twins) = prometheus_twins($s);
    my ($samples) = parse_prometheus(status_response(uri => '/status?format=prometheus')->{body} // '');
    is_deeply($samples, $twins, "$t: Prometheus samples == the JSON figures while A waits");
    is($samples->{"${P}pending_bytes"}, $held, "$t: ... ${P}pending_bytes == $held");

    # B: as big again, over 64k with A: refused at once, not after A's read
    # timeout (15s): its hang guard (10s) is shorter, so a B that waited for
    # A would get no status.  And A is still waiting when B has its answer:
    # no "no reply in time" yet, A's bytes still held, A's socket unanswered.
    my $res = http_request(method => 'POST', uri => site_uri(1), body => batch_json('pending-b', pad => 'b' x 40000),
                           timeout => 10);
    is(($res->{status} // 'none') . ' ' . ($res->{body} // ''), '503 {"error":"queue_unavailable"}',
       "$t: B, over the bound: 503");
    unlike(error_log_text(), qr/no reply in time/, "$t: ... while A still waits for its reply (not after A's timeout)");
    ok(!IO::Select->new($sock)->can_read(0), "$t: ... A is not answered yet");
    $s = status_json();
    is($s->{pending_limit_refusals}, 1, "$t: pending_limit_refusals: B");
    is($s->{pending_bytes}, $held, "$t: pending_bytes: still A's only (A not yet timed out)");
    is($s->{batches}{queue_unavailable}, 1, "$t: batches.queue_unavailable: B");
    is(scalar($pushed->()), 1, "$t: B never reached Redis");
    ($twins) = prometheus_twins($s);
    ($samples) = parse_prometheus(status_response(uri => '/status?format=prometheus')->{body} // '');
    is($samples->{"${P}pending_limit_refusals_total"}, 1, "$t: ${P}pending_limit_refusals_total 1");

    # A's read timeout: it is answered, and lets go of its bytes.
    my $answer = '';
    my $sel = IO::Select->new($sock);
    while ($sel->can_read(60)) {   # a hang guard: A's read timeout is 15s
        last unless sysread($sock, $answer, 65536, length $answer);
    }
    close $sock;
    like($answer, qr{\AHTTP/1\.1 503 }, "$t: A: 503 after the read timeout");
    like(error_log_text(), qr/\[error\] .*recording: redis 127\.0\.0\.1:$port: no reply in time/,
         "$t: ... the read timeout answered it ('no reply in time')");
    $s = status_json();
    is($s->{pending_bytes}, 0, "$t: A answered: pending_bytes back to 0");
    is($s->{redis}{inflight_elements}, 0, "$t: ... nothing in flight");
    is($s->{pending_limit_refusals}, 1, "$t: pending_limit_refusals stays 1");
    is_deeply($s->{spool}, { map { $_ => 0 } qw(spooled_elements replayed_elements resent_elements full_refusals
                                                write_failures bytes files) },
              "$t: spool: every figure 0 without recording_spool");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($child);
}

# ---------------------------------------------------------------------------
# 3d. The spool: batches spooled while Redis is down, its size and files as
#     a worker saw them, the replay once Redis is back, and max_size.
# ---------------------------------------------------------------------------
{
    my $t = 'spool';
    fresh_redis();
    redis_cmd('HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
    my $dir = servroot() . '/spool';
    File::Path::make_path($dir);
    unlink glob("$dir/*");
    start_nginx(http_config => <<"HTTP", config => <<'CONF' . ingest_location());
    recording_spool $dir max_size=1m;
    recording_max_decoded_size 1m;
    client_max_body_size 2m;
HTTP
        location = /status { recording_status; }
CONF
    # The spool's timers have `data`: nginx's debug logging of timers reads
    # a connection through it (ngx_event_ident), and every test here logs
    # at debug level.
    select undef, undef, undef, 0.5;
    my $crashing = grep { /exited on signal/ } crash_lines();
    ok(!$crashing, "$t: workers stay up with recording_spool and a debug error_log")
        or diag(join "\n", (crash_lines())[0 .. 1]);
    SKIP: {
        skip "$t: the workers die at start", 25 if $crashing;
        my $post = sub { http_request(method => 'POST', uri => site_uri(1), body => $_[0], timeout => 5) };
        my $answer = sub { my $r = shift; ($r->{status} // 'none') . ' ' . ($r->{body} // '') };
        # The spool directory as the figures should show it: files and bytes.
        my $on_disk = sub {
            my @files = glob("$dir/*.spool");
            my $bytes = 0;
            $bytes += -s $_ for @files;
            return (scalar @files, $bytes);
        };
        my $zeros = { map { $_ => 0 } qw(spooled_elements replayed_elements resent_elements full_refusals write_failures bytes files) };

        is($answer->($post->(batch_json('spool-0'))), '202 {"status":"queued"}', "$t: Redis up: 202");
        is_deeply(status_json()->{spool}, $zeros, "$t: Redis up: nothing spooled");

        redis_stop();
        my @answers = map { $answer->($post->(batch_json("spool-$_"))) } 1 .. 3;
        is("@answers", join(' ', ('202 {"status":"queued"}') x 3), "$t: Redis down: three batches spooled, 202");
        my $s = status_json();
        is($s->{spool}{spooled_elements}, 3, "$t: spool.spooled_elements 3");
        is($s->{spool}{replayed_elements}, 0, "$t: spool.replayed_elements 0");
        is($s->{pending_bytes}, 0, "$t: pending_bytes 0: the spool holds them, not memory");
        my ($files, $bytes) = $on_disk->();
        ok($files >= 1 && $bytes > 3 * length batch_json('spool-x'), "$t: the directory holds them ($files files, $bytes bytes)");
        # Seen by a worker's scan (every second).
        ok(poll_until(4, sub { my $x = status_json()->{spool}; $x->{files} == $files && $x->{bytes} == $bytes }),
           "$t: spool.files and spool.bytes == the directory ($files, $bytes)")
            or diag(explain(status_json()->{spool}));
        $s = status_json();
        my ($twins) = prometheus_twins($s);
        my ($samples) = parse_prometheus(status_response(uri => '/status?format=prometheus')->{body} // '');
        is_deeply($samples, $twins, "$t: Prometheus samples == the JSON figures with records spooled");
        is($samples->{"${P}spool_bytes"}, $bytes, "$t: ${P}spool_bytes $bytes");
        is($samples->{"${P}spool_spooled_elements_total"}, 3, "$t: ${P}spool_spooled_elements_total 3");

        # Redis back: replayed into the queue, and the directory empties.
        redis_start();
        ok(poll_until(5, sub { (redis_cmd('LLEN', 'recording:queue:0') // 0) == 3 }), "$t: Redis back: the three replayed");
        ok(poll_until(5, sub { my $x = status_json()->{spool}; $x->{files} == 0 && $x->{bytes} == 0 }),
           "$t: spool.files and spool.bytes back to 0") or diag(explain(status_json()->{spool}));
        $s = status_json();
        is($s->{spool}{replayed_elements}, 3, "$t: spool.replayed_elements 3");
        is($s->{spool}{spooled_elements}, 3, "$t: spool.spooled_elements stays 3");
        is(($on_disk->())[0], 0, "$t: the directory is empty");

        # max_size=1m: one batch of 600 KB fits, a second does not.
        redis_stop();
        my $big = sub { batch_json("spool-big-$_[0]", pad => 'z' x 600000) };
        is($answer->($post->($big->(1))), '202 {"status":"queued"}', "$t: Redis down: a 600 KB batch spooled");
        my $res = $post->($big->(2));
        is($answer->($res), '503 {"error":"queue_unavailable"}', "$t: a second one passes max_size: 503");
        $s = status_json();
        is($s->{spool}{full_refusals}, 1, "$t: spool.full_refusals 1 (one element refused)");
        is($s->{spool}{spooled_elements}, 4, "$t: spool.spooled_elements 4");
        is($s->{spool}{write_failures}, 0, "$t: spool.write_failures 0");
        ($twins) = prometheus_twins($s);
        ($samples) = parse_prometheus(status_response(uri => '/status?format=prometheus')->{body} // '');
        is_deeply($samples, $twins, "$t: Prometheus samples == the JSON figures with the spool full");
        like(error_log_text(), qr/\[error\] .*recording: spool: full \(max_size=1048576\)/, "$t: 'spool: full' logged");
        no_crash($t);
        ok(stop_nginx(), "$t: nginx stops gracefully");
    }
    if ($crashing) {   # in valgrind mode, a test of that run (the same bug), made in the harness
        my $tb = Test::More->builder;
        $tb->todo_start('known bug: the spool scan timer has no data (ngx_event_ident in debug logging)');
        stop_nginx();
        $tb->todo_end;
    }
    unlink glob("$dir/*");
    redis_start();
}

# ---------------------------------------------------------------------------
# 4. nginx -t on recording_status.
# ---------------------------------------------------------------------------
{
    my $t = 'nginx -t';
    # As the harness: the module it loads, or the repository's build.
    my $repo = File::Spec->catdir((File::Spec->splitpath(File::Spec->rel2abs(__FILE__)))[1], '..');
    my $module = exists $ENV{TEST_NGINX_MODULE} ? $ENV{TEST_NGINX_MODULE}
                                                : "$repo/build/ngx_http_recording_module.so";
    my $nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    my $root = servroot();
    my $port = closed_port();
    my $check = sub {
        my ($name, $server) = @_;
        my $conf = "$root/conf/t-$name.conf";
        open my $fh, '>', $conf or die "$conf: $!";
        print {$fh} ($module eq '' ? '' : 'load_module ' . File::Spec->rel2abs($module) . ";\n")
          . "error_log logs/t-$name.log;\npid logs/t-$name.pid;\nevents { }\n"
          . "http {\n    server {\n        listen 127.0.0.1:$port;\n$server\n    }\n}\n";
        close $fh;
        my $out = `'$nginx' -t -p '$root/' -c '$conf' -e 'logs/t-$name.log' 2>&1`;
        return ($? >> 8, $out, $conf);
    };

    my ($rc, $out, $conf) = $check->('good', '        location = /status { recording_status; }');
    is($rc, 0, "$t: recording_status; in a location is accepted") or diag($out);

    ($rc, $out, $conf) = $check->('arg', '        location = /status { recording_status on; }');
    isnt($rc, 0, "$t: recording_status on; is rejected");
    like($out, qr/\[emerg\] invalid number of arguments in "recording_status" directive in \Q$conf\E:\d+/,
         "$t: ... 'invalid number of arguments', naming the directive and the line");

    ($rc, $out, $conf) = $check->('server', '        recording_status;');
    isnt($rc, 0, "$t: recording_status; at server level is rejected");
    like($out, qr/\[emerg\] "recording_status" directive is not allowed here in \Q$conf\E:\d+/,
         "$t: ... 'not allowed here'");

    ($rc, $out, $conf) = $check->('twice', '        location = /status { recording_status; recording_status; }');
    isnt($rc, 0, "$t: recording_status twice in a location is rejected");
    like($out, qr/\[emerg\] "recording_status" directive is duplicate in \Q$conf\E:\d+/,
         "$t: ... 'is duplicate'");
}

Test::More::done_testing();
