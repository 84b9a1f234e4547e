# WebSocket ingestion (`recording_websocket on;` in a recording_ingest
# location): one batch per client message, one acknowledgement per message,
# over a connection that stays open. What is checked, by section:
#    0. the client of Test::Nginx::WebSocket on its own (no nginx): RFC 6455
#       example vectors;
#    1. the handshake: 101 with Sec-WebSocket-Accept; 400 for a bad or
#       missing key, 426 for another version, 405 without the directive,
#       404 unknown site, 403 disabled site (no upgrade);
#    2. text messages: acks n=1, 2, 3 in order, the element in Redis is the
#       client's bytes plus `_ingest` (request_id: the upgrade's id + "-N");
#    3. binary messages, gzip and zlib;
#    4. a message in three fragments with a ping and a pong between;
#    5. bad messages get their error and the connection stays open;
#    6. sampling: sampled_out;
#    7. protocol violations close with 1002 or 1009, each on its own
#       connection; nginx serves new ones after each;
#    8. a binary message inflating over recording_max_decoded_size;
#    9. a client close: echoed, then the TCP close;
#   10. recording_websocket_idle_timeout;
#   11. Redis down without a spool: queue_unavailable, and back;
#   12. nginx -s quit with an open connection: acks first, then close 1001;
#   13. recording_status: websocket.connections_open, connections, messages,
#       and the batches figures;
#   14. nginx -t.
# No assertion is on time: timeouts in the configuration are short and the
# client's are generous hang guards; what is checked is what came, in which
# order.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::WebSocket;
use JSON::PP ();
use POSIX ();
use Socket ();
use Time::HiRes qw(time sleep);

plan('no_plan');

$SIG{PIPE} = 'IGNORE';
my $JSON = JSON::PP->new->canonical;
my $QUEUE = 'recording:queue:0';   # shards default to 1
my $GUARD = 15;                     # seconds: hang guard of every read

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# A section runs on even when one before it died (a harness or setup
# failure is one failed test, with the reason).
sub section {
    my ($name, $code) = @_;
    Test::More::note("--- $name");
    return if eval { $code->(); 1 };
    my $err = $@;
    fail("$name: died");
    diag($err);
    eval { stop_nginx() };
}

