# Hostile input and Redis faults (issue 6, items 1, 2 and 5): limits that
# hold, inputs crafted to hurt (compression bombs, absurd nesting, huge
# strings, numbers and key counts, broken UTF-8, NUL bytes, forged
# `_ingest`, hostile headers, pipelining, clients that hang up), a Redis
# that answers errors, closes mid-reply or never answers, and WebSocket
# frames crafted to hurt (issue 17).  After each
# attack the same worker must still queue a normal batch (X-Pid unchanged)
# and the error log must show no alert/crit/emerg or crashed worker.
#
# One nginx (one worker) serves every scenario; locations differ only in
# the limits they set or the Redis they talk to.  A fake Redis (a forked
# child, behaviour switched through a file) plays the faulty server.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::WebSocket;
use Compress::Raw::Zlib ();
use IO::Select ();
use IO::Socket::INET ();
use JSON::PP ();
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
my $JSON = JSON::PP->new->utf8;
my $QUEUE = 'recording:queue:0';   # recording_queue_shards defaults to 1

# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------

my $EVENT = '{"type":3,"timestamp":1700000000000,"data":{"adds":[]}}';

sub batch {
    my ($sid, %o) = @_;
    my $data = $o{data} // '{"adds":[]}';
    my $extra = $o{extra} // '';
    return qq({"session_id":"$sid","seq":) . ($o{seq} // 0)
         . qq(,"events":[{"type":3,"timestamp":1700000000000,"data":$data}]$extra});
}

# A valid batch of exactly $size bytes (padded with a string member).
sub batch_of_size {
    my ($sid, $size) = @_;
    my $head = batch($sid, extra => ',"pad":"');
    $head = substr($head, 0, -1);   # drop the closing brace: `..."pad":"`
    my $pad = $size - length($head) - 2;
    die "batch_of_size: $size is too small\n" if $pad < 0;
    return $head . ('p' x $pad) . '"}';
}

# A batch whose event data nests $levels arrays: the document's depth is
# $levels + 3 (batch object, events array, event object).
sub nested_batch {
    my ($sid, $levels, $open, $close) = @_;
    $open //= '[';
    $close //= ']';
    return batch($sid, data => ($open x $levels) . ($close x $levels));
}

# Raw deflate data (no header, no trailer) for $mib MiB of zero bytes.
# Compressed chunk by chunk with Compress::Raw::Zlib, each chunk ending in a
# full flush so that it does not refer back to the previous one; once two
# consecutive chunks compress to the same bytes, the rest of the stream is
# those bytes again (as zlib would produce them, but without spending ten
# seconds of CPU per GiB).  Never holds the uncompressed data.
sub zero_deflate {
    my ($mib) = @_;
    my ($d, $st) = Compress::Raw::Zlib::Deflate->new(
        -Level => 9, -WindowBits => -Compress::Raw::Zlib::MAX_WBITS(), -AppendOutput => 1);
    die "deflateInit: $st\n" unless $d;
    my $chunk = "\0" x (1 << 20);
    my ($out, $prev) = ('', undef);
    for my $i (1 .. $mib) {
        my $seg = '';
        $d->deflate($chunk, $seg) == Compress::Raw::Zlib::Z_OK() or die "deflate failed\n";
        $d->flush($seg, Compress::Raw::Zlib::Z_FULL_FLUSH()) == Compress::Raw::Zlib::Z_OK()
            or die "deflate flush failed\n";
        $out .= $seg;
        if (defined $prev && $seg eq $prev) {
            $out .= $seg x ($mib - $i);
            last;
        }
        $prev = $seg;
    }
    return $out . "\x03\x00";   # a final, empty, fixed-Huffman block
}

# CRC-32 of $mib MiB of zeros, combined rather than computed over the data.
sub zero_crc32 {
    my ($mib) = @_;
    my $one = Compress::Raw::Zlib::crc32("\0" x (1 << 20));
    my $crc = $one;
    $crc = Compress::Raw::Zlib::crc32_combine($crc, $one, 1 << 20) for 2 .. $mib;
    return $crc;
}

# A gzip member decoding to $mib MiB of zeros.
sub gzip_bomb {
    my ($mib) = @_;
    return "\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" . zero_deflate($mib)
         . pack('VV', zero_crc32($mib), ($mib << 20) & 0xffffffff);
}

# A zlib stream decoding to $mib MiB of zeros (Adler-32 of n zeros: a = 1,
# b = n mod 65521).
sub zlib_bomb {
    my ($mib) = @_;
    return "\x78\xda" . zero_deflate($mib) . pack('N', ((($mib << 20) % 65521) << 16) | 1);
}

# ---------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------

sub uri { my ($prefix, $site) = @_; return "$prefix/v1/sites/" . ($site // 1) . '/recordings' }

sub post {
    my ($uri, $body, %o) = @_;
    return http_request(method => 'POST', uri => $uri, body => $body, timeout => $o{timeout} // 10,
                        headers => ['Content-Type' => 'application/json', @{ $o{headers} || [] }]);
}

sub post_gzip    { my ($uri, $gz, %o) = @_; return post($uri, $gz, %o, headers => ['Content-Encoding' => 'gzip', @{ $o{headers} || [] }]) }
sub post_deflate { my ($uri, $z, %o)  = @_; return post($uri, $z, %o, headers => ['Content-Encoding' => 'deflate', @{ $o{headers} || [] }]) }

# "status body", the way the contract's table reads.
sub answer { my ($res) = @_; return ($res->{status} // 'none') . ' ' . ($res->{body} // '') }

sub raw_post {
    my ($uri, $body, %o) = @_;
    my $headers = join '', map { "$_->[0]: $_->[1]\r\n" } @{ $o{headers} || [] };
    return "POST $uri HTTP/1.1\r\nHost: localhost\r\n"
         . 'Connection: ' . ($o{close} ? 'close' : 'keep-alive') . "\r\n"
         . "Content-Type: application/json\r\n$headers"
         . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

sub connect_nginx {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                  Proto => 'tcp', Timeout => 3) or die "connect: $@";
    return $s;
}

sub send_all {
    my ($sock, $data) = @_;
    while (length $data) {
        my $n = syswrite($sock, $data);
        die "write: $!" unless defined $n;
        substr($data, 0, $n) = '';
    }
}

# Reads until the peer closes or $timeout passes; returns (bytes, closed?).
sub read_until_close {
    my ($sock, $timeout) = @_;
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($sock);
    my $buf = '';
    while ((my $left = $deadline - time) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($sock, $buf, 65536, length $buf);
        return ($buf, 1) if !$n;   # EOF or reset
    }
    return ($buf, 0);
}

# Closes with a TCP reset instead of a FIN.
sub reset_close {
    my ($sock) = @_;
    setsockopt($sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    close $sock;
}

# Splits the bytes of several HTTP/1.1 responses read from one connection.
sub split_responses {
    my ($raw) = @_;
    my @out;
    while (length $raw) {
        my $end = index($raw, "\r\n\r\n");
        last if $end < 0;
        my ($line, @lines) = split /\r\n/, substr($raw, 0, $end);
        substr($raw, 0, $end + 4) = '';
        my ($status) = $line =~ m{^HTTP/1\.\d (\d{3})} or last;
        my %h = map { /^([^:]+):\s*(.*?)\s*$/ ? (lc $1 => $2) : () } @lines;
        my $len = $status =~ /^(?:204|304)$/ ? 0 : $h{'content-length'} // 0;
        push @out, { status => $status, headers => \%h, body => substr($raw, 0, $len) };
        substr($raw, 0, $len) = '';
    }
    return @out;
}

# ---------------------------------------------------------------------------
# Queue elements
# ---------------------------------------------------------------------------

my $STR  = qr/"(?:[^"\\]|\\.)*"/;
my $INGEST = qr/,"_ingest":\{"site_id":\d+,"received_at":\d+,"ip":$STR,"user_agent":(?:null|$STR),"country":(?:null|$STR),"request_id":"[0-9a-f]+"\}/;

sub clear_queue { redis_cmd('DEL', $QUEUE) }
sub queue_elements { return @{ redis_cmd('LRANGE', $QUEUE, 0, -1) } }

# The element without the server's `_ingest` (undef unless there is exactly
# one, as the last member).
sub client_text {
    my ($el) = @_;
    return undef unless defined $el;
    my $n = () = $el =~ /$INGEST/g;
    return undef unless $n == 1 && $el =~ /$INGEST\s*\}\s*\z/;
    (my $s = $el) =~ s/$INGEST//;
    return $s;
}

# The one element in the queue (undef unless there is exactly one).
sub queued_element {
    my @el = queue_elements();
    return @el == 1 ? $el[0] : undef;
}

# ---------------------------------------------------------------------------
# A fake Redis: a forked child serving RESP on a loopback port.  What it does
# with each command depends on the mode in $FAKE_DIR/mode, read when the
# command arrives:
#   ok        HMGET -> enabled "1", sample_rate nil; RPUSH -> :1
#   delay     as ok, but RPUSH is answered 300 ms late
#   oom       RPUSH -> -OOM ...
#   readonly  RPUSH -> -READONLY ...
#   hmgeterr  HMGET -> -LOADING ...
#   midreply  the reply's first bytes (`*2\r\n$1\r\n1`, `:1`), then close
#   silent    never answers
# Every command is logged, one line each, to $FAKE_DIR/commands.
# ---------------------------------------------------------------------------

my $FAKE_DIR = servroot() . '/fake-redis';
mkdir $FAKE_DIR;

sub fake_mode {
    my ($mode) = @_;
    open my $fh, '>', "$FAKE_DIR/mode.tmp" or die "mode: $!";
    print {$fh} $mode;
    close $fh;
    rename "$FAKE_DIR/mode.tmp", "$FAKE_DIR/mode" or die "mode: $!";
}

sub fake_commands {
    open my $fh, '<:raw', "$FAKE_DIR/commands" or return '';
    local $/;
    return scalar(<$fh>) // '';
}

sub fake_reply {
    my ($mode, $cmd) = @_;   # -> [delay, bytes, close after?] or undef
    my $name = uc($cmd->[0] // '');
    return undef if $mode eq 'silent';
    if ($name eq 'HMGET') {
        return [0, "*2\r\n\$1\r\n1", 1] if $mode eq 'midreply';
        return [0, "-LOADING Redis is loading the dataset in memory\r\n"] if $mode eq 'hmgeterr';
        return [0, "*2\r\n\$1\r\n1\r\n\$-1\r\n"];
    }
    if ($name eq 'RPUSH') {
        return [0, ':1', 1] if $mode eq 'midreply';
        return [0, "-OOM command not allowed when used memory > 'maxmemory'.\r\n"] if $mode eq 'oom';
        return [0, "-READONLY You can't write against a read only replica.\r\n"] if $mode eq 'readonly';
        return [0.3, ":1\r\n"] if $mode eq 'delay';
        return [0, ":1\r\n"];
    }
    return [0, "+OK\r\n"];
}

# Complete RESP arrays at the start of $$buf, removed from it.
sub parse_resp_commands {
    my ($buf) = @_;
    my @cmds;
    while (length $$buf && substr($$buf, 0, 1) eq '*') {
        my $eol = index($$buf, "\r\n");
        last if $eol < 0;
        my $n = substr($$buf, 1, $eol - 1);
        my $pos = $eol + 2;
        my @args;
        for (1 .. $n) {
            my $e = index($$buf, "\r\n", $pos);
            last if $e < 0;
            my $len = substr($$buf, $pos + 1, $e - $pos - 1);
            last if length($$buf) < $e + 2 + $len + 2;
            push @args, substr($$buf, $e + 2, $len);
            $pos = $e + 2 + $len + 2;
        }
        last unless @args == $n;
        substr($$buf, 0, $pos) = '';
        push @cmds, \@args;
    }
    return @cmds;
}

sub start_fake_redis {
    fake_mode('ok');
    return start_server(sub {
        my ($listener, $alive) = @_;
        open my $log, '>>:raw', "$FAKE_DIR/commands" or POSIX::_exit(1);
        $log->autoflush(1);
        my $sel = IO::Select->new($listener);
        my %conn;   # fileno -> {sock, buf, out => [[due, bytes, close]]}
        my $drop = sub {
            my ($c) = @_;
            $sel->remove($c->{sock});
            delete $conn{ fileno $c->{sock} };
            close $c->{sock};
        };
        while ($alive->()) {
            for my $fh ($sel->can_read(0.02)) {
                if ($fh == $listener) {
                    my $s = $listener->accept or next;
                    $sel->add($s);
                    $conn{ fileno $s } = { sock => $s, buf => '', out => [] };
                    next;
                }
                my $c = $conn{ fileno $fh } or next;
                my $n = sysread($fh, $c->{buf}, 1 << 20, length $c->{buf});
                if (!$n) { $drop->($c); next }
                for my $cmd (parse_resp_commands(\$c->{buf})) {
                    my $mode = do { open my $m, '<', "$FAKE_DIR/mode"; local $/; <$m> } // 'ok';
                    my @shown = map { length > 120 ? substr($_, 0, 120) . '...' : $_ } @$cmd;
                    s/[\r\n]/ /g for @shown;
                    print {$log} "$mode @shown\n";
                    my $r = fake_reply($mode, $cmd) or next;
                    push @{ $c->{out} }, [time + $r->[0], $r->[1], $r->[2]];
                }
            }
            for my $c (values %conn) {
                while (@{ $c->{out} } && $c->{out}[0][0] <= time) {
                    my (undef, $bytes, $close) = @{ shift @{ $c->{out} } };
                    syswrite($c->{sock}, $bytes);
                    if ($close) { $drop->($c); last }
                }
            }
        }
    });
}

# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

my ($FAKE_PORT, $FAKE_PID) = start_fake_redis();

# Every location: the endpoint with any number of site-id digits (so that
# the module, not the regex, refuses 11 digits), the country header, and the
# worker's pid in every answer.
sub location {
    my ($prefix, $extra) = @_;
    $extra //= '';
    return <<"CONF";
        location ~ "^$prefix/v1/sites/(?<site_id>[0-9]+)/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_country \$http_cloudfront_viewer_country;
            add_header X-Pid \$pid always;
            $extra
        }
CONF
}

redis_start();
redis_cmd('FLUSHALL');
redis_cmd('HSET', "recording:site:$_", 'enabled', 1) for 1, 2, 9999999999, 4294967296, '0000000000';

start_nginx(
    http_config => "    client_max_body_size 4m;\n"
                 . "    log_format big '\$request_uri \$status \$recording_outcome \$recording_redis_time';\n",
    config => join('',
        location(''),
        location('/d128', 'recording_max_depth 128;'),
        location('/d1000', 'recording_max_depth 1000;'),
        location('/d100k', 'recording_max_depth 100000;'),
        location('/small', "recording_max_decoded_size 64k;\n            recording_max_events 100;\n"
                          . '            client_max_body_size 100k;'),
        location('/big', "recording_max_decoded_size 16m;\n            client_max_body_size 16m;\n"
                        . "            recording_redis_read_timeout 10s;\n            access_log logs/big.log big;"),
        location('/bigshort', "recording_max_decoded_size 16m;\n            client_max_body_size 16m;\n"
                             . '            recording_redis_read_timeout 250ms;'),
        location('/slow', 'client_body_timeout 1s;'),
        location('/ws', 'recording_websocket on;'),
        location('/fake', "recording_redis 127.0.0.1:$FAKE_PORT;\n            recording_redis_read_timeout 1s;"),
        location('/fastfake', "recording_redis 127.0.0.1:$FAKE_PORT;\n            recording_redis_read_timeout 300ms;"),
        location('/patientfake', "recording_redis 127.0.0.1:$FAKE_PORT;\n            recording_redis_read_timeout 1h;"),
    ),
);

my $first = post(uri(''), batch('first'));
is(answer($first), '202 {"status":"queued"}', 'baseline: a normal batch is queued');
my $PID = $first->{headers}{'x-pid'};
ok($PID, "baseline: the worker's pid is known (" . ($PID // 'none') . ')');

# After an attack: the same worker still queues a normal batch, and nothing
# alarming was logged since the previous check.
my $LOG_SEEN = 0;
my $HEALTH = 0;
sub healthy {
    my ($t) = @_;
    my $res = post(uri(''), batch('healthy-' . ++$HEALTH), timeout => 5);
    is(answer($res), '202 {"status":"queued"}', "$t: a normal batch is still queued");
    is($res->{headers}{'x-pid'} // 'none', $PID, "$t: by the same worker (pid $PID, no crash)");
    my $log = error_log_text();
    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, substr($log, $LOG_SEEN);
    $LOG_SEEN = length $log;
    ok(!@bad, "$t: no alert/crit/emerg/crash logged") or diag(join "\n", @bad);
    $PID = $res->{headers}{'x-pid'} if $res->{headers}{'x-pid'};   # one crash, one failure
}

# No test here times a request: where an answer must come "at once", the
# timeout that would otherwise give it is far longer than the request's own
# (a hang guard), so the wrong path gets no status; where a timeout must be
# what answered, its log line says so.  Linear work is counted, not timed,
# in t/unit (batch_validator_test.cpp, Scale: key_check_steps()).

# ===========================================================================
# 1. Limits
# ===========================================================================

{
    my $t = 'decoded size, default 2m';
    my $max = 2 * 1024 * 1024;
    is(answer(post(uri(''), batch_of_size('lim', $max))), '202 {"status":"queued"}',
       "$t: identity body of exactly 2 MiB is queued");
    is(answer(post(uri(''), batch_of_size('lim', $max + 1))), '413 {"error":"payload_too_large"}',
       "$t: identity body of 2 MiB + 1 byte is refused");
    is(answer(post_gzip(uri(''), gzip_bytes(batch_of_size('lim', $max)))), '202 {"status":"queued"}',
       "$t: gzip body decoding to exactly 2 MiB is queued");
    is(answer(post_gzip(uri(''), gzip_bytes(batch_of_size('lim', $max + 1)))), '413 {"error":"payload_too_large"}',
       "$t: gzip body decoding to 2 MiB + 1 byte is refused");
    healthy($t);
}
{
    my $t = 'decoded size, recording_max_decoded_size 64k';
    is(answer(post(uri('/small'), batch_of_size('lim', 65536))), '202 {"status":"queued"}',
       "$t: 64 KiB is queued");
    is(answer(post(uri('/small'), batch_of_size('lim', 65537))), '413 {"error":"payload_too_large"}',
       "$t: 64 KiB + 1 is refused");
    my $res = post_gzip(uri('/small'), gzip_bomb(64), timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: a 64 MiB gzip bomb is refused");
    healthy($t);
}
{
    my $t = 'compressed size, client_max_body_size';
    srand(42);
    my $noise = join '', map { chr(int rand 256) } 1 .. 150_000;   # does not compress
    my $res = post_gzip(uri('/small'), gzip_bytes($noise));
    is($res->{status}, 413, "$t: a compressed body over client_max_body_size gets nginx's 413");
    unlike($res->{body} // '', qr/payload_too_large/, "$t: nginx's own page, before the module");
    healthy($t);
}
{
    my $t = 'events';
    my $events = sub { my ($n) = @_; return '{"session_id":"ev","seq":0,"events":[' . join(',', ($EVENT) x $n) . ']}' };
    is(answer(post(uri(''), $events->(10_000))), '202 {"status":"queued"}', "$t: 10,000 events (the default limit) are queued");
    is(answer(post(uri(''), $events->(10_001))), '400 {"error":"invalid_events"}', "$t: 10,001 are refused");
    is(answer(post(uri('/small'), $events->(100))), '202 {"status":"queued"}', "$t: recording_max_events 100: 100 are queued");
    is(answer(post(uri('/small'), $events->(101))), '400 {"error":"invalid_events"}', "$t: recording_max_events 100: 101 are refused");
    healthy($t);
}
{
    my $t = 'depth';
    # The document's depth is the nested arrays in `data` plus 3.  The
    # default is 128 (README); 1000 is the legacy layer's (lua-cjson) limit.
    is(answer(post(uri(''), nested_batch('deep', 125))), '202 {"status":"queued"}', "$t: default: 128 levels are queued");
    is(answer(post(uri(''), nested_batch('deep', 126))), '400 {"error":"invalid_json"}', "$t: default: 129 levels are refused");
    is(answer(post(uri('/d1000'), nested_batch('deep', 997))), '202 {"status":"queued"}', "$t: recording_max_depth 1000: 1000 levels are queued");
    is(answer(post(uri('/d1000'), nested_batch('deep', 998))), '400 {"error":"invalid_json"}', "$t: recording_max_depth 1000: 1001 levels are refused");
    is(answer(post(uri('/d128'), nested_batch('deep', 125))), '202 {"status":"queued"}', "$t: recording_max_depth 128: 128 levels are queued");
    is(answer(post(uri('/d128'), nested_batch('deep', 126))), '400 {"error":"invalid_json"}', "$t: recording_max_depth 128: 129 levels are refused");
    is(answer(post(uri('/d128'), nested_batch('deep', 126, '{"a":', '}'))), '400 {"error":"invalid_json"}',
       "$t: recording_max_depth 128: 129 levels of objects are refused");
    is(answer(post(uri('/d100k'), nested_batch('deep', 99_997))), '202 {"status":"queued"}',
       "$t: recording_max_depth 100000: 100,000 levels are queued (no recursion)");
    is(answer(post(uri('/d100k'), nested_batch('deep', 99_998))), '400 {"error":"invalid_json"}',
       "$t: recording_max_depth 100000: 100,001 levels are refused");

    # A million levels: 2 MB of brackets, sent gzip'd.
    my $million = nested_batch('deep', 1_000_000);
    cmp_ok(length $million, '<', 2 * 1024 * 1024, "$t: the million-level document fits in 2 MiB");
    for my $prefix ('', '/d1000', '/d100k') {
        my $res = post_gzip(uri($prefix), gzip_bytes($million), timeout => 30);
        is(answer($res), '400 {"error":"invalid_json"}', "$t: a million levels at $prefix/v1 are refused");
    }
    my $unclosed = batch('deep', data => '[' x 1_000_000);
    is(answer(post_gzip(uri('/d100k'), gzip_bytes($unclosed))), '400 {"error":"invalid_json"}',
       "$t: a million unclosed brackets are refused");
    is(answer(post_gzip(uri('/d100k'), gzip_bytes(nested_batch('deep', 300_000, '{"a":', '}')))), '400 {"error":"invalid_json"}',
       "$t: 300,000 levels of objects are refused");
    healthy($t);
}
{
    my $t = 'client_body_timeout';
    my $body = batch('slow');
    my $s = connect_nginx();
    send_all($s, "POST " . uri('/slow') . " HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                 . length($body) . "\r\n\r\n" . substr($body, 0, 10));
    my ($raw, $closed) = read_until_close($s, 30);   # a hang guard
    close $s;
    ok($closed, "$t: a client that stops sending its body is dropped");
    # Why: nginx ended the request with 408 Request Time-out, which only its
    # body read timer (client_body_timeout) gives here.
    my $slow_uri = uri('/slow');
    my $access = '';
    poll_until(5, sub {
        $access = do { open my $fh, '<', servroot() . '/logs/access.log'; local $/; $fh ? <$fh> : '' } // '';
        $access =~ /"POST \Q$slow_uri\E HTTP\/1\.1" \d/;
    });
    like($access, qr/"POST \Q$slow_uri\E HTTP\/1\.1" 408 /,
         "$t: by client_body_timeout: the access log has the request ending in 408");
    ok($raw eq '' || $raw =~ m{^HTTP/1\.1 408 }, "$t: with nginx's 408 if anything")
        or diag("got: " . substr($raw, 0, 200));
    healthy($t);
}
no_crash('limits');

# ===========================================================================
# 2. Compression
# ===========================================================================

{
    my $t = 'gzip bomb';
    my $bomb = gzip_bomb(1024);
    cmp_ok(length $bomb, '<', 1_200_000, "$t: 1 GiB of zeros compresses to " . length($bomb) . ' bytes');
    my $res = post_gzip(uri(''), $bomb, timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: 413 payload_too_large");
    $res = post_deflate(uri(''), $bomb, timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: the same sent as deflate");
    $res = post_gzip(uri(''), substr($bomb, 0, 500_000), timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: cut in half: too large before it is found truncated");
    healthy($t);

    $t = 'zlib bomb';
    $res = post_deflate(uri(''), zlib_bomb(1024), timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: 413 payload_too_large");
    healthy($t);

    $t = 'nested gzip';
    my $nested = gzip_bytes($bomb);
    cmp_ok(length $nested, '<', 20_000, "$t: gzip of the 1 GiB bomb is " . length($nested) . ' bytes');
    $res = post_gzip(uri(''), $nested, timeout => 30);
    is(answer($res), '400 {"error":"invalid_json"}',
       "$t: decoded once, the body is the inner gzip stream (1 MB), which is not JSON");
    $res = post_gzip(uri(''), gzip_bytes(gzip_bomb(3072)), timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}',
       "$t: a gzip of a 3 GiB bomb decodes once to 3 MB: too large");

    $t = 'many members';
    $res = post_gzip(uri(''), gzip_bomb(1) x 3, timeout => 30);
    is(answer($res), '413 {"error":"payload_too_large"}', "$t: three 1 MiB members add up past the limit");
    my $empty = gzip_bytes('');
    $res = post_gzip(uri(''), $empty x 100_000, timeout => 30);
    is(answer($res), '400 {"error":"invalid_json"}', "$t: 100,000 empty members decode to nothing: not JSON");
    healthy($t);
}
{
    my $t = 'truncated';
    my $doc = batch('trunc', data => '"' . ('abcdefgh' x 200) . '"');
    my $gz = gzip_bytes($doc);
    my $z = deflate_bytes($doc);
    for my $case (['cut in the deflate data', substr($gz, 0, length($gz) / 2)],
                  ['cut in the trailer', substr($gz, 0, length($gz) - 3)],
                  ['only the header', substr($gz, 0, 10)],
                  ['only the magic bytes', "\x1f\x8b"]) {
        is(answer(post_gzip(uri(''), $case->[1])), '400 {"error":"invalid_encoding"}',
           "$t gzip, $case->[0]: invalid_encoding");
    }
    is(answer(post_deflate(uri(''), substr($z, 0, length($z) - 2))), '400 {"error":"invalid_encoding"}',
       "$t zlib, cut in the checksum: invalid_encoding");
    is(answer(post_gzip(uri(''), $gz . substr($gz, 0, 15))), '400 {"error":"invalid_encoding"}',
       "$t: a complete member and the start of a second: invalid_encoding");
    healthy($t);
}
{
    my $t = 'concatenated members';
    clear_queue();
    my ($a, $b) = ('{"session_id":"cat","seq":0,', '"events":[{"type":3,"timestamp":1,"data":{"adds":[]}}]}');
    is(answer(post_gzip(uri(''), gzip_bytes($a) . gzip_bytes($b))), '202 {"status":"queued"}', "$t: two members: 202");
    my $el = queued_element();
    is(client_text($el), $a . $b, "$t: the element is the concatenation plus _ingest");
    ok(eval { $JSON->decode($el // ''); 1 }, "$t: and valid JSON");

    clear_queue();
    my @parts = ('{"session_id":"cat3",', '', '"seq":1,"events":[', $EVENT, ']}');
    is(answer(post_gzip(uri(''), join '', map { gzip_bytes($_) } @parts)), '202 {"status":"queued"}',
       "$t: five members, one of them empty: 202");
    is(client_text(queued_element()), join('', @parts), "$t: the element is their concatenation");

    clear_queue();
    is(answer(post_deflate(uri(''), deflate_bytes($a) . gzip_bytes($b))), '202 {"status":"queued"}',
       "$t: a zlib stream followed by a gzip member: 202");
    is(client_text(queued_element()), $a . $b, "$t: decoded as their concatenation");
    is(answer(post_gzip(uri(''), gzip_bytes($a) . deflate_bytes($b))), '400 {"error":"invalid_encoding"}',
       "$t: a gzip member followed by a zlib stream (not a gzip member): invalid_encoding");
    healthy($t);
}
{
    my $t = 'trailing garbage';
    my $doc = batch('trail');
    for my $case (['text', 'garbage'], ['one NUL byte', "\0"], ['NUL padding', "\0" x 512],
                  ['a newline', "\n"], ['half a gzip magic', "\x1f"], ['random bytes', "\xde\xad\xbe\xef" x 8]) {
        is(answer(post_gzip(uri(''), gzip_bytes($doc) . $case->[1])), '400 {"error":"invalid_encoding"}',
           "$t after a gzip member ($case->[0]): invalid_encoding");
    }
    is(answer(post_deflate(uri(''), deflate_bytes($doc) . 'garbage')), '400 {"error":"invalid_encoding"}',
       "$t after a zlib stream: invalid_encoding");
    is(answer(post_gzip(uri(''), gzip_bomb(1) . 'garbage')), '400 {"error":"invalid_encoding"}',
       "$t after a 1 MiB member: invalid_encoding");
    healthy($t);
}
no_crash('compression');

# ===========================================================================
# 3. JSON
# ===========================================================================

{
    my $t = 'huge string';
    clear_queue();
    my $doc = batch('str', data => '{"text":"' . ('x' x 1_900_000) . '"}');
    is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: a 1.9 MB string value is queued");
    my $el = queued_element();
    ok(defined($el) && (client_text($el) // '') eq $doc, "$t: the element is the body plus _ingest")
        or diag('element length ' . length($el // ''));

    clear_queue();
    my $escapes = join '', map { $_ x 20_000 } '\\"', '\\\\', '\\/', '\\b\\f\\n\\r\\t', '\\u00e9\\u0000', '\\ud83d\\ude00';
    $doc = batch('esc', data => qq({"text":"$escapes"}));
    is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: " . length($escapes) . ' bytes of escapes are queued');
    is(client_text(queued_element()), $doc, "$t: escapes pass through untouched");

    clear_queue();
    my $key = 'k' x 1_900_000;
    $doc = batch('key', extra => qq(,"$key":1));
    is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: a 1.9 MB top-level key is queued");
    is(client_text(queued_element()), $doc, "$t: and kept");
    healthy($t);
}
{
    my $t = 'huge numbers';
    my $num = sub { my ($n) = @_; return batch('num', data => qq({"n":$n})) };
    my @refused = (
        ['a 100,000-digit integer', '9' x 100_000],
        ['a 400-digit integer', '1' . ('0' x 399)],
        ['a negative 400-digit integer', '-1' . ('0' x 399)],
        ['1e400', '1e400'],
        ['-1e400', '-1e400'],
        ['2e308', '2e308'],
        ['1.8e308', '1.8e308'],
        ['1e99999999999', '1e99999999999'],
    );
    for my $case (@refused) {
        is(answer(post(uri(''), $num->($case->[1]))), '400 {"error":"invalid_json"}',
           "$t: $case->[0] (too large for a double) is invalid_json");
    }
    my @kept = (
        ['a 300-digit integer', '1' . ('0' x 299)],
        ['DBL_MAX', '1.7976931348623157e308'],
        ['1e-400 (underflows to 0, not too large)', '1e-400'],
        ['a 100,000-digit fraction', '0.' . ('3' x 100_000)],
        ['a fraction with 100,000 leading zeros', '0.' . ('0' x 100_000) . '1'],
        ['a 20-digit integer beyond 2^64', '123456789012345678901'],
        ['-0', '-0'],
    );
    for my $case (@kept) {
        clear_queue();
        my $doc = $num->($case->[1]);
        is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: $case->[0] is queued");
        is(client_text(queued_element()), $doc, "$t: $case->[0] is kept as sent");
    }
    is(answer(post(uri(''), batch('num', seq => '1e400'))), '400 {"error":"invalid_json"}', "$t: seq 1e400 is invalid_json");
    is(answer(post(uri(''), '{"session_id":"num","seq":0,"events":[{"type":3,"timestamp":1e400}]}')),
       '400 {"error":"invalid_json"}', "$t: timestamp 1e400 is invalid_json");
    is(answer(post(uri(''), '{"session_id":"num","seq":0,"events":[{"type":3,"timestamp":1e300}]}')),
       '202 {"status":"queued"}', "$t: timestamp 1e300 is a number: queued");
    healthy($t);
}
{
    my $t = 'many keys';
    # Distinct keys of 1 to 3 printable characters.
    my @alphabet = grep { $_ ne '"' && $_ ne '\\' } map { chr } 33 .. 126;
    my $keys = sub {   # the shortest first
        my ($n) = @_;
        my @out;
        my @level = ('');
        while (@out < $n) {
            my @next;
            PREFIX: for my $p (@level) {
                for my $c (@alphabet) {
                    next if "$p$c" eq 'seq';
                    push @next, "$p$c";
                    last PREFIX if @out + @next >= $n;
                }
            }
            push @out, @next;
            @level = @next;
        }
        return @out;
    };
    my @k = $keys->(262_000);
    my $head = '{"session_id":"keys","seq":0,"events":[' . $EVENT . ']';
    my $doc = $head . join('', map { qq(,"$_":0) } @k) . '}';
    cmp_ok(length $doc, '<=', 2 * 1024 * 1024, "$t: 262,000 keys in " . length($doc) . ' bytes');
    clear_queue();
    # (That the work is linear in the keys is counted in t/unit, Scale.)
    my $res = post(uri(''), $doc, timeout => 30);
    is(answer($res), '202 {"status":"queued"}', "$t: 262,000 distinct top-level keys are queued");
    is(client_text(queued_element()), $doc, "$t: the element is the body plus _ingest");
    my $dup = $head . join('', map { qq(,"$_":0) } @k[0 .. $#k - 1]) . qq(,"$k[1000]":1});
    $res = post(uri(''), $dup, timeout => 30);
    is(answer($res), '400 {"error":"invalid_json"}', "$t: the same with a duplicate as the last key is refused");

    # A million keys (8 MB, gzip'd) where the limit allows it.  Validating
    # them takes a second or so of the worker's time; Redis then answers the
    # RPUSH in milliseconds, so the read timeout ("how long a reply from
    # Redis may take", README) must not have run out, even at 250 ms.
    my @m = $keys->(1_000_000);
    my $mdoc = $head . join('', map { qq(,"$_":0) } @m) . '}';
    my $mgz = gzip_bytes($mdoc);
    my $mdup = gzip_bytes(substr($mdoc, 0, -1) . qq(,"$m[-1]":1}));
    $res = post_gzip(uri('/big'), $mgz, timeout => 60);
    is(answer($res), '202 {"status":"queued"}', "$t: a million distinct keys (" . length($mdoc) . ' bytes, recording_max_decoded_size 16m) are queued');
    # nginx writes the access log after the answer: wait for the line.
    my $redis_ms;
    poll_until(5, sub {
        my $big_log = do { open my $fh, '<', servroot() . '/logs/big.log'; local $/; $fh ? <$fh> : '' } // '';
        ($redis_ms) = ($big_log =~ /^\S+ 202 queued ([\d.]+)$/m);
        defined $redis_ms;
    });
    like($redis_ms // 'none', qr/^\d+\.\d{3}$/,
         "$t: the access log has Redis's acknowledgement of that RPUSH (" . ($redis_ms // '?') . ' ms)');
    $res = post_gzip(uri('/bigshort'), $mgz, timeout => 60);
    is(answer($res), '202 {"status":"queued"}',
       "$t: the same batch with recording_redis_read_timeout 250ms is queued too (the reply takes milliseconds)");
    $res = post_gzip(uri('/big'), $mdup, timeout => 60);
    is(answer($res), '400 {"error":"invalid_json"}', "$t: a million keys and a duplicate at the end: refused");

    # One event object with many keys: duplicates are refused there too.
    my @e = @k[0 .. 199_999];
    my $event = '{"type":3,"timestamp":1' . join('', map { qq(,"$_":0) } @e);
    is(answer(post(uri(''), qq({"session_id":"keys","seq":0,"events":[$event}]}))), '202 {"status":"queued"}',
       "$t: an event with 200,000 distinct keys is queued");
    is(answer(post(uri(''), qq({"session_id":"keys","seq":0,"events":[$event,"type":3}]}))), '400 {"error":"invalid_json"}',
       "$t: ... and with its `type` again at the end, refused");

    # That event and many small ones: each event's key set starts empty
    # again, in either order.  (That this costs no work in proportion to the
    # big event's keys is counted in t/unit: Scale,
    # SmallEventsAfterAHugeOneCostTheirOwnKeys.  Posted to /big, whose 10 s
    # Redis read timeout keeps the status about this alone.)
    my $tail = join ',', ('{"type":0,"timestamp":0}') x 9_999;
    my $many = qq({"session_id":"keys","seq":0,"events":[$event},$tail]});
    cmp_ok(length $many, '<=', 2 * 1024 * 1024, "$t: a 200,000-key event and 9,999 small ones in " . length($many) . ' bytes');
    is(answer(post(uri('/big'), qq({"session_id":"keys","seq":0,"events":[$tail,$event}]}), timeout => 30)),
       '202 {"status":"queued"}', "$t: 9,999 small events, then a 200,000-key one: queued");
    is(answer(post(uri('/big'), $many, timeout => 30)), '202 {"status":"queued"}',
       "$t: the same events, the 200,000-key one first: queued");
    my $big = '{"type":3,"timestamp":1' . join('', map { qq(,"$_":0) } @k[0 .. 149_999]) . '}';
    my $empties = ',{}' x 60_000;
    my $res_last = post(uri('/big'), qq({"session_id":"keys","seq":0,"events":[{}$empties,$big]}), timeout => 60);
    my $res_first = post(uri('/big'), qq({"session_id":"keys","seq":0,"events":[$big$empties]}), timeout => 60);
    is(answer($res_last), '400 {"error":"invalid_events"}', "$t: 60,000 empty events, then a 150,000-key one: invalid_events");
    is(answer($res_first), '400 {"error":"invalid_events"}', "$t: a 150,000-key event, then 60,000 empty ones: invalid_events");
    healthy($t);
}
{
    my $t = 'invalid UTF-8';
    my @bad = (
        ['overlong C0 AF', "\xC0\xAF"], ['overlong E0 80 AF', "\xE0\x80\xAF"],
        ['overlong F0 80 80 AF', "\xF0\x80\x80\xAF"], ['surrogate ED A0 80', "\xED\xA0\x80"],
        ['surrogate ED BF BF', "\xED\xBF\xBF"], ['F5', "\xF5\x80\x80\x80"], ['F4 90 (beyond U+10FFFF)', "\xF4\x90\x80\x80"],
        ['FF', "\xFF"], ['FE', "\xFE"], ['a lone continuation byte', "\x80"],
        ['a truncated 2-byte sequence', "\xC3"], ['a truncated 3-byte sequence', "\xE2\x82"],
        ['a truncated 4-byte sequence', "\xF0\x9F\x98"],
    );
    for my $case (@bad) {
        my ($name, $bytes) = @$case;
        is(answer(post(uri(''), batch('utf', data => qq({"s":"a${bytes}b"})))), '400 {"error":"invalid_json"}',
           "$t: $name in a data string");
    }
    for my $case (@bad[0, 3, 7, 12]) {
        my ($name, $bytes) = @$case;
        is(answer(post(uri(''), batch('utf', data => qq({"k${bytes}":1})))), '400 {"error":"invalid_json"}',
           "$t: $name in a key");
        is(answer(post(uri(''), batch('utf', extra => qq(,"page":"$bytes")))), '400 {"error":"invalid_json"}',
           "$t: $name at the end of a top-level string");
    }
    is(answer(post(uri(''), batch('utf') . "\xC3")), '400 {"error":"invalid_json"}', "$t: a lead byte after the object");
    is(answer(post(uri(''), substr(batch('utf', extra => ',"z":"'), 0, -1) . "\xE2\x82")), '400 {"error":"invalid_json"}',
       "$t: the body ends inside a sequence inside a string");
    for my $case (['U+00E9', "\xC3\xA9"], ['U+FFFF', "\xEF\xBF\xBF"], ['U+1F600', "\xF0\x9F\x98\x80"],
                  ['U+10FFFF', "\xF4\x8F\xBF\xBF"], ['U+D7FF', "\xED\x9F\xBF"], ['U+E000', "\xEE\x80\x80"]) {
        clear_queue();
        my $doc = batch('utf', data => qq({"s":"a$case->[1]b","k$case->[1]":1}));
        is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: valid $case->[0] is queued");
        is(client_text(queued_element()), $doc, "$t: valid $case->[0] is kept as sent");
    }
    healthy($t);
}
{
    my $t = 'surrogate escapes';
    for my $esc ('\\ud800', '\\udc00', '\\udfff', '\\ud800\\u0041', '\\udc00\\ud800', '\\ud800\\ud800', '\\ud83d', '\\ude00x') {
        is(answer(post(uri(''), batch('sur', data => qq({"s":"a${esc}b"})))), '400 {"error":"invalid_json"}',
           "$t: $esc in a string");
        is(answer(post(uri(''), batch('sur', extra => qq(,"k$esc":1)))), '400 {"error":"invalid_json"}',
           "$t: $esc in a top-level key");
    }
    is(answer(post(uri(''), batch('sur', data => '"\\udc00"'))), '400 {"error":"invalid_json"}', "$t: \\udc00 as the whole string");
    for my $esc ('\\ud83d\\ude00', '\\uD83D\\uDE00', '\\udbff\\udfff', '\\ud800\\udc00') {
        clear_queue();
        my $doc = batch('sur', data => qq({"s":"a${esc}b","k$esc":1}));
        is(answer(post(uri(''), $doc)), '202 {"status":"queued"}', "$t: the pair $esc is queued");
        is(client_text(queued_element()), $doc, "$t: the pair $esc is kept as sent");
    }
    healthy($t);
}
{
    my $t = 'NUL bytes';
    my $doc = batch('nul');
    is(answer(post(uri(''), batch('nul', data => qq({"s":"a\0b"})))), '400 {"error":"invalid_json"}', "$t: raw inside a string");
    is(answer(post(uri(''), batch('nul', data => qq({"k\0":1})))), '400 {"error":"invalid_json"}', "$t: raw inside a key");
    is(answer(post(uri(''), "$doc\0")), '400 {"error":"invalid_json"}', "$t: after the object");
    is(answer(post(uri(''), "$doc\0garbage")), '400 {"error":"invalid_json"}', "$t: after the object, then more bytes");
    is(answer(post(uri(''), "$doc\n\0")), '400 {"error":"invalid_json"}', "$t: after the object and white space");
    is(answer(post(uri(''), "\0$doc")), '400 {"error":"invalid_json"}', "$t: before the object");
    (my $spaced = $doc) =~ s/,"seq"/,\0"seq"/;
    is(answer(post(uri(''), $spaced)), '400 {"error":"invalid_json"}', "$t: between members");
    is(answer(post(uri(''), "\0" x 1000)), '400 {"error":"invalid_json"}', "$t: nothing but NULs");
    is(answer(post_gzip(uri(''), gzip_bytes("$doc\0"))), '400 {"error":"invalid_json"}', "$t: after the object, gzip'd");
    clear_queue();
    my $escaped = batch('nul', data => '{"s":"a\\u0000b","k\\u0000":1}', extra => ',"x\\u0000a":1,"x\\u0000b":2');
    is(answer(post(uri(''), $escaped)), '202 {"status":"queued"}', "$t: escaped as \\u0000 it is valid JSON: queued");
    is(client_text(queued_element()), $escaped, "$t: and kept as sent (keys differing after the NUL are distinct)");
    is(answer(post(uri(''), batch('nul', extra => ',"x\\u0000a":1,"x\\u0000a":2'))), '400 {"error":"invalid_json"}',
       "$t: \"x\\u0000a\" twice is a duplicate");
    healthy($t);
}
{
    my $t = 'not JSON';
    for my $case (['NaN', batch('nj', data => 'NaN')], ['Infinity', batch('nj', data => '-Infinity')],
                  ['hex', batch('nj', data => '0x10')], ['leading zero', batch('nj', data => '012')],
                  ['trailing comma', batch('nj', data => '[1,2,]')], ['single quotes', batch('nj', data => "'x'")],
                  ['a comment', batch('nj', data => '1 /* c */')], ['raw tab in a string', batch('nj', data => "\"a\tb\"")],
                  ['raw newline in a string', batch('nj', data => "\"a\nb\"")], ['a bad escape', batch('nj', data => '"\\x41"')],
                  ['a short \\u escape', batch('nj', data => '"\\u12"')], ['two objects', batch('nj') . batch('nj')],
                  ['a top-level array', '[' . batch('nj') . ']'], ['empty body', ''], ['white space only', " \n\t "]) {
        is(answer(post(uri(''), $case->[1])), '400 {"error":"invalid_json"}', "$t: $case->[0]");
    }
    is(answer(post(uri(''), batch('nj') . " \r\n\t")), '202 {"status":"queued"}', "$t: trailing white space is JSON: queued");
    healthy($t);
}
{
    my $t = 'duplicate keys';
    for my $case (['seq twice', '{"session_id":"dup","seq":0,"seq":1,"events":[' . $EVENT . ']}'],
                  ['session_id twice', '{"session_id":"dup","session_id":"dup","seq":0,"events":[' . $EVENT . ']}'],
                  ['events twice', '{"session_id":"dup","seq":0,"events":[' . $EVENT . '],"events":[' . $EVENT . ']}'],
                  ['an escaped repeat of seq', '{"session_id":"dup","seq":0,"s\\u0065q":0,"events":[' . $EVENT . ']}'],
                  ['another key twice', batch('dup', extra => ',"page":1,"page":1')],
                  ['an escaped repeat of another key', batch('dup', extra => ',"p\\u00e9":1,"p' . "\xC3\xA9" . '":1')],
                  ['_ingest twice', batch('dup', extra => ',"_ingest":1,"_ingest":2')],
                  ['type twice in an event', '{"session_id":"dup","seq":0,"events":[{"type":3,"type":3,"timestamp":1}]}'],
                  ['data twice in an event', '{"session_id":"dup","seq":0,"events":[{"type":3,"timestamp":1,"data":{},"data":{}}]}'],
                  ['an escaped repeat in the second event', '{"session_id":"dup","seq":0,"events":[' . $EVENT
                                                            . ',{"type":3,"timestamp":1,"t\\u0069mestamp":2}]}']) {
        is(answer(post(uri(''), $case->[1])), '400 {"error":"invalid_json"}', "$t: $case->[0]: invalid_json");
    }
    for my $case (['in event data', batch('dup', data => '{"a":1,"a":2,"b":{"c":[{"d":1,"d":{"e":0,"e":0}}]},"b":null}')],
                  ['in event data, escaped', batch('dup', data => '{"type":1,"t\\u0079pe":2}')],
                  ['in another top-level member', batch('dup', extra => ',"page":{"x":1,"x":2,"events":[{"a":1,"a":1}]}')],
                  ['in objects of a top-level array', batch('dup', extra => ',"list":[{"type":1,"type":2}]')]) {
        clear_queue();
        is(answer(post(uri(''), $case->[1])), '202 {"status":"queued"}', "$t $case->[0]: queued");
        is(client_text(queued_element()), $case->[1], "$t $case->[0]: passed through untouched");
    }
    healthy($t);
}
{
    my $t = 'client _ingest';
    my $rest = '"session_id":"ing","seq":0,"events":[{"type":3,"timestamp":1,"data":{"_ingest":{"site_id":7}}}]';
    for my $case (
        ['first', qq({"_ingest":{"site_id":99,"ip":"6.6.6.6"},$rest}), qq({$rest})],
        ['first, spaced', qq({ "_ingest" : [1,{"a":"}"}] ,\n $rest }), qq({ $rest })],
        ['middle', qq({"session_id":"ing","_ingest":"forged","seq":0,"events":[$EVENT]}), qq({"session_id":"ing","seq":0,"events":[$EVENT]})],
        ['middle, spaced', qq({"session_id":"ing" , "_ingest" : {"x":[]} , "seq":0,"events":[$EVENT]}),
                           qq({"session_id":"ing" , "seq":0,"events":[$EVENT]})],
        ['last', qq({$rest,"_ingest":{"site_id":1,"received_at":0}}), qq({$rest})],
        ['last, spaced', qq({$rest ,\n "_ingest" : null \n}), qq({$rest \n})],
        ['escaped key', qq({$rest,"\\u005f\\u0069ngest":1}), qq({$rest})],
        ['nested only', qq({$rest,"page":{"_ingest":1},"x":[{"_ingest":2}]}), qq({$rest,"page":{"_ingest":1},"x":[{"_ingest":2}]})],
        ['in the event itself', qq({"session_id":"ing","seq":0,"events":[{"type":3,"_ingest":{"a":1},"timestamp":1}]}),
                                qq({"session_id":"ing","seq":0,"events":[{"type":3,"_ingest":{"a":1},"timestamp":1}]})],
    ) {
        my ($name, $sent, $kept) = @$case;
        clear_queue();
        is(answer(post(uri(''), $sent)), '202 {"status":"queued"}', "$t $name: queued");
        my $el = queued_element();
        is(client_text($el), $kept, "$t $name: the client's _ingest is gone, nested ones untouched");
        my $doc = eval { $JSON->decode($el // '') };
        ok($doc && ref $doc->{_ingest} eq 'HASH' && ($doc->{_ingest}{site_id} // 0) == 1
           && keys %{ $doc->{_ingest} } == 6, "$t $name: the top-level _ingest is the server's")
            or diag($el);
    }
    healthy($t);
}
no_crash('json');

# ===========================================================================
# 4. Headers and site ids
# ===========================================================================

{
    my $t = 'hostile headers';
    my $ua = "a\x01b\x1fc\x7fd\xffe\xc0\xafg\xe2\x82h i\x08j\x0bk\x0cl\tm \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80 \xed\xa0\x80 z";
    my $want_ua = "a\x{01}b\x{1f}c\x{7f}d\x{FFFD}e\x{FFFD}\x{FFFD}g\x{FFFD}h i\x{08}j\x{0b}k\x{0c}l\tm \"q\" \\ \x{e9} \x{1F600} \x{FFFD}\x{FFFD}\x{FFFD} z";
    my $country = "D\x01\xffE\xc3";
    clear_queue();
    my $res = post(uri(''), batch('hdr'), headers => ['User-Agent' => $ua, 'CloudFront-Viewer-Country' => $country]);
    is(answer($res), '202 {"status":"queued"}', "$t: queued");
    my $el = queued_element() // '';
    my $doc = eval { $JSON->decode($el) };
    ok($doc, "$t: the element is valid JSON in valid UTF-8") or diag($@);
    is($doc && $doc->{_ingest}{user_agent}, $want_ua, "$t: User-Agent: bad bytes are U+FFFD, control characters kept");
    is($doc && $doc->{_ingest}{country}, "D\x{01}\x{FFFD}E\x{FFFD}", "$t: country: the same");
    like($el, qr/"user_agent":"a\\u0001b\\u001fc\x7fd/, "$t: control characters are \\u00XX escapes");
    like($el, qr/"country":"D\\u0001\xEF\xBF\xBDE\xEF\xBF\xBD"/, "$t: in the country too");
    unlike($el, qr/[\x00-\x1f]/, "$t: no raw control character in the element");

    clear_queue();
    my $long = "\xff" x 4000;
    is(answer(post(uri(''), batch('hdr'), headers => ['User-Agent' => $long, 'CloudFront-Viewer-Country' => "\x80" x 100])),
       '202 {"status":"queued"}', "$t: 4,000 bad bytes in User-Agent: queued");
    $doc = eval { $JSON->decode(queued_element() // '') };
    is($doc && $doc->{_ingest}{user_agent}, "\x{FFFD}" x 4000, "$t: each one replaced");
    is($doc && $doc->{_ingest}{country}, "\x{FFFD}" x 100, "$t: in the country too");
    healthy($t);
}
{
    my $t = 'site ids';
    clear_queue();
    is(answer(post(uri('', 9999999999), batch('site'))), '202 {"status":"queued"}', "$t: 9999999999 (10 digits, beyond 2^32): queued");
    my $el = queued_element() // '';
    like($el, qr/"_ingest":\{"site_id":9999999999,/, "$t: _ingest.site_id is 9999999999 exactly");
    my $doc = eval { $JSON->decode($el) };
    is($doc && $doc->{_ingest}{site_id}, 9999999999, "$t: and parses as that integer");
    clear_queue();
    is(answer(post(uri('', 4294967296), batch('site'))), '202 {"status":"queued"}', "$t: 4294967296 (2^32): queued");
    like(queued_element() // '', qr/"_ingest":\{"site_id":4294967296,/, "$t: _ingest.site_id is 4294967296, not 0");
    clear_queue();
    is(answer(post(uri('', '0000000000'), batch('site'))), '202 {"status":"queued"}', "$t: 0000000000: queued");
    like(queued_element() // '', qr/"_ingest":\{"site_id":0,/, "$t: _ingest.site_id is 0");
    for my $id ('99999999999', '10000000000', '00000000001', '1' x 20, '9' x 400) {
        is(answer(post(uri('', $id), batch('site'))), '404 {"error":"unknown_site"}',
           "$t: " . length($id) . ' digits (' . (length $id > 20 ? substr($id, 0, 12) . '...' : $id) . '): unknown_site');
    }
    healthy($t);
}
no_crash('headers');

# ===========================================================================
# 5. Pipelined keep-alive requests mixing good and bad batches
# ===========================================================================

{
    my $t = 'pipelining';
    clear_queue();
    my $u = uri('');
    my $chunked = batch('p9');
    my @requests = (
        [raw_post($u, batch('p1')), 202, '{"status":"queued"}'],
        [raw_post($u, '{"session_id":"p2",'), 400, '{"error":"invalid_json"}'],
        ["GET $u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nGET /", 405, '{"error":"method_not_allowed"}'],
        [raw_post($u, gzip_bytes(batch('p4')), headers => [['Content-Encoding', 'gzip']]), 202, '{"status":"queued"}'],
        [raw_post(uri('', '12345678901'), batch('p5')), 404, '{"error":"unknown_site"}'],
        [raw_post($u, batch('p6'), headers => [['Content-Encoding', 'br']]), 415, '{"error":"unsupported_encoding"}'],
        [raw_post($u, gzip_bomb(3), headers => [['Content-Encoding', 'gzip']]), 413, '{"error":"payload_too_large"}'],
        ["OPTIONS $u HTTP/1.1\r\nHost: localhost\r\nOrigin: https://a.example\r\n\r\n", 204, ''],
        ["POST $u HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
         . join('', map { sprintf("%x\r\n%s\r\n", length, $_) } $chunked =~ /(.{1,7})/gs) . "0\r\n\r\n", 202, '{"status":"queued"}'],
        [raw_post($u, substr(gzip_bytes(batch('p10')), 0, 20), headers => [['Content-Encoding', 'gzip']]), 400, '{"error":"invalid_encoding"}'],
        [raw_post($u, batch('p11', data => qq({"s":"\xC0\xAF"}))), 400, '{"error":"invalid_json"}'],
        [raw_post($u, batch('p12'), close => 1), 202, '{"status":"queued"}'],
    );
    my $s = connect_nginx();
    send_all($s, join '', map { $_->[0] } @requests);
    my ($raw, $closed) = read_until_close($s, 10);
    close $s;
    ok($closed, "$t: the server closed the connection after the last request");
    my @got = split_responses($raw);
    is(scalar @got, scalar @requests, "$t: one response per request");
    is(join(' ', map { $_->{status} } @got), join(' ', map { $_->[1] } @requests), "$t: statuses in order");
    is_deeply([map { $_->{body} } @got], [map { $_->[2] } @requests], "$t: bodies in order");
    is_deeply([map { /"session_id":"(p\d+)"/ ? $1 : '?' } queue_elements()], [qw(p1 p4 p9 p12)],
              "$t: the four good batches landed, in order");
    my %pids = map { ($_->{headers}{'x-pid'} // 'none') => 1 } @got;
    is_deeply([keys %pids], [$PID], "$t: all answered by the same worker");
    healthy($t);
}

# ===========================================================================
# 6. Clients that disconnect before, during and after the Redis push
# ===========================================================================

{
    my $t = 'disconnect before the push';
    my $body = batch('gone-before');
    for my $case (['half the body, then FIN', substr($body, 0, length($body) / 2), 0],
                  ['half the body, then RST', substr($body, 0, length($body) / 2), 1],
                  ['the headers only', '', 0],
                  ['half of a gzip body', substr(gzip_bytes($body), 0, 20), 0]) {
        my $s = connect_nginx();
        send_all($s, "POST " . uri('') . " HTTP/1.1\r\nHost: localhost\r\nContent-Length: " . length($body) . "\r\n\r\n$case->[1]");
        $case->[2] ? reset_close($s) : close($s);
    }
    my $s = connect_nginx();   # a gzip bomb, cut off mid-way
    my $bomb = gzip_bomb(1024);
    send_all($s, "POST " . uri('') . " HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: gzip\r\nContent-Length: "
                 . length($bomb) . "\r\n\r\n" . substr($bomb, 0, 300_000));
    reset_close($s);
    sleep 0.2;
    healthy($t);
}
{
    my $t = 'disconnect during the push';
    fake_mode('delay');
    my $before = length fake_commands();
    my $fake = post(uri('/fake', 601), batch('during-0'));
    is(answer($fake), '202 {"status":"queued"}', "$t: the slow fake Redis queues a batch (300 ms)");
    for my $i (1 .. 4) {   # FIN at once, or RST once the RPUSH is out
        my $s = connect_nginx();
        send_all($s, raw_post(uri('/fake', 601), batch("during-$i"), close => 1));
        if ($i % 2) {
            close $s;
        } else {
            poll_until(2, sub { substr(fake_commands(), $before) =~ /RPUSH \S+ .*\{"session_id":"during-$i"/ });
            reset_close($s);
        }
    }
    ok(poll_until(3, sub { my $c = substr(fake_commands(), $before); 4 == grep { $c =~ /RPUSH \S+ .*\{"session_id":"during-$_"/ } 1 .. 4 }),
       "$t: the fake Redis received the RPUSH of each client that hung up");
    sleep 0.5;   # the delayed replies arrive for requests whose clients are gone
    my $res = post(uri('/fake', 601), batch('during-after'));
    is(answer($res), '202 {"status":"queued"}', "$t: the fake Redis's next batch is queued");
    is($res->{headers}{'x-pid'}, $PID, "$t: by the same worker");
    fake_mode('ok');

    # With the real Redis: every batch of a client that hung up lands.
    clear_queue();
    for my $i (1 .. 20) {
        my $s = connect_nginx();
        send_all($s, raw_post(uri(''), batch("gone-$i"), close => 1));
        close $s;
    }
    my $n = 0;
    poll_until(3, sub { ($n = redis_cmd('LLEN', $QUEUE)) >= 20 });
    is($n, 20, "$t: the 20 batches of clients that hung up landed in Redis");
    healthy($t);
}
{
    my $t = 'disconnect after the push';
    clear_queue();
    my $s = connect_nginx();
    send_all($s, raw_post(uri(''), batch('gone-after')));
    ok(poll_until(3, sub { redis_cmd('LLEN', $QUEUE) >= 1 }), "$t: the batch landed");
    sleep 0.1;
    reset_close($s);   # the answer is never read
    $s = connect_nginx();
    send_all($s, raw_post(uri(''), batch('gone-after-2')) x 2);   # two, keep-alive, unread
    ok(poll_until(3, sub { redis_cmd('LLEN', $QUEUE) >= 3 }), "$t: pipelined batches landed");
    close $s;
    healthy($t);
}
no_crash('disconnects');

# ===========================================================================
# 7. Redis faults (the fake server)
# ===========================================================================

my $FAKE = "127\\.0\\.0\\.1:$FAKE_PORT";
sub fake_post { my ($site, $sid) = @_; return post(uri('/fake', $site), batch($sid), timeout => 5) }

for my $case (['OOM', 'oom', qr/\[error\].*recording: redis $FAKE: error reply: OOM command not allowed when used memory > 'maxmemory'\./],
              ['READONLY', 'readonly', qr/\[error\].*recording: redis $FAKE: error reply: READONLY You can't write against a read only replica\./]) {
    my ($name, $mode, $line) = @$case;
    my $t = "redis $name";
    fake_mode($mode);
    my $from = length error_log_text();
    my @a = map { answer(fake_post(700, "$mode-$_")) } 1 .. 2;
    is_deeply(\@a, [('503 {"error":"queue_unavailable"}') x 2], "$t: 503 queue_unavailable for each batch");
    is(count_matches(substr(error_log_text(), $from), $line), 1, "$t: the error reply is logged once, at error, for two batches");
    fake_mode('ok');
    is(answer(fake_post(700, "$mode-ok")), '202 {"status":"queued"}', "$t: 202 once Redis accepts again");
    like(substr(error_log_text(), $from), qr/\[notice\].*recording: redis $FAKE: answering again/, "$t: the recovery is logged");
    healthy($t);
}
{
    my $t = 'redis LOADING on HMGET';
    fake_mode('hmgeterr');
    is(answer(fake_post(701, 'loading')), '503 {"error":"queue_unavailable"}', "$t: a site lookup answered with an error: 503");
    like(error_log_text(), qr/\[error\].*recording: redis $FAKE: error reply: LOADING/, "$t: logged");
    fake_mode('ok');
    is(answer(fake_post(701, 'loading-ok')), '202 {"status":"queued"}', "$t: 202 once Redis answers");
    healthy($t);
}
{
    my $t = 'wrong type at the queue key';
    redis_cmd('SET', $QUEUE, 'not a list');
    my @a = map { answer(post(uri(''), batch("wrongtype-$_"))) } 1 .. 2;
    is_deeply(\@a, [('503 {"error":"queue_unavailable"}') x 2], "$t: 503 queue_unavailable for each batch");
    is(redis_cmd('GET', $QUEUE), 'not a list', "$t: the key is untouched");
    is(count_matches(error_log_text(), qr/\[error\].*recording: redis 127\.0\.0\.1:\d+: error reply: WRONGTYPE/), 1,
       "$t: the error reply is logged once");
    redis_cmd('DEL', $QUEUE);
    healthy($t);
}
{
    my $t = 'redis closes mid-reply';
    fake_mode('midreply');
    # At once, not after a read timeout: /patientfake's is 1h and the
    # request's hang guard 15s, so only the lost connection can answer.
    my $before = error_log_text();
    my $res = post(uri('/patientfake', 702), batch('mid-hmget'), timeout => 15);
    is(answer($res), '503 {"error":"queue_unavailable"}', "$t: HMGET reply cut off: 503, at once (no read timeout)");
    like(substr(error_log_text(), length $before), qr/\[error\].*recording: redis $FAKE: connection lost/,
         "$t: the lost connection is logged");
    unlike(substr(error_log_text(), length $before), qr/no reply in time/, "$t: ... and no read timeout");
    fake_mode('ok');
    is(answer(fake_post(702, 'mid-ok')), '202 {"status":"queued"}', "$t: the server behaves again: 202 (reconnected)");

    fake_mode('midreply');   # site 702 is cached now: the RPUSH reply is cut off
    is(answer(post(uri('/patientfake', 702), batch('mid-rpush'), timeout => 15)), '503 {"error":"queue_unavailable"}',
       "$t: RPUSH reply cut off: 503, at once (no read timeout)");
    fake_mode('ok');
    is(answer(fake_post(702, 'mid-ok-2')), '202 {"status":"queued"}', "$t: and 202 again after that");
    healthy($t);
}
{
    my $t = 'redis never answers';
    fake_mode('silent');
    my $before = error_log_text();
    my $sent = length fake_commands();
    # Nothing but the 300 ms read timeout can answer (the hang guard is 15s).
    my $res = post(uri('/fastfake', 703), batch('silent'), timeout => 15);
    is(answer($res), '503 {"error":"queue_unavailable"}', "$t: 503");
    like(substr(error_log_text(), length $before), qr/\[error\].*recording: redis $FAKE: no reply in time/,
         "$t: by the read timeout: 'no reply in time' logged");
    is(count_matches(substr(fake_commands(), $sent), qr/^silent HMGET recording:site:703 /m), 1,
       "$t: the fake Redis got the site lookup, and never answered it");
    fake_mode('ok');
    # For a second after a timeout, batches are refused at once: without a
    # new connection or command (so no reply to wait for).
    $sent = length fake_commands();
    $res = post(uri('/fastfake', 703), batch('silent-soon'), timeout => 15);
    is(answer($res), '503 {"error":"queue_unavailable"}', "$t: within the retry interval: 503");
    is(substr(fake_commands(), $sent), '', "$t: ... refused at once: nothing was sent to the fake Redis");
    select undef, undef, undef, 1.1;
    is(answer(post(uri('/fastfake', 703), batch('silent-ok'), timeout => 5)), '202 {"status":"queued"}',
       "$t: 202 once it answers again");
    healthy($t);
}

# ===========================================================================
# 8. WebSocket (issue 17): slowloris on frames, a flood of pings, a 2^63-byte
#    length, a decompression bomb in a binary message
# ===========================================================================

sub ws_open {
    my (%o) = @_;
    return ws_connect(uri => uri('/ws', $o{site}), timeout => 10);
}

# The next message as text: an acknowledgement, or what came instead.
sub ws_answer {
    my ($ws) = @_;
    my $m = ws_read_message($ws, timeout => 10);
    return 'none (' . ($ws->{error} // ($ws->{eof} ? 'EOF' : 'nothing')) . ')' unless $m;
    return 'close ' . ($m->{code} // '(no code)') if $m->{opcode} == 8;
    return $m->{payload};
}

sub ws_queued { return qq({"n":$_[0],"status":"queued"}) }

# Mid-attack: a new connection's message is queued too.
sub ws_still_serving {
    my ($t) = @_;
    my $ws = ws_open();
    ws_send_text($ws, batch('ws-probe-' . ++$HEALTH));
    is(ws_answer($ws), ws_queued(1), "$t: meanwhile another connection's message is queued");
    ws_disconnect($ws);
}

{
    my $t = 'websocket slowloris';
    clear_queue();
    # 40 connections, each with one message sent a byte at a time, all of
    # them at once: each holds only its reader's few bytes meanwhile.
    my @frames = map { ws_encode_frame(opcode => 1, payload => batch("ws-slow-$_")) } 1 .. 40;
    my @conns = map { ws_open() } 1 .. 40;
    is(scalar(grep { ($_->{status} // 0) == 101 } @conns), 40, "$t: 40 connections upgraded");
    my $half = int(length($frames[0]) / 2);
    for my $i (0 .. $half - 1) {
        ws_send_raw($conns[$_], substr($frames[$_], $i, 1)) for 0 .. $#conns;
        select undef, undef, undef, 0.005;
    }
    ws_still_serving($t);
    healthy("$t, half-way");
    ws_send_raw($conns[$_], substr($frames[$_], $half)) for 0 .. $#conns;
    my @answers = map { ws_answer($_) } @conns;
    is(scalar(grep { $_ eq ws_queued(1) } @answers), 40, "$t: each slow message is queued once whole")
        or diag(join "\n", @answers);
    is(scalar(grep { /"session_id":"ws-slow-\d+"/ } queue_elements()), 40, "$t: 40 elements in Redis");
    ws_disconnect($_) for @conns;
    healthy($t);
}
{
    my $t = 'websocket ping flood';
    my $ws = ws_open();
    # 20,000 pings in writes of 1,000: every one answered, in order, while
    # the client reads.
    my ($pongs, $last, $in_order) = (0, '', 1);
    for my $round (0 .. 19) {
        ws_send_raw($ws, join '', map { ws_encode_frame(opcode => 9, payload => 'p' . ($round * 1000 + $_)) } 1 .. 1000);
        for (1 .. 1000) {
            my $f = ws_read_frame($ws, timeout => 10) or last;
            last unless ($f->{opcode} // -1) == 10;
            $pongs++;
            $in_order = 0 unless $f->{payload} eq 'p' . $pongs;
        }
    }
    is($pongs, 20_000, "$t: 20,000 pings, 20,000 pongs");
    ok($in_order, "$t: ... each with its ping's payload, in order");
    ws_send_text($ws, batch('ws-after-pings'));
    is(ws_answer($ws), ws_queued(1), "$t: a message after them is queued");
    ws_disconnect($ws);
    healthy($t);
}
{
    my $t = 'websocket 2^63-byte length';
    my $ws = ws_open();
    # A text frame announcing 2^63 - 1 bytes (the most RFC 6455 allows),
    # masked, with nothing behind it: refused from its header, 1009.
    ws_send_raw($ws, "\x81\xff" . pack('NN', 0x7fffffff, 0xffffffff) . "\x01\x02\x03\x04");
    is(ws_answer($ws), 'close 1009', "$t: 2^63 - 1 announced: close 1009 at once");
    ok(ws_wait_eof($ws, timeout => 10), "$t: ... and the connection is closed");
    # 2^63 exactly: the length's top bit set, which RFC 6455 forbids.
    $ws = ws_open();
    ws_send_raw($ws, "\x82\xff" . pack('NN', 0x80000000, 0) . "\x01\x02\x03\x04");
    is(ws_answer($ws), 'close 1002', "$t: 2^63 (top bit set): close 1002");
    healthy($t);
}
{
    my $t = 'websocket decompression bomb';
    my $ws = ws_open();
    # 1 GiB of zeros in about 1 MB of gzip, and the same in zlib.
    ws_send_binary($ws, gzip_bomb(1024));
    is(ws_answer($ws), '{"n":1,"error":"payload_too_large"}', "$t: gzip bomb: payload_too_large");
    ws_send_binary($ws, zlib_bomb(1024));
    is(ws_answer($ws), '{"n":2,"error":"payload_too_large"}', "$t: zlib bomb: payload_too_large");
    ws_send_text($ws, batch('ws-after-bomb'));
    is(ws_answer($ws), ws_queued(3), "$t: the connection goes on: the next message is queued");
    ws_disconnect($ws);
    healthy($t);
}

no_crash('faults');
ok(stop_nginx(), 'nginx stops gracefully');
stop_child($FAKE_PID);

Test::More::done_testing();
