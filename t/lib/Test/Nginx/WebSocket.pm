package Test::Nginx::WebSocket;

# A small blocking RFC 6455 client for integration tests: the opening
# handshake, frames of any shape (masked or not, any opcode, FIN and RSV
# bits, forced or fake length fields, raw bytes), and reading frames and
# whole messages back, every read and write bounded by a timeout.
#
#     use Test::Nginx::Recording;
#     use Test::Nginx::WebSocket;
#     my $ws = ws_connect(uri => '/v1/sites/1/recordings');
#     $ws->{status} == 101 && $ws->{accept_ok} or die;
#     ws_send_text($ws, '{"session_id":"s1",...}');
#     my $msg = ws_read_message($ws);          # {opcode => 1, payload => '...'}
#     ws_close($ws, code => 1000);
#     my $end = ws_read_until_close($ws);      # {close => {code => 1000, ...}, eof => 1}
#
# ws_connect(%o) opens a loopback connection and sends the upgrade request:
#   port      default $ENV{TEST_NGINX_SERVER_PORT} (the harness's server)
#   uri       default '/'
#   key       Sec-WebSocket-Key (default: base64 of 16 random bytes); undef
#             leaves the header out
#   version   Sec-WebSocket-Version (default 13); undef leaves it out
#   upgrade, connection   the Upgrade and Connection values (defaults
#             'websocket' and 'Upgrade'); undef leaves the header out
#   method (GET), protocol (HTTP/1.1), host (the Host value, 'localhost'),
#   headers   more headers, [Name => value, ...]
#   request   raw bytes sent instead of the request built from the above
#   timeout   seconds for the whole handshake (default 10)
# It returns a hash (blessed, so $ws->method(...) works as well):
#   status, reason, headers {lc name => 'v1, v2'}, raw_headers [[n, v], ...],
#   head (the raw response header), key, expected_accept (base64(SHA1(key .
#   GUID)), undef without a key), accept_ok (1: Sec-WebSocket-Accept is the
#   expected value, 0: it is not or is missing; undef when no 101), leftover
#   (bytes that came after a 101's header: frames already sent), body (the
#   body of any other answer, read by Content-Length, chunked or up to EOF),
#   error (a connect, read or parse problem, or undef).
# After a 101 the connection stays open ($ws->{sock}); after any other
# status it is closed.
#
# ws_encode_frame(%o) -> bytes; the same options as ws_send_frame:
#   opcode (default 1), fin (default 1), rsv (the 3 bits, 0 to 7: 4 is RSV1)
#   or rsv1/rsv2/rsv3 flags, payload (bytes; text with wide characters is
#   sent as UTF-8), mask (default 1; 0 sends the frame unmasked), mask_key
#   (4 bytes, default random), length (the length announced, default the
#   payload's: a fake one sends the payload given all the same, e.g.
#   length => 9223372036854775807 with payload ''), length_form ('auto'
#   default, or 7, 16, 64: the length field's form, minimal or not).
# ws_send_frame($ws, %o)              one frame, or raw => $bytes as they are
# ws_send_text($ws, $text, %o)        a text frame (FIN unless fin => 0)
# ws_send_binary($ws, $bytes, %o)     a binary frame
# ws_send_ping($ws, $p, %o) / ws_send_pong($ws, $p, %o)
# ws_send_raw($ws, $bytes)
# ws_close($ws, code => 1000, reason => '')   a close frame (code => undef:
#   an empty close payload)
#   Each returns 1, or 0 with $ws->{error} set (the peer is gone, timeout).
#
# ws_read_frame($ws, timeout => 10) -> one frame:
#   {opcode, fin, rsv, masked, length, length_form (7, 16 or 64), payload,
#    code and reason for a close frame (code undef when the payload is
#    empty; bad_close => 1 for a 1-byte payload)}
#   or undef at EOF ($ws->{eof} = 1), on a reset ($ws->{eof} = 1, error) or
#   on timeout ($ws->{error} = 'timeout').
# ws_read_message($ws, timeout => 10) -> the next data message:
#   {opcode (1 text, 2 binary), payload (fragments joined), frames (their
#    number), control => [control frames read before and between them]};
#   a close frame read first is returned as it is (opcode 8, with
#   control). Control frames also go to @{ $ws->{control} }. undef at EOF or
#   on timeout, as ws_read_frame.
# ws_read_until_close($ws, timeout => 10, eof => 1) -> {close (the close
#   frame or undef), frames (those read before it), eof (1: the peer closed
#   TCP after it, within the timeout; not waited for with eof => 0),
#   after (bytes that came after the close frame), error}
# ws_wait_eof($ws, timeout => 10) -> 1 when the peer closes (EOF or reset)
#   within the timeout, else 0; bytes read meanwhile go to $ws->{after}.
# ws_disconnect($ws)                  closes the socket (no close frame).
#
# ws_accept_key($key) base64(SHA1($key . GUID)); ws_random_key() a fresh
# key; ws_close_payload($code, $reason); ws_parse_frame(\$buf) takes one
# whole frame off the front of $buf (undef when it is incomplete).
#
# Timeouts are hang guards: they are 5 times longer in the harness's
# valgrind mode.