sub uri { my ($site, $prefix) = @_; return ($prefix // '') . "/v1/sites/$site/recordings" }

# The endpoint under $prefix; the upgrade's $request_id in X-Request-Id.
sub loc {
    my ($prefix, $extra) = @_;
    $extra //= '';
    return <<"CONF";
        location ~ "^$prefix/v1/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            add_header X-Request-Id \$request_id always;
            $extra
        }
CONF
}

my $STATUS_LOC = "        location = /status { recording_status; }\n";

# The WebSocket endpoint (and /status, and /plain without the directive).
sub ws_config {
    my ($extra) = @_;
    return loc('', "recording_websocket on;\n            " . ($extra // ''))
         . loc('/plain', '') . $STATUS_LOC;
}

# Sites: 1 records, 2 is unknown, 3 is disabled, 4 samples everything out.
sub setup_sites {
    redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1);
    redis_cmd('HSET', 'recording:site:3', 'enabled', 0, 'sample_rate', 1);
    redis_cmd('HSET', 'recording:site:4', 'enabled', 1, 'sample_rate', 0);
}

# A fresh Redis database with the sites, and nginx with $extra in the
# WebSocket location.
sub start_ws {
    my (%o) = @_;
    redis_start();
    redis_cmd('FLUSHALL');
    setup_sites();
    start_nginx(config => ws_config($o{extra}), http_config => $o{http} // '',
                main_config => $o{main} // '');
}

sub batch {
    my ($session, $seq, $data) = @_;
    return qq({"session_id":"$session","seq":) . ($seq // 0)
         . qq(,"events":[{"type":3,"timestamp":1700000000000,"data":) . ($data // '{}') . '}]}';
}

# A valid batch of exactly $size bytes (padding in the event's data).
sub batch_of_size {
    my ($session, $size) = @_;
    my $base = length batch($session, 0, '{"pad":""}');
    die "batch_of_size: $size is too small\n" if $size < $base;
    return batch($session, 0, '{"pad":"' . ('p' x ($size - $base)) . '"}');
}

sub queued { return qq({"n":$_[0],"status":"queued"}) }
sub refused { return qq({"n":$_[0],"error":"$_[1]"}) }

# An upgraded connection to site $site's endpoint: one test (101 and the
# right Sec-WebSocket-Accept).
sub open_ws {
    my ($t, $site, %o) = @_;
    my $ws = ws_connect(uri => uri($site // 1), timeout => $GUARD,
                        headers => ['User-Agent' => 'ws-test/1'], %o);
    ok(($ws->{status} // 0) == 101 && $ws->{accept_ok}, "$t: upgraded (101, Sec-WebSocket-Accept right)")
        or diag('status ' . ($ws->{status} // 'none') . ', error ' . ($ws->{error} // 'none')
                . ', header: ' . ($ws->{head} // '') . ($ws->{body} // ''));
    return $ws;
}

# The next message, as text for comparisons: a text message's payload, or
# what came instead ("binary: ...", "close CODE", "none (why)").
sub next_text {
    my ($ws) = @_;
    my $m = ws_read_message($ws, timeout => $GUARD);
    return 'none (' . ($ws->{error} // ($ws->{eof} ? 'EOF' : 'nothing')) . ')' unless $m;
    return 'close ' . ($m->{code} // '(no code)') if $m->{opcode} == 8;
    return "binary: $m->{payload}" if $m->{opcode} == 2;
    return "error: $m->{error}" if $m->{error};
    return "masked: $m->{payload}" if $m->{masked};
    return $m->{payload};
}

# One test: a ping gets its pong (the connection is open and answering);
# any data message before the pong fails it.
my $PING = 0;
sub still_open {
    my ($ws, $t) = @_;
    my $payload = 'still-open-' . ++$PING;
    my @seen;
    if (ws_send_ping($ws, $payload)) {
        while (my $f = ws_read_frame($ws, timeout => $GUARD)) {
            push @seen, "opcode $f->{opcode}: $f->{payload}";
            last if $f->{opcode} == 10 || $f->{opcode} == 8 || $f->{opcode} < 8;
        }
    }
    is($seen[-1] // 'nothing (' . ($ws->{error} // 'EOF') . ')', "opcode 10: $payload",
       "$t: the connection is still open (ping answered by its pong)") or diag(join "\n", @seen);
}

# Tests: the next frames end in a close frame with $code (nothing else
# before it unless $o{frames_ok}); the close is answered (as a client does)
# and the server closes TCP.
sub expect_close {
    my ($ws, $code, $t, %o) = @_;
    my $end = ws_read_until_close($ws, timeout => $GUARD, eof => 0);
    my $got = $end->{close};
    is(defined $got ? ($got->{code} // '(no code)') : 'no close frame (' . ($end->{error} // 'EOF') . ')',
       $code, "$t: close frame with code $code");
    unless ($o{frames_ok}) {
        is(scalar @{ $end->{frames} }, 0, "$t: ... and no other frame before it")
            or diag(join "\n", map { "opcode $_->{opcode}: $_->{payload}" } @{ $end->{frames} });
    }
    ok(!$got || !$got->{masked}, "$t: the server's close frame is not masked") if $got;
    ws_close($ws, code => $code) if $got && !$o{no_reply};
    ok(ws_wait_eof($ws, timeout => $GUARD), "$t: then the server closes the connection");
    ws_disconnect($ws);
    return $end;
}

sub elements { return @{ redis_cmd('LRANGE', $QUEUE, 0, -1) } }

# Tests: $el is $doc's bytes with only `,"_ingest":{...}` before the last
# brace; returns the _ingest object (decoded) and its raw text.
sub element_is {
    my ($el, $doc, $t) = @_;
    if (!defined $el) {
        fail("$t: the element is in Redis");
        return ({}, '');
    }
    my $head = substr($doc, 0, -1);
    my $ok = substr($el, 0, length $head) eq $head
          && substr($el, length $head) =~ /\A(,"_ingest":(\{[^{}]*\}))\}\z/;
    ok($ok, "$t: the element is the client's bytes followed by _ingest")
        or diag("element:  $el\nclient's: $doc");
    my $raw = $ok ? $2 : '';
    my $ing = eval { $JSON->decode($raw) } || {};
    return ($ing, $raw);
}

# Tests on _ingest: its six fields, site_id, ip, user_agent, country and
# request_id "<the upgrade's id>-$n".
sub ingest_ok {
    my ($ing, $raw, $n, $rid, $t, %o) = @_;
    is(join(',', sort keys %$ing), 'country,ip,received_at,request_id,site_id,user_agent',
       "$t: _ingest has the six fields") or diag($raw);
    my $site = $o{site} // 1;
    like($raw, qr/"site_id":$site(?:,|\})/, "$t: site_id is the site as an integer");
    like($raw, qr/"received_at":\d{13}(?:,|\})/, "$t: received_at is an integer of milliseconds");
    is($ing->{ip}, '127.0.0.1', "$t: ip");
    is($ing->{user_agent}, 'ws-test/1', "$t: user_agent is the upgrade request's");
    ok(exists $ing->{country} && !defined $ing->{country}, "$t: country null");
    if (defined $rid && length $rid) {
        is($ing->{request_id}, "$rid-$n", "$t: request_id is the upgrade's id (X-Request-Id) followed by -$n");
    } else {
        like($ing->{request_id} // '', qr/\A[0-9a-f]{32}-$n\z/,
             "$t: request_id is a request id followed by -$n (the 101 carried no X-Request-Id)");
    }
}

sub received_at { my ($raw) = @_; return $raw =~ /"received_at":(\d+)/ ? $1 : undef }

sub status_json {
    my $res = http_request(method => 'GET', uri => '/status', timeout => $GUARD);
    my $j = eval { $JSON->decode($res->{body} // '') };
    die "GET /status: no JSON (status " . ($res->{status} // 'none') . "): "
        . ($res->{body} // $res->{error} // '') . "\n" unless ref $j eq 'HASH';
    return $j;
}

sub ws_figures { my $w = status_json()->{websocket}; return ref $w eq 'HASH' ? $w : {} }

# Runs $code in a child process (it shares the parent's sockets) while the
# parent goes on; the returned sub waits for its result (a hash).
sub in_child {
    my ($code) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        alarm 120;   # nothing outlives the test
        my $res = eval { $code->() } || { died => "$@" };
        print {$w} JSON::PP->new->encode($res);
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    track_child($pid);
    return sub {
        local $/;
        my $out = <$r>;
        close $r;
        stop_child($pid);
        return eval { JSON::PP->new->decode($out // '') } || { died => "no result from the child: " . ($out // '') };
    };
}

# In a child: every frame up to the close (answered with the same code),
# then whether TCP closed.
sub read_to_end_in_child {
    my ($ws) = @_;
    return in_child(sub {
        my $end = ws_read_until_close($ws, timeout => $GUARD, eof => 0);
        my %r = (frames => [map { { opcode => $_->{opcode}, payload => $_->{payload} } } @{ $end->{frames} }],
                 close => $end->{close} ? $end->{close}{code} // 'none' : undef,
                 error => $end->{error});
        ws_close($ws, code => $end->{close}{code}) if $end->{close} && defined $end->{close}{code};
        $r{eof} = ws_wait_eof($ws, timeout => $GUARD);
        return \%r;
    });
}


# ---------------------------------------------------------------------------
# 0. The client on its own: RFC 6455's examples.
# ---------------------------------------------------------------------------
section('0. client', sub {
    my $t = '0. client';
    is(ws_accept_key('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=',
       "$t: Sec-WebSocket-Accept of RFC 6455's example key");
    is(unpack('H*', ws_encode_frame(payload => 'Hello', mask => 0)), '810548656c6c6f',
       "$t: an unmasked text frame 'Hello'");
    is(unpack('H*', ws_encode_frame(payload => 'Hello', mask_key => "\x37\xfa\x21\x3d")),
       '818537fa213d7f9f4d5158', "$t: a masked text frame 'Hello'");
    is(unpack('H*', substr(ws_encode_frame(opcode => 2, payload => 'x' x 256, mask => 0), 0, 4)),
       '827e0100', "$t: a 256-byte binary frame's header (16-bit length)");
    is(unpack('H*', substr(ws_encode_frame(opcode => 2, payload => 'x' x 65536, mask => 0), 0, 10)),
       '827f0000000000010000', "$t: a 64 KiB binary frame's header (64-bit length)");
    is(unpack('H*', ws_encode_frame(opcode => 2, length => 9223372036854775807, payload => '', mask_key => "\0\0\0\0")),
       '82ff7fffffffffffffff00000000', "$t: a fake 2^63-1 length, masked, no payload");
    my $buf = ws_encode_frame(payload => 'Hello', mask_key => "\x37\xfa\x21\x3d") . "\x88\x02\x03\xe8";
    my $f = ws_parse_frame(\$buf);
    is($f->{payload}, 'Hello', "$t: a masked frame parses back");
    $f = ws_parse_frame(\$buf);
    is($f->{code}, 1000, "$t: a close frame's code");
    is($buf, '', "$t: both frames taken off the buffer");
});

# ---------------------------------------------------------------------------
# 1. The handshake.
# ---------------------------------------------------------------------------
section('1. handshake', sub {
    my $t = '1. handshake';
    start_ws();

    my $ws = ws_connect(uri => uri(1), timeout => $GUARD);
    is($ws->{status}, 101, "$t: 101 Switching Protocols") or diag($ws->{head} // $ws->{error});
    is($ws->{headers}{upgrade}, 'websocket', "$t: Upgrade: websocket");
    is(lc($ws->{headers}{connection} // ''), 'upgrade', "$t: Connection: upgrade");
    is($ws->{headers}{'sec-websocket-accept'}, $ws->{expected_accept},
       "$t: Sec-WebSocket-Accept is base64(SHA1(key . GUID))");
    is($ws->{leftover} // '', '', "$t: nothing sent before the client's first message");
    if ($ws->{sock}) {
        ws_close($ws, code => 1000);
        expect_close($ws, 1000, "$t: the upgraded connection, closed by the client");
    }

    my $refused = sub {
        my ($what, $status, $body, %o) = @_;
        my $res = ws_connect(uri => uri($o{site} // 1, $o{prefix}), timeout => $GUARD, %o);
        is(($res->{status} // 'none') . ' ' . ($res->{body} // ''), "$status $body", "$t: $what: $status $body")
            or diag($res->{head} // $res->{error});
        ok(!defined $res->{headers}{'sec-websocket-accept'}, "$t: $what: no Sec-WebSocket-Accept (no upgrade)");
        return $res;
    };
    my $bad = '{"error":"bad_websocket_handshake"}';
    my $res = $refused->('a key that is not base64', 400, $bad, key => 'not a key!!');
    like($res->{headers}{'content-type'} // '', qr{^application/json}, "$t: the 400 is JSON");
    $refused->('a key of 15 bytes', 400, $bad, key => 'AAECAwQFBgcICQoLDA0O');
    $refused->('a key of 17 bytes', 400, $bad, key => 'AAECAwQFBgcICQoLDA0ODxA=');
    $refused->('no key', 400, $bad, key => undef);
    for my $v (8, 14) {
        my $r = ws_connect(uri => uri(1), timeout => $GUARD, version => $v);
        is($r->{status}, 426, "$t: version $v: 426");
        is($r->{headers}{'sec-websocket-version'}, '13', "$t: version $v: Sec-WebSocket-Version: 13");
        ok(!defined $r->{headers}{'sec-websocket-accept'}, "$t: version $v: no upgrade");
    }

    $res = $refused->('without recording_websocket', 405, '{"error":"method_not_allowed"}', prefix => '/plain');
    is($res->{headers}{allow}, 'POST, OPTIONS', "$t: without recording_websocket: Allow: POST, OPTIONS");
    $res = $refused->('unknown site', 404, '{"error":"unknown_site"}', site => 2);
    is($res->{headers}{'content-type'}, 'application/json', "$t: unknown site: JSON");
    $res = $refused->('disabled site', 403, '{"error":"site_disabled"}', site => 3);
    is($res->{headers}{'content-type'}, 'application/json', "$t: disabled site: JSON");

    # A plain GET (no Upgrade) and a POST in the WebSocket location.
    $res = http_request(method => 'GET', uri => uri(1), timeout => $GUARD);
    like($res->{status} // 'none', qr/^(?:405|400)$/, "$t: a GET without Upgrade is refused (405 or 400)");
    $res = http_request(method => 'POST', uri => uri(1), body => batch('ws-post'), timeout => $GUARD,
                        headers => ['Content-Type' => 'application/json']);
    is(($res->{status} // 'none') . ' ' . ($res->{body} // ''), '202 {"status":"queued"}',
       "$t: a POST in the WebSocket location is still queued");
    is(redis_cmd('LLEN', $QUEUE), 1, "$t: only the POST is in Redis");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 2. Text messages.
# ---------------------------------------------------------------------------
section('2. text messages', sub {
    my $t = '2. text messages';
    start_ws();

    # The client's bytes as they are: empty arrays, long numbers, '/', raw
    # UTF-8 and escapes, spaces.
    my $doc = qq({"session_id":"ws-text", "seq":0,"events":[{"type":3,"timestamp":1700000000000,)
            . qq("data":{"adds":[],"n":1.2345678901234567890,"s":"a/b \xc3\xa9 \\u00e9"}}],"page_id":"p/1"});
    my $ws = open_ws($t, 1);
    my $rid = $ws->{headers}{'x-request-id'};
    ws_send_text($ws, $doc);
    is(next_text($ws), queued(1), "$t: one message: ack {\"n\":1,\"status\":\"queued\"}");
    my @el = elements();
    is(scalar @el, 1, "$t: one element in Redis");
    my ($ing, $raw) = element_is($el[0], $doc, "$t: message 1");
    ingest_ok($ing, $raw, 1, $rid, "$t: message 1");
    still_open($ws, $t);

    # Three messages on a new connection, sent back to back; then a fourth
    # after a pause (its own received_at).
    my $ws2 = open_ws("$t: second connection", 1);
    my $rid2 = $ws2->{headers}{'x-request-id'};
    my @docs = map { batch('ws-three', $_) } 0 .. 3;
    ws_send_text($ws2, $docs[$_]) for 0 .. 2;
    is(join(' ', map { next_text($ws2) } 1 .. 3), join(' ', map { queued($_) } 1 .. 3),
       "$t: three messages: acks n=1, 2, 3 in order (n counts per connection)");
    sleep 0.5;   # so that message 4 is taken at a later millisecond
    ws_send_text($ws2, $docs[3]);
    is(next_text($ws2), queued(4), "$t: a fourth message: n=4");
    @el = elements();
    is(scalar @el, 5, "$t: five elements in Redis");
    my (@at, @ids);
    for my $i (0 .. 3) {
        my ($ing2, $raw2) = element_is($el[$i + 1], $docs[$i], "$t: connection 2, message " . ($i + 1));
        ingest_ok($ing2, $raw2, $i + 1, $rid2, "$t: connection 2, message " . ($i + 1));
        push @at, received_at($raw2) // 0;
        push @ids, $ing2->{request_id} // '';
    }
    ok($at[0] <= $at[1] && $at[1] <= $at[2], "$t: received_at of messages 1 to 3 in order (@at[0..2])");
    ok($at[3] > $at[2], "$t: received_at is per message: message 4 (sent half a second later) has a later one");
    my %prefix = map { (/^(.*)-\d+\z/ ? $1 : $_) => 1 } @ids;
    is(scalar keys %prefix, 1, "$t: connection 2's four request ids share one prefix") or diag("@ids");
    my ($p1) = ($ing->{request_id} // '') =~ /^(.*)-1\z/;
    ok(defined $p1 && !$prefix{$p1}, "$t: the two connections' request ids differ");
    ws_close($_, code => 1000) for $ws, $ws2;
    expect_close($ws, 1000, "$t: connection 1");
    expect_close($ws2, 1000, "$t: connection 2");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 3. Binary messages: gzip and zlib.
# ---------------------------------------------------------------------------
section('3. binary messages', sub {
    my $t = '3. binary messages';
    start_ws();
    my $ws = open_ws($t, 1);
    my $rid = $ws->{headers}{'x-request-id'};
    my @docs = (batch('ws-gzip', 0, '{"adds":[],"x":"' . ('g' x 300) . '"}'),
                batch('ws-zlib', 0, '{"adds":[],"x":"' . ('z' x 300) . '"}'));
    ws_send_binary($ws, gzip_bytes($docs[0]));
    is(next_text($ws), queued(1), "$t: gzip: queued, n=1");
    ws_send_binary($ws, deflate_bytes($docs[1]));
    is(next_text($ws), queued(2), "$t: zlib: queued, n=2");
    my @el = elements();
    is(scalar @el, 2, "$t: two elements in Redis");
    for my $i (0, 1) {
        my $what = ('gzip', 'zlib')[$i];
        my ($ing, $raw) = element_is($el[$i], $docs[$i], "$t: $what: decoded bytes");
        my $n = $i + 1;
        like($ing->{request_id} // '', qr/-$n\z/, "$t: $what: request_id ends in -$n");
    }
    still_open($ws, $t);
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 4. Fragments, with a ping and a pong between them.
# ---------------------------------------------------------------------------
section('4. fragmented message', sub {
    my $t = '4. fragmented message';
    start_ws();
    my $ws = open_ws($t, 1);
    my $doc = batch('ws-frag', 0, '{"adds":[],"t":"fragmented"}');
    my @part = (substr($doc, 0, 20), substr($doc, 20, 30), substr($doc, 50));
    ws_send_frame($ws, opcode => 1, fin => 0, payload => $part[0]);
    ws_send_ping($ws, 'ping-between');
    ws_send_frame($ws, opcode => 0, fin => 0, payload => $part[1]);
    ws_send_pong($ws, 'unsolicited-pong');
    ws_send_frame($ws, opcode => 0, fin => 1, payload => $part[2]);

    my $f = ws_read_frame($ws, timeout => $GUARD);
    is($f ? "opcode $f->{opcode}: $f->{payload}" : 'nothing', 'opcode 10: ping-between',
       "$t: first a pong with the ping's payload");
    ok($f && $f->{fin} && !$f->{masked}, "$t: the pong is one unmasked frame") if $f;
    is(next_text($ws), queued(1), "$t: then the message's ack: queued, n=1 (the pong is no message)");
    my @el = elements();
    is(scalar @el, 1, "$t: one element in Redis");
    element_is($el[0], $doc, "$t: the reassembled document");

    # A binary (gzip) message in three fragments, 16- and 64-bit length
    # forms (non-minimal), a ping between.
    my $doc2 = batch('ws-frag', 1);
    my $gz = gzip_bytes($doc2);
    my $third = int(length($gz) / 3);
    ws_send_frame($ws, opcode => 2, fin => 0, payload => substr($gz, 0, $third), length_form => 16);
    ws_send_frame($ws, opcode => 0, fin => 0, payload => substr($gz, $third, $third), length_form => 64);
    ws_send_ping($ws, '');
    ws_send_frame($ws, opcode => 0, fin => 1, payload => substr($gz, 2 * $third));
    my $m = ws_read_message($ws, timeout => $GUARD);
    is(join(',', map { "$_->{opcode}:$_->{payload}" } @{ $m ? $m->{control} : [] }), '10:',
       "$t: gzip in fragments: an empty pong for the empty ping");
    is($m ? $m->{payload} : 'none', queued(2), "$t: gzip in fragments: queued, n=2");
    element_is((elements())[1], $doc2, "$t: gzip in fragments: the decoded document");
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 5. Bad messages: their error, and the connection stays open.
# ---------------------------------------------------------------------------
section('5. invalid messages', sub {
    my $t = '5. invalid messages';
    start_ws();
    my $ws = open_ws($t, 1);
    ws_send_text($ws, '{"session_id":"ws-bad","seq":0,"events":[');
    is(next_text($ws), refused(1, 'invalid_json'), "$t: truncated JSON: invalid_json, n=1");
    ws_send_text($ws, '{"seq":0,"events":[{"type":3,"timestamp":1700000000000}]}');
    is(next_text($ws), refused(2, 'invalid_session_id'), "$t: no session_id: invalid_session_id, n=2");
    ws_send_text($ws, batch('ws-bad', -1));
    is(next_text($ws), refused(3, 'invalid_seq'), "$t: seq -1: invalid_seq, n=3");
    ws_send_text($ws, '{"session_id":"ws-bad","seq":0,"events":[]}');
    is(next_text($ws), refused(4, 'invalid_events'), "$t: no events: invalid_events, n=4");
    still_open($ws, $t);
    my $good = batch('ws-good', 0);
    ws_send_text($ws, $good);
    is(next_text($ws), queued(5), "$t: then a good one: queued, n=5");
    # A binary message that is neither gzip nor zlib: some contract error.
    ws_send_binary($ws, 'plain bytes, no gzip');
    like(next_text($ws), qr/\A\{"n":6,"error":"[a-z_]+"\}\z/, "$t: a binary message that does not decode: an error, n=6");
    ws_send_text($ws, batch('ws-good', 1));
    is(next_text($ws), queued(7), "$t: and a good one after it: queued, n=7");
    my @el = elements();
    is(scalar @el, 2, "$t: only the good ones are in Redis");
    element_is($el[0], $good, "$t: the first good one");
    still_open($ws, "$t: at the end");
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 6. Sampling.
# ---------------------------------------------------------------------------
section('6. sampling', sub {
    my $t = '6. sampling';
    start_ws();
    my $ws = open_ws($t, 4);
    ws_send_text($ws, batch('ws-sampled', 0));
    is(next_text($ws), '{"n":1,"status":"sampled_out"}', "$t: sample_rate 0: sampled_out, n=1");
    ws_send_text($ws, batch('ws-sampled', 1));
    is(next_text($ws), '{"n":2,"status":"sampled_out"}', "$t: the next one too, n=2");
    is(redis_cmd('LLEN', $QUEUE), 0, "$t: nothing in Redis");
    still_open($ws, $t);
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 7. Protocol violations: each on its own connection.
# ---------------------------------------------------------------------------
section('7. protocol violations', sub {
    my $t = '7. protocol violations';
    start_ws(extra => 'recording_max_decoded_size 1k;');
    my $good = batch('ws-violation', 0);
    my @cases = (
        ['an unmasked frame', 1002, [[mask => 0, payload => $good]]],
        ['reserved opcode 0x3', 1002, [[opcode => 3, payload => $good]]],
        ['reserved opcode 0xB (control)', 1002, [[opcode => 0xB, payload => 'x']]],
        ['RSV1 without an extension', 1002, [[rsv1 => 1, payload => $good]]],
        ['a ping of 126 bytes', 1002, [[opcode => 9, payload => 'p' x 126]]],
        ['a fragmented ping', 1002, [[opcode => 9, fin => 0, payload => 'p']]],
        ['a continuation without a message', 1002, [[opcode => 0, payload => $good]]],
        ['a message of 2k (limit 1k)', 1009, [[opcode => 1, payload => 'x' x 2048]]],
        ['fragments of 600 + 600 bytes (limit 1k)', 1009,
         [[opcode => 1, fin => 0, payload => 'x' x 600], [opcode => 0, fin => 1, payload => 'x' x 600]]],
        ['a 2^63-1 length announced (no payload)', 1009,
         [[opcode => 2, length => 9223372036854775807, payload => '']]],
    );
    for my $case (@cases) {
        my ($what, $code, $frames) = @$case;
        my $ws = open_ws("$t: $what", 1);
        ws_send_frame($ws, @$_) for @$frames;
        expect_close($ws, $code, "$t: $what");
        is(redis_cmd('LLEN', $QUEUE), 0, "$t: $what: nothing queued");
        my $next = open_ws("$t: after $what, a new connection", 1);
        still_open($next, "$t: after $what, a new connection");
        ws_disconnect($next);
    }
    # The limit itself: a message of exactly 1k is a message.
    my $ws = open_ws("$t: a message of exactly 1k", 1);
    my $exact = batch_of_size('ws-exact', 1024);
    ws_send_text($ws, $exact);
    is(next_text($ws), queued(1), "$t: a message of exactly 1024 bytes (the limit) is queued");
    element_is((elements())[0], $exact, "$t: the 1k message");
    ws_close($ws);
    expect_close($ws, 1000, "$t: the 1k message's connection");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 8. A binary message that inflates over the limit.
# ---------------------------------------------------------------------------
section('8. inflating over the limit', sub {
    my $t = '8. inflating over the limit';
    start_ws(extra => 'recording_max_decoded_size 1k;');
    my $ws = open_ws($t, 1);
    my $big = batch_of_size('ws-bomb', 4096);
    my $gz = gzip_bytes($big);
    ok(length($gz) < 1024, "$t: the gzip message itself is under the limit (" . length($gz) . ' bytes)');
    ws_send_binary($ws, $gz);
    is(next_text($ws), refused(1, 'payload_too_large'), "$t: gzip inflating to 4k: payload_too_large, n=1");
    ws_send_binary($ws, deflate_bytes($big));
    is(next_text($ws), refused(2, 'payload_too_large'), "$t: zlib inflating to 4k: payload_too_large, n=2");
    still_open($ws, $t);
    my $good = batch('ws-after-bomb', 0);
    ws_send_binary($ws, gzip_bytes($good));
    is(next_text($ws), queued(3), "$t: then a good gzip message: queued, n=3");
    my @el = elements();
    is(scalar @el, 1, "$t: only the good one is in Redis");
    element_is($el[0], $good, "$t: the good one");
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 9. The client closes.
# ---------------------------------------------------------------------------
section('9. client close', sub {
    my $t = '9. client close';
    start_ws();
    my $ws = open_ws($t, 1);
    ws_send_text($ws, batch('ws-close', 0));
    is(next_text($ws), queued(1), "$t: a message first");
    ok(ws_close($ws, code => 1000), "$t: close 1000 sent");
    my $end = ws_read_until_close($ws, timeout => $GUARD);
    is($end->{close} ? $end->{close}{code} // 'no code' : 'no close frame', 1000, "$t: the server echoes close 1000");
    is(scalar @{ $end->{frames} }, 0, "$t: nothing else before it");
    ok($end->{eof}, "$t: then closes TCP") or diag($end->{error});
    is($end->{after}, '', "$t: nothing after the close frame");
    ws_disconnect($ws);

    my $ws2 = open_ws("$t: with a reason", 1);
    ws_close($ws2, code => 1000, reason => 'bye');
    $end = ws_read_until_close($ws2, timeout => $GUARD);
    is($end->{close} ? $end->{close}{code} // 'no code' : 'no close frame', 1000, "$t: with a reason: close 1000 echoed");
    ok($end->{eof}, "$t: with a reason: then the TCP close");
    ws_disconnect($ws2);
    my $ws3 = open_ws("$t: afterwards", 1);
    still_open($ws3, "$t: afterwards, a new connection");
    ok(poll_until(5, sub { (ws_figures()->{connections_open} // -1) == 1 }),
       "$t: only that connection is counted open");
    ws_close($ws3);
    expect_close($ws3, 1000, "$t: afterwards");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 10. Idle timeout.
# ---------------------------------------------------------------------------
section('10. idle timeout', sub {
    my $t = '10. idle timeout';
    start_ws(extra => 'recording_websocket_idle_timeout 1s;');
    my $ws = open_ws($t, 1);
    ws_send_text($ws, batch('ws-idle', 0));
    is(next_text($ws), queued(1), "$t: a message first");
    # Then nothing: the server closes (the guard is $GUARD seconds, the
    # timeout 1s).
    expect_close($ws, 1000, "$t: no frame for the idle timeout");
    is(redis_cmd('LLEN', $QUEUE), 1, "$t: the message before stays queued");
    my $ws2 = open_ws("$t: a connection that never sends", 1);
    expect_close($ws2, 1000, "$t: a connection that never sends");
    ok(poll_until(5, sub { (ws_figures()->{connections_open} // -1) == 0 }),
       "$t: no connection counted open afterwards");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 11. Redis down, no spool.
# ---------------------------------------------------------------------------
section('11. redis down', sub {
    my $t = '11. redis down';
    start_ws();
    my $ws = open_ws($t, 1);
    ws_send_text($ws, batch('ws-down', 0));
    is(next_text($ws), queued(1), "$t: while Redis is up: queued (the site is cached)");
    redis_stop();
    ws_send_text($ws, batch('ws-down', 1));
    is(next_text($ws), refused(2, 'queue_unavailable'), "$t: Redis stopped: queue_unavailable, n=2");
    ws_send_text($ws, batch('ws-down', 2));
    is(next_text($ws), refused(3, 'queue_unavailable'), "$t: and again, n=3");
    still_open($ws, "$t: while Redis is down");

    redis_start();
    setup_sites();
    # The next message is queued (a few tries allowed while the worker
    # reconnects; each answer must still be in order).
    my ($n, @answers) = (3);
    for (1 .. 10) {
        ws_send_text($ws, batch('ws-down', ++$n));
        push @answers, next_text($ws);
        last if $answers[-1] eq queued($n);
        last unless $answers[-1] eq refused($n, 'queue_unavailable');
        sleep 0.3;
    }
    is($answers[-1], queued($n), "$t: after Redis is back, a message is queued (n=$n)")
        or diag(join "\n", @answers);
    Test::More::note("$t: " . scalar(@answers) . " message(s) sent after the restart until one was queued");
    my @el = elements();
    is(scalar @el, 1, "$t: one element in the restarted Redis");
    element_is($el[0], batch('ws-down', $n), "$t: the message sent after the restart");
    ws_close($ws);
    expect_close($ws, 1000, $t);
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 12. nginx -s quit with open connections.
# ---------------------------------------------------------------------------
section('12. graceful quit', sub {
    my $t = '12. graceful quit';
    start_ws();
    my $ws = open_ws($t, 1);
    ws_send_text($ws, batch('ws-quit', 0));
    is(next_text($ws), queued(1), "$t: a message acked before the quit");
    my $wait = read_to_end_in_child($ws);
    ok(stop_nginx(), "$t: nginx stops gracefully with the connection open");
    my $r = $wait->();
    diag($r->{died}) if $r->{died};
    is($r->{close} // 'no close frame (' . ($r->{error} // 'EOF') . ')', 1001, "$t: the client gets close 1001");
    is(scalar @{ $r->{frames} || [] }, 0, "$t: nothing else before it");
    ok($r->{eof}, "$t: then the TCP close");
    ws_disconnect($ws);

    # A message Redis has not acknowledged yet when the quit comes: Redis
    # holds writes (CLIENT PAUSE ... WRITE) until the worker is shutting
    # down; then its ack comes first, and close 1001 after it.
    my $t2 = "$t, message pending";
    start_ws(http => 'recording_redis_read_timeout 60s;');
    $ws = open_ws($t2, 1);
    ws_send_text($ws, batch('ws-pending', 0));
    is(next_text($ws), queued(1), "$t2: a first message (the site is cached)");
    my $paused = redis_cmd('CLIENT', 'PAUSE', 30000, 'WRITE');
    is($paused, 'OK', "$t2: Redis holds writes");
    my $ok = eval {
        ws_send_text($ws, batch('ws-pending', 1));
        ok(poll_until(10, sub { my $s = status_json(); ($s->{pending_bytes} // 0) > 0
                                    || (($s->{redis} || {})->{inflight_elements} // 0) > 0 }),
           "$t2: the message is held for Redis (pending_bytes or redis.inflight_elements)");
        my $early = ws_read_frame($ws, timeout => 0.5);
        ok(!$early, "$t2: no ack while Redis has not acknowledged it")
            or diag("opcode $early->{opcode}: $early->{payload}");
        $ws->{error} = undef;
        $wait = read_to_end_in_child($ws);
        kill QUIT => nginx_master_pid();
        ok(poll_until(10, sub { error_log_text() =~ /gracefully shutting down/ }),
           "$t2: the worker is shutting down with the message pending");
        1;
    };
    my $err = $@;
    redis_cmd('CLIENT', 'UNPAUSE');
    die $err unless $ok;
    ok(stop_nginx(), "$t2: nginx stops gracefully");
    $r = $wait->();
    diag($r->{died}) if $r->{died};
    is(join(' | ', map { "$_->{opcode}:$_->{payload}" } @{ $r->{frames} || [] }), '1:' . queued(2),
       "$t2: the pending message's ack comes first: queued, n=2");
    is($r->{close} // 'no close frame (' . ($r->{error} // 'EOF') . ')', 1001, "$t2: then close 1001");
    ok($r->{eof}, "$t2: then the TCP close");
    ws_disconnect($ws);
    is(redis_cmd('LLEN', $QUEUE), 2, "$t2: both messages are in Redis");
    no_crash($t);
});

# ---------------------------------------------------------------------------
# 13. recording_status.
# ---------------------------------------------------------------------------
section('13. figures', sub {
    my $t = '13. figures';
    start_ws();
    my $before = status_json();
    is_deeply($before->{websocket}, { connections_open => 0, connections => 0, messages => 0 },
              "$t: before any connection: websocket {connections_open 0, connections 0, messages 0}")
        or diag($JSON->encode($before->{websocket} // 'absent'));
    my %queued0 = map { $_ => ($before->{batches} || {})->{$_} // 0 } qw(queued invalid_json);

    my $ws = open_ws($t, 1);
    ws_send_text($ws, batch('ws-figures', 0));
    is(next_text($ws), queued(1), "$t: message 1 queued");
    ws_send_binary($ws, gzip_bytes(batch('ws-figures', 1)));
    is(next_text($ws), queued(2), "$t: message 2 queued");
    my $w = ws_figures();
    is($w->{connections_open}, 1, "$t: connections_open 1 while one is open");
    is($w->{connections}, 1, "$t: connections 1");
    is($w->{messages}, 2, "$t: messages 2");
    my $b = status_json()->{batches} || {};
    is(($b->{queued} // 0) - $queued0{queued}, 2, "$t: batches.queued counts the two messages");

    ws_send_text($ws, 'not json');
    is(next_text($ws), refused(3, 'invalid_json'), "$t: message 3: invalid_json");
    $b = status_json()->{batches} || {};
    is(($b->{invalid_json} // 0) - $queued0{invalid_json}, 1, "$t: batches.invalid_json counts it");
    $w = ws_figures();
    ok(($w->{messages} // -1) == 2 || ($w->{messages} // -1) == 3, "$t: messages is 2 or 3 after a refused one ("
       . ($w->{messages} // 'absent') . ')');

    my $ws2 = open_ws("$t: a second connection", 1);
    is(ws_figures()->{connections_open}, 2, "$t: connections_open 2 with two open");
    ws_close($ws);
    expect_close($ws, 1000, "$t: the first one closed");
    ok(poll_until(5, sub { (ws_figures()->{connections_open} // -1) == 1 }), "$t: connections_open back to 1");
    ws_close($ws2);
    expect_close($ws2, 1000, "$t: the second one closed");
    ok(poll_until(5, sub { (ws_figures()->{connections_open} // -1) == 0 }), "$t: connections_open back to 0");
    $w = ws_figures();
    is($w->{connections}, 2, "$t: connections 2 (a counter)");
    ok(($w->{messages} // -1) >= 2, "$t: messages still counted after the connections closed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 14. nginx -t.
# ---------------------------------------------------------------------------
section('14. nginx -t', sub {
    my $t = '14. nginx -t';
    my ($rc, $out) = nginx_test(config => ws_config('recording_websocket_idle_timeout 30s;'));
    is($rc, 0, "$t: recording_websocket on and recording_websocket_idle_timeout in a location: accepted") or diag($out);
    ($rc, $out) = nginx_test(http_config => "recording_websocket on;\nrecording_websocket_idle_timeout 1m;",
                             config => "recording_websocket off;\n" . loc('', ''));
    is($rc, 0, "$t: in http and server: accepted") or diag($out);
    ($rc, $out) = nginx_test(config => loc('', 'recording_websocket maybe;'));
    isnt($rc, 0, "$t: recording_websocket maybe: refused");
    like($out, qr/\[emerg\].*recording_websocket/, "$t: ... naming the directive") or diag($out);
    ($rc, $out) = nginx_test(config => loc('', 'recording_websocket on; recording_websocket_idle_timeout soon;'));
    isnt($rc, 0, "$t: recording_websocket_idle_timeout soon: refused");
    like($out, qr/\[emerg\].*recording_websocket_idle_timeout/, "$t: ... naming the directive") or diag($out);
});

# ---------------------------------------------------------------------------
# 15. Back-pressure: while 64 acknowledgements are pending, nothing more is
#     read from the connection; then everything is acknowledged, in order.
# ---------------------------------------------------------------------------
section('15. back-pressure', sub {
    my $t = '15. back-pressure';
    start_ws(extra => 'recording_redis_read_timeout 1h;');
    my $ws = open_ws($t);
    # A first message makes the site known to the cache.
    ws_send_text($ws, batch('bp', 0));
    is(next_text($ws), queued(1), "$t: the first message queued");
    # Redis holds writes: every RPUSH waits.
    is(redis_cmd('CLIENT', 'PAUSE', 30000, 'WRITE'), 'OK', "$t: Redis paused for writes");
    # 100 messages of 20 KB: more than one read (16 KB) each.
    my $sent = in_child(sub {
        my $n = 0;
        for my $i (2 .. 101) {
            ws_send_text($ws, batch_of_size("bp-$i", 20_000)) or last;
            $n++;
        }
        return { sent => $n };
    });
    my $read;
    ok(poll_until(10, sub { $read = ws_figures()->{messages} // 0; $read >= 65 }),
       "$t: 64 messages pending (read: $read)");
    sleep 1;
    $read = ws_figures()->{messages} // 0;
    cmp_ok($read, '<=', 66, "$t: ... and no more read while they are ($read read in all)");
    is(redis_cmd('CLIENT', 'UNPAUSE'), 'OK', "$t: Redis answers again");
    my @acks = map { next_text($ws) } 2 .. 101;
    is_deeply(\@acks, [map { queued($_) } 2 .. 101], "$t: then all 100 acknowledged, in order");
    is($sent->()->{sent}, 100, "$t: the client could send all 100");
    is(ws_figures()->{messages}, 101, "$t: 101 messages read");
    is(scalar(elements()), 101, "$t: 101 elements in Redis");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 16. Hostile peers: a flood of pings, a frame sent a byte at a time, a
#     decompression bomb; the worker keeps serving.
# ---------------------------------------------------------------------------
section('16. hostile', sub {
    my $t = '16. hostile';
    start_ws();
    my $ws = open_ws($t);
    ws_send_raw($ws, join '', map { ws_encode_frame(opcode => 9, payload => "p$_") } 1 .. 2000);
    my @pongs;
    for (1 .. 2000) {
        my $f = ws_read_frame($ws) or last;
        last unless ($f->{opcode} // -1) == 10;
        push @pongs, $f->{payload};
    }
    is(scalar @pongs, 2000, "$t: 2000 pings in one write: 2000 pongs");
    is($pongs[-1], 'p2000', "$t: ... the last one last");

    # Slowloris on frames: one message, a byte at a time.
    my $frame = ws_encode_frame(opcode => 1, payload => batch('slow', 0));
    for my $byte (split //, $frame) {
        ws_send_raw($ws, $byte) or last;
        sleep 0.002;
    }
    is(next_text($ws), queued(1), "$t: a message sent a byte at a time: queued");

    # A gzip bomb: 100 KB that inflates to 50 MB, over the 2 MB limit.
    my $bomb = gzip_bytes('{"session_id":"bomb","seq":0,"events":[' . (' ' x 50_000_000) . ']}');
    ok(length($bomb) < 200_000, "$t: the bomb is " . length($bomb) . ' bytes');
    ws_send_binary($ws, $bomb);
    is(next_text($ws), refused(2, 'payload_too_large'), "$t: a decompression bomb: payload_too_large");
    ws_send_text($ws, batch('after-bomb', 0));
    is(next_text($ws), queued(3), "$t: the connection goes on");
    my $other = open_ws("$t: another connection");
    ws_send_text($other, batch('other', 0));
    is(next_text($other), queued(1), "$t: ... and so does the worker");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 17. nginx -s reload with a connection open: the old worker acknowledges
#     what it read, closes with 1001; a new connection goes to the new one.
# ---------------------------------------------------------------------------
section('17. reload', sub {
    my $t = '17. reload';
    start_ws();
    my $ws = open_ws($t);
    ws_send_text($ws, batch('reload', 0));
    is(next_text($ws), queued(1), "$t: a message queued before the reload");
    ws_send_text($ws, batch('reload', 1));
    ok(reload_nginx(), "$t: nginx reloaded");
    my $end = ws_read_until_close($ws, timeout => $GUARD, eof => 0);
    my @frames = map { $_->{payload} } grep { $_->{opcode} == 1 } @{ $end->{frames} };
    ok(!@frames || "@frames" eq queued(2), "$t: a message in flight is acknowledged first (@frames)");
    is($end->{close} ? $end->{close}{code} : 'none', 1001, "$t: the old worker closes with 1001");
    ws_disconnect($ws);
    my @acked = (0, @frames ? (1) : ());
    my %in_redis = map { /"session_id":"reload","seq":(\d+)/ ? ($1 => 1) : () } elements();
    is(scalar(grep { $in_redis{$_} } @acked), scalar @acked, "$t: every acknowledged message is in Redis");
    my $again = open_ws("$t: after the reload");
    ws_send_text($again, batch('reload', 2));
    is(next_text($again), queued(1), "$t: a new connection is served");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 18. Redis down with the spool: a message is acknowledged once the spool
#     has it, and reaches Redis when it is back.
# ---------------------------------------------------------------------------
section('18. spool', sub {
    my $t = '18. spool';
    my $spool = servroot() . '/ws-spool';
    mkdir $spool;
    chmod 0777, $spool;
    start_ws(http => "recording_spool $spool;\n");
    my $ws = open_ws($t);
    ws_send_text($ws, batch('spooled', 0));
    is(next_text($ws), queued(1), "$t: Redis up: queued");
    redis_stop();
    ws_send_text($ws, batch('spooled', 1));
    is(next_text($ws), queued(2), "$t: Redis down: queued, into the spool");
    redis_start();
    ok(poll_until(15, sub { grep { /"session_id":"spooled","seq":1/ } elements() }),
       "$t: the spooled message reaches Redis once it is back");
    ws_send_text($ws, batch('spooled', 2));
    is(next_text($ws), queued(3), "$t: the connection went on throughout");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 19. The access log: one line per connection, with its message count; the
#     POST variables have nothing to say about it.
# ---------------------------------------------------------------------------
section('19. access log', sub {
    my $t = '19. access log';
    start_ws(http => "log_format ws '\$status msgs=\$recording_websocket_messages "
                   . "outcome=\$recording_outcome session=\$recording_session_id';\n"
                   . "access_log logs/ws.log ws;\n");
    my $ws = open_ws($t);
    ws_send_text($ws, batch('log', $_)) for 0 .. 2;
    is(next_text($ws), queued($_), "$t: message $_ queued") for 1 .. 3;
    ws_close($ws, code => 1000);
    expect_close($ws, 1000, "$t: closed");
    my $post = http_request(method => 'POST', uri => uri(1), body => batch('log-post', 0),
                            headers => ['Content-Type' => 'application/json']);
    is($post->{status}, 202, "$t: a POST beside it");
    my @lines;
    poll_until(5, sub { @lines = grep { length } split /\n/, (-e servroot() . '/logs/ws.log'
                        ? do { local (@ARGV, $/) = (servroot() . '/logs/ws.log'); <> } : ''); @lines >= 2 });
    is($lines[0] // '', '101 msgs=3 outcome=- session=-', "$t: the connection's line: 101, 3 messages");
    is($lines[1] // '', '202 msgs=- outcome=queued session=log-post', "$t: the POST's line as before");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 20. A flood of pings from a client that reads nothing: the worker stops
#     reading once its pongs wait unsent, instead of holding them all.
# ---------------------------------------------------------------------------
section('20. ping flood, nothing read', sub {
    my $t = '20. ping flood, nothing read';
    start_ws();
    my ($worker) = nginx_worker_pids();
    my $rss = sub {
        open my $fh, '<', "/proc/$worker/status" or return 0;
        my ($kb) = map { /^VmRSS:\s+(\d+)/ ? $1 : () } <$fh>;
        return $kb // 0;
    };
    my $ws = open_ws($t);
    my $before = $rss->();
    my $chunk = join '', map { ws_encode_frame(opcode => 9, payload => 'x' x 125) } 1 .. 31;  # ~4 KB
    my $sent = 0;
    while ($sent < 32 * 1024 * 1024) {
        ws_send_raw($ws, $chunk, timeout => 1) or last;
        $sent += length $chunk;
    }
    my $grew = $rss->() - $before;
    Test::More::note("$t: sent $sent bytes of pings before the socket filled; worker RSS +$grew kB");
    cmp_ok($sent, '<', 32 * 1024 * 1024, "$t: the client could not send 32 MB of pings: the worker stopped reading");
    cmp_ok($grew, '<', 8 * 1024, "$t: the worker's RSS grew by less than 8 MB ($grew kB)");
    ws_disconnect($ws);
    my $other = open_ws("$t: another connection");
    ws_send_text($other, batch('after-flood', 0));
    is(next_text($other), queued(1), "$t: the worker goes on");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 21. TCP_NODELAY on the upgraded connection (as nginx's proxy sets it on
#     upgrade; `tcp_nodelay off` keeps it off): read off the worker's own
#     socket with pidfd_getfd.
# ---------------------------------------------------------------------------

# The worker's socket of our connection $sock, as a handle of ours; (undef,
# why) where it cannot be had, as where the kernel has no pidfd_getfd
# (before Linux 5.6) or this is not x86-64 or aarch64.
sub worker_socket {
    my ($worker, $sock) = @_;
    my ($pidfd_open, $pidfd_getfd) = (434, 438);   # x86-64 and most others
    return (undef, 'not x86-64 or aarch64') unless (POSIX::uname())[4] =~ /^(?:x86_64|aarch64)$/;
    # The worker's end of it: from the server's port to ours, and alive
    # (inode 0 is a closed socket in TIME_WAIT, which may share a port).
    my ($ours, $theirs) = ($sock->sockport, $sock->peerport);
    my $port_of = sub { ($_[0] // '') =~ /:([0-9A-F]{4})$/ ? hex($1) : -1 };
    my $inode;
    for my $table ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $table or next;
        while (<$fh>) {
            my @f = split;
            $inode = $f[9] if $port_of->($f[1]) == $theirs && $port_of->($f[2]) == $ours && ($f[9] // 0) != 0;
        }
    }
    return (undef, "no socket from port $theirs to $ours in /proc/net/tcp") unless $inode;
    opendir my $dh, "/proc/$worker/fd" or return (undef, "/proc/$worker/fd: $!");
    my ($target) = grep { (readlink("/proc/$worker/fd/$_") // '') eq "socket:[$inode]" } readdir $dh;
    return (undef, "socket:[$inode] is not among worker $worker's files") unless defined $target;
    my $pidfd = syscall($pidfd_open, $worker + 0, 0);
    return (undef, "pidfd_open: $!") if $pidfd < 0;
    my $fd = syscall($pidfd_getfd, $pidfd, $target + 0, 0);
    POSIX::close($pidfd);
    return (undef, "pidfd_getfd: $!") if $fd < 0;
    open my $copy, '+<&=', $fd or return (undef, "fd $fd: $!");
    return $copy;
}

sub nodelay_of {
    my ($t) = @_;
    my ($worker) = nginx_worker_pids();
    my $ws = open_ws($t);
    ws_send_text($ws, batch('nodelay', 0));
    is(next_text($ws), queued(1), "$t: a message queued");
    my ($copy, $why) = worker_socket($worker, $ws->{sock});
    my $value = $copy ? unpack('i', getsockopt($copy, Socket::IPPROTO_TCP(), Socket::TCP_NODELAY()) // pack('i', -1))
                      : undef;
    close $copy if $copy;
    ws_disconnect($ws);
    return ($value, $why);
}

section('21. TCP_NODELAY', sub {
    my $t = '21. TCP_NODELAY';
    start_ws();
    my ($on, $why) = nodelay_of($t);
  SKIP: {
        skip "$t: the worker's socket not read ($why)", 2 unless defined $on;
        ok($on, "$t: the worker's socket of an upgraded connection has TCP_NODELAY");
        ok(stop_nginx(), "$t: nginx stops gracefully");
        start_ws(http => "tcp_nodelay off;\n");
        my ($off, $why_off) = nodelay_of("$t, tcp_nodelay off");
        is($off, 0, "$t: with tcp_nodelay off, it stays off") or Test::More::diag("the worker's socket not read: "
                                                                                   . ($why_off // 'it was'));
    }
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

Test::More::done_testing();