use strict;
use warnings;

use Exporter 'import';
use Digest::SHA ();
use MIME::Base64 ();
use IO::Select ();
use IO::Socket::INET ();
use Time::HiRes qw(time);

our @EXPORT = qw(
    ws_connect ws_accept_key ws_random_key ws_close_payload
    ws_encode_frame ws_parse_frame
    ws_send_frame ws_send_text ws_send_binary ws_send_ping ws_send_pong ws_send_raw ws_close
    ws_read_frame ws_read_message ws_read_until_close ws_wait_eof ws_disconnect
);

our $GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

use constant {
    OP_CONTINUATION => 0x0, OP_TEXT => 0x1, OP_BINARY => 0x2,
    OP_CLOSE => 0x8, OP_PING => 0x9, OP_PONG => 0xA,
};

# The most a frame read back may announce: what a test server sends is far
# smaller, and a broken length must not make the client wait for gigabytes.
our $MAX_READ_FRAME = 64 * 1024 * 1024;

sub _factor {
    my $vg = Test::Nginx::Recording->can('use_valgrind');
    return $vg && $vg->() ? 5 : 1;
}

sub _deadline { my ($t) = @_; return time + ($t // 10) * _factor() }

sub _bytes {
    my ($s) = @_;
    $s = '' unless defined $s;
    utf8::encode($s) if utf8::is_utf8($s);
    return $s;
}

sub ws_accept_key {
    my ($key) = @_;
    return MIME::Base64::encode_base64(Digest::SHA::sha1($key . $GUID), '');
}

sub ws_random_key {
    return MIME::Base64::encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
}

sub ws_close_payload {
    my ($code, $reason) = @_;
    return '' unless defined $code;
    return pack('n', $code) . _bytes($reason);
}

# --------------------------------------------------------------------------
# Socket I/O (non-blocking socket, select with a deadline)
# --------------------------------------------------------------------------

sub _write_all {
    my ($ws, $data, $deadline) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $sock = $ws->{sock} or do { $ws->{error} = 'not connected'; return 0 };
    my $sel = IO::Select->new($sock);
    my $off = 0;
    while ($off < length $data) {
        my $left = $deadline - time;
        if ($left <= 0) { $ws->{error} = 'timeout while sending'; return 0 }
        next unless $sel->can_write($left);
        my $n = syswrite($sock, $data, length($data) - $off, $off);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
            $ws->{error} = "send failed: $!";
            return 0;
        }
        $off += $n;
    }
    return 1;
}

# Appends what comes to $ws->{buf}: the byte count, 0 at EOF (or a reset:
# eof and error set), undef on timeout (error 'timeout').
sub _read_more {
    my ($ws, $deadline) = @_;
    my $sock = $ws->{sock};
    if (!$sock || $ws->{eof}) { $ws->{eof} = 1; return 0 }
    my $sel = IO::Select->new($sock);
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) { $ws->{error} = 'timeout'; return undef }
        next unless $sel->can_read($left);
        my $n = sysread($sock, $ws->{buf}, 65536, length $ws->{buf});
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
            $ws->{error} = "read failed: $!";
            $ws->{reset} = 1 if $!{ECONNRESET};
            $ws->{eof} = 1;
            return 0;
        }
        $ws->{eof} = 1 if $n == 0;
        return $n;
    }
}

# --------------------------------------------------------------------------
# Handshake
# --------------------------------------------------------------------------

sub ws_connect {
    my (%o) = @_;
    my $port = $o{port} // $ENV{TEST_NGINX_SERVER_PORT}
        // die "ws_connect: no port (and TEST_NGINX_SERVER_PORT is not set)\n";
    my $deadline = _deadline($o{timeout});
    my $ws = bless { buf => '', headers => {}, raw_headers => [], control => [],
                     after => '', error => undef }, __PACKAGE__;

    my $key = exists $o{key} ? $o{key} : ws_random_key();
    $ws->{key} = $key;
    $ws->{expected_accept} = defined $key ? ws_accept_key($key) : undef;

    my $req = $o{request};
    unless (defined $req) {
        my %h = (upgrade => 'websocket', connection => 'Upgrade', version => 13);
        for (qw(upgrade connection version)) { $h{$_} = $o{$_} if exists $o{$_} }
        $req = ($o{method} // 'GET') . ' ' . ($o{uri} // '/') . ' ' . ($o{protocol} // 'HTTP/1.1') . "\r\n";
        $req .= 'Host: ' . ($o{host} // 'localhost') . "\r\n";
        $req .= "Upgrade: $h{upgrade}\r\n"                 if defined $h{upgrade};
        $req .= "Connection: $h{connection}\r\n"           if defined $h{connection};
        $req .= "Sec-WebSocket-Key: $key\r\n"              if defined $key;
        $req .= "Sec-WebSocket-Version: $h{version}\r\n"   if defined $h{version};
        my @extra = @{ $o{headers} || [] };
        while (my ($n, $v) = splice @extra, 0, 2) { $req .= "$n: $v\r\n" }
        $req .= "\r\n";
    }

    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                     Timeout => ($o{timeout} // 10) * _factor());
    unless ($sock) {
        $ws->{error} = "cannot connect to 127.0.0.1:$port: $@";
        return $ws;
    }
    $sock->blocking(0);
    $ws->{sock} = $sock;
    return $ws unless _write_all($ws, _bytes($req), $deadline);

    # The response header.
    my $end;
    while (($end = index($ws->{buf}, "\r\n\r\n")) < 0) {
        my $n = _read_more($ws, $deadline);
        next if $n;
        $ws->{error} //= length $ws->{buf} ? 'incomplete response header' : 'empty response';
        $ws->{error} = "no response header: $ws->{error}";
        ws_disconnect($ws);
        return $ws;
    }
    my $head = substr($ws->{buf}, 0, $end + 4, '');
    $ws->{head} = $head;
    my ($status_line, @lines) = split /\r\n/, substr($head, 0, $end);
    unless ($status_line =~ m{^HTTP/\d\.\d\s+(\d{3})(?:\s+(.*))?$}) {
        $ws->{error} = "bad status line: $status_line";
        ws_disconnect($ws);
        return $ws;
    }
    @{$ws}{qw(status reason)} = ($1, $2 // '');
    for my $line (@lines) {
        my ($n, $v) = $line =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @{ $ws->{raw_headers} }, [$n, $v];
        my $h = $ws->{headers};
        $h->{lc $n} = exists $h->{lc $n} ? "$h->{lc $n}, $v" : $v;
    }

    if ($ws->{status} == 101) {
        $ws->{leftover} = $ws->{buf};
        my $got = $ws->{headers}{'sec-websocket-accept'};
        $ws->{accept_ok} = defined $got && defined $ws->{expected_accept}
                           && $got eq $ws->{expected_accept} ? 1 : 0;
        $ws->{error} = undef;
        return $ws;
    }

    # Any other answer: its body, then the connection is done with.
    my $h = $ws->{headers};
    if (($h->{'transfer-encoding'} // '') =~ /chunked/i) {
        my $body = '';
        while (1) {
            if ($ws->{buf} =~ /\A([0-9a-fA-F]+)[^\r\n]*\r\n/) {
                my ($len, $hl) = (hex $1, $+[0]);
                if ($len == 0) { last }
                if (length($ws->{buf}) >= $hl + $len + 2) {
                    $body .= substr($ws->{buf}, $hl, $len);
                    substr($ws->{buf}, 0, $hl + $len + 2, '');
                    next;
                }
            }
            next if _read_more($ws, $deadline);
            $ws->{error} //= 'unterminated chunked body';
            last;
        }
        $ws->{body} = $body;
    } elsif (defined $h->{'content-length'}) {
        my $len = $h->{'content-length'};
        while (length($ws->{buf}) < $len) {
            next if _read_more($ws, $deadline);
            $ws->{error} //= 'short body';
            last;
        }
        $ws->{body} = substr($ws->{buf}, 0, $len);
    } else {
        # Neither: up to EOF, or until nothing came for a second.
        while (!$ws->{eof}) {
            my $n = _read_more($ws, time + 1 * _factor());
            if (!defined $n) { $ws->{error} = undef; last }
        }
        $ws->{body} = $ws->{buf};
    }
    ws_disconnect($ws);
    return $ws;
}

sub ws_disconnect {
    my ($ws) = @_;
    close $ws->{sock} if $ws->{sock};
    delete $ws->{sock};
    return 1;
}

# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

sub ws_encode_frame {
    my (%o) = @_;
    my $opcode  = $o{opcode} // OP_TEXT;
    my $fin     = exists $o{fin} ? ($o{fin} ? 1 : 0) : 1;
    my $rsv     = $o{rsv} // (($o{rsv1} ? 4 : 0) | ($o{rsv2} ? 2 : 0) | ($o{rsv3} ? 1 : 0));
    my $payload = _bytes($o{payload});
    my $mask    = exists $o{mask} ? ($o{mask} ? 1 : 0) : 1;
    my $len     = $o{length} // length $payload;
    my $form    = $o{length_form} // 'auto';
    $form = $len < 126 ? 7 : $len < 65536 ? 16 : 64 if $form eq 'auto';

    my $frame = chr(($fin << 7) | (($rsv & 7) << 4) | ($opcode & 0xF));
    if ($form == 7) {
        die "ws_encode_frame: length $len does not fit the 7-bit form\n" if $len > 125;
        $frame .= chr(($mask << 7) | $len);
    } elsif ($form == 16) {
        die "ws_encode_frame: length $len does not fit the 16-bit form\n" if $len > 65535;
        $frame .= chr(($mask << 7) | 126) . pack('n', $len);
    } elsif ($form == 64) {
        $frame .= chr(($mask << 7) | 127) . pack('Q>', $len);
    } else {
        die "ws_encode_frame: length_form must be auto, 7, 16 or 64\n";
    }
    if ($mask) {
        my $key = $o{mask_key} // pack('C4', map { int rand 256 } 1 .. 4);
        die "ws_encode_frame: mask_key must be 4 bytes\n" unless length $key == 4;
        $frame .= $key . _xor_mask($payload, $key);
    } else {
        $frame .= $payload;
    }
    return $frame;
}

sub _xor_mask {
    my ($data, $key) = @_;
    return '' unless length $data;
    my $stream = substr($key x (int(length($data) / 4) + 1), 0, length $data);
    return "$data" ^ "$stream";
}

# One whole frame off the front of $$buf: the frame, or undef when more
# bytes are needed; {error => ...} when it announces more than we would read.
sub ws_parse_frame {
    my ($buf) = @_;
    return undef if length $$buf < 2;
    my ($b0, $b1) = unpack('C2', $$buf);
    my $len = $b1 & 0x7F;
    my $off = 2;
    my $form = 7;
    if ($len == 126) {
        return undef if length $$buf < 4;
        $len = unpack('n', substr($$buf, 2, 2));
        ($off, $form) = (4, 16);
    } elsif ($len == 127) {
        return undef if length $$buf < 10;
        $len = unpack('Q>', substr($$buf, 2, 8));
        ($off, $form) = (10, 64);
    }
    return { error => "frame announces $len bytes" } if $len > $MAX_READ_FRAME;
    my $masked = ($b1 & 0x80) ? 1 : 0;
    my $key;
    if ($masked) {
        return undef if length $$buf < $off + 4;
        $key = substr($$buf, $off, 4);
        $off += 4;
    }
    return undef if length $$buf < $off + $len;
    my $payload = substr($$buf, $off, $len);
    substr($$buf, 0, $off + $len, '');
    $payload = _xor_mask($payload, $key) if $masked;
    my $f = { fin => ($b0 >> 7) & 1, rsv => ($b0 >> 4) & 7, opcode => $b0 & 0xF,
              masked => $masked, mask_key => $key, length => $len, length_form => $form,
              payload => $payload };
    if ($f->{opcode} == OP_CLOSE) {
        if (length $payload >= 2) {
            $f->{code}   = unpack('n', substr($payload, 0, 2));
            $f->{reason} = substr($payload, 2);
        } elsif (length $payload == 1) {
            $f->{bad_close} = 1;
        }
    }
    return $f;
}

sub ws_send_frame {
    my ($ws, %o) = @_;
    my $bytes = exists $o{raw} ? _bytes($o{raw}) : ws_encode_frame(%o);
    return _write_all($ws, $bytes, _deadline($o{timeout}));
}

sub ws_send_raw    { my ($ws, $b, %o) = @_; return ws_send_frame($ws, %o, raw => $b) }
sub ws_send_text   { my ($ws, $p, %o) = @_; return ws_send_frame($ws, opcode => OP_TEXT,   %o, payload => $p) }
sub ws_send_binary { my ($ws, $p, %o) = @_; return ws_send_frame($ws, opcode => OP_BINARY, %o, payload => $p) }
sub ws_send_ping   { my ($ws, $p, %o) = @_; return ws_send_frame($ws, opcode => OP_PING,   %o, payload => $p) }
sub ws_send_pong   { my ($ws, $p, %o) = @_; return ws_send_frame($ws, opcode => OP_PONG,   %o, payload => $p) }

sub ws_close {
    my ($ws, %o) = @_;
    my $code = exists $o{code} ? $o{code} : 1000;
    return ws_send_frame($ws, %o, opcode => OP_CLOSE, payload => ws_close_payload($code, $o{reason}));
}

sub _read_frame_by {
    my ($ws, $deadline) = @_;
    while (1) {
        my $f = ws_parse_frame(\$ws->{buf});
        if ($f && $f->{error}) { $ws->{error} = $f->{error}; return undef }
        return $f if $f;
        my $n = _read_more($ws, $deadline);
        next if $n;
        return undef;   # EOF, reset or timeout: $ws says which
    }
}

sub ws_read_frame {
    my ($ws, %o) = @_;
    return _read_frame_by($ws, _deadline($o{timeout}));
}

sub ws_read_message {
    my ($ws, %o) = @_;
    my $deadline = _deadline($o{timeout});
    my (@control, $msg);
    while (1) {
        my $f = _read_frame_by($ws, $deadline) or return undef;
        if ($f->{opcode} >= 8) {
            push @control, $f;
            push @{ $ws->{control} }, $f;
            if ($f->{opcode} == OP_CLOSE) {
                $f->{control} = \@control;
                $f->{inside_message} = 1 if $msg;
                return $f;
            }
            next;
        }
        if (!$msg) {
            $msg = { opcode => $f->{opcode}, payload => '', frames => 0, control => \@control };
            $msg->{error} = 'message begins with a continuation frame' if $f->{opcode} == OP_CONTINUATION;
        } elsif ($f->{opcode} != OP_CONTINUATION) {
            $msg->{error} //= 'a new data frame inside a fragmented message';
        }
        $msg->{payload} .= $f->{payload};
        $msg->{frames}++;
        $msg->{masked} = 1 if $f->{masked};
        return $msg if $f->{fin};
    }
}

sub ws_wait_eof {
    my ($ws, %o) = @_;
    my $deadline = _deadline($o{timeout});
    while (1) {
        if (length $ws->{buf}) { $ws->{after} .= $ws->{buf}; $ws->{buf} = '' }
        return 1 if $ws->{eof};
        my $n = _read_more($ws, $deadline);
        next if $n;
        return 1 if $ws->{eof};
        return 0;
    }
}

sub ws_read_until_close {
    my ($ws, %o) = @_;
    my $deadline = _deadline($o{timeout});
    my %r = (close => undef, frames => [], eof => 0, after => '');
    while (1) {
        my $f = _read_frame_by($ws, $deadline);
        if (!$f) { $r{eof} = $ws->{eof} ? 1 : 0; $r{error} = $ws->{error}; return \%r }
        if ($f->{opcode} == OP_CLOSE) { $r{close} = $f; last }
        push @{ $r{frames} }, $f;
    }
    if ($o{eof} // 1) {
        my $left = $deadline - time;
        local $ws->{after} = '';
        $r{eof} = ws_wait_eof($ws, timeout => ($left > 0 ? $left : 0) / _factor());
        $r{after} = $ws->{after};
        $r{error} = $ws->{error} if !$r{eof};
    }
    return \%r;
}

1;
