# TLS to Redis: `recording_redis HOST:PORT ssl [login]`, `... cluster ssl`
# and the http-level recording_redis_ssl_* directives, against TLS-only
# redis-servers (--port 0 --tls-port P) and a test CA made here with
# openssl. What is checked, by section:
#    0. the harness pieces on their own (no nginx): certificates, TLS-only
#       servers, the TLS client, the fake peers;
#    1. batches land byte for byte over TLS (plain, gzip, large bodies and
#       replies, a burst);
#    2. AUTH over TLS: password=, user= (ACL), db=; a wrong password;
#    3. a client certificate (--tls-auth-clients yes): with it, without it,
#       from another CA;
#    4. verification: a wrong CA, a wrong name, verify off, the system's CA
#       store, the default names (localhost and 127.0.0.1) and SNI;
#    5. a protocol mismatch (TLSv1.2-only Redis, TLSv1.3-only module);
#    6. a handshake never answered: recording_redis_connect_timeout;
#    7. a handshake cut (after the ClientHello, inside the ServerHello, a
#       plain-TCP Redis);
#    8. close_notify in the middle of a reply;
#    9. a Redis Cluster of TLS nodes (--tls-cluster yes);
#   10. the spool under load while the TLS Redis stops and starts again;
#   11. recording_health over TLS;
#   12. nginx -t: missing files, a certificate without its key, ssl with a
#       unix: address.
# A failure of Redis is [error] once per change of state (answering,
# failing), whatever the number of batches; the answer is 503, or 202 from
# the spool. No assertion is on time: timeouts are shown by which log line
# answered, with read timeouts of an hour and hang guards of seconds.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use Test::Nginx::RedisTls;
use Test::Nginx::RedisCluster;
use Test::Nginx::Recording::Load;
use Compress::Zlib ();
use File::Path qw(make_path remove_tree);
use IO::Select ();
use POSIX ();
use IO::Socket::INET ();
use JSON::PP ();
use Socket ();
use Time::HiRes qw(time sleep);

my $why = Test::Nginx::RedisTls::unavailable();
plan(skip_all => $why) if $why;
plan('no_plan');

$SIG{PIPE} = 'IGNORE';
my $JSON = JSON::PP->new;

my $QUEUE = 'recording:queue:0';   # shards default to 1
my $QUEUED = '202 {"status":"queued"}';
my $UNAVAILABLE = '503 {"error":"queue_unavailable"}';

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

my $SEQ = 0;
sub batch {
    my ($session, $seq) = @_;
    return qq({"session_id":"$session","seq":) . ($seq // $SEQ++) . qq(,"events":[{"type":3,"timestamp":1700000000000}]});
}

# The endpoint under $prefix, with the worker's pid in X-Pid.
sub loc {
    my ($prefix, $extra) = @_;
    return <<"CONF";
        location ~ "^$prefix/v1/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            add_header X-Pid \$pid always;
            $extra
        }
CONF
}

sub post {
    my (%o) = @_;
    my $site = $o{site} // 1;
    return http_request(method => 'POST', uri => ($o{prefix} // '') . "/v1/sites/$site/recordings",
                        body => $o{body} // batch($o{session} // 'tls'), timeout => $o{timeout} // 15,
                        headers => ['Content-Type' => 'application/json', @{ $o{headers} || [] }]);
}

sub answer { my ($res) = @_; return ($res->{status} // 'none') . ' ' . ($res->{body} // '') }

sub raw_post {
    my ($prefix, $site, $body) = @_;
    return "POST $prefix/v1/sites/$site/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
         . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
}

sub status_of { return ($_[0] // '') =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 'none' }

# The element without the server's `_ingest` (the last member): the client's bytes.
sub client_bytes {
    my ($element) = @_;
    return undef unless defined $element;
    (my $s = $element) =~ s/,"_ingest":\{[^{}]*\}(?=\s*\}\s*\z)//;
    return $s;
}

# The module's lines at [error], [warn] or [notice] about the server $name.
sub lines_about {
    my ($name) = @_;
    return grep { /\[(?:error|notice|warn)\] .*recording: redis \Q$name\E: / } split /\n/, error_log_text();
}

sub count_about {
    my ($name, $what) = @_;
    return scalar grep { /\[error\] .*recording: redis \Q$name\E: $what/ } split /\n/, error_log_text();
}

# The module's [error] lines about $name: exactly one, and it says $what (a regex).
sub one_error_line {
    my ($t, $name, $what, $label) = @_;
    my @errors = grep { /\[error\]/ } lines_about($name);
    is(count_about($name, $what), 1, "$t: exactly one '$label' line")
        or diag(join "\n", lines_about($name));
    is(scalar @errors, 1, "$t: ... and no other [error] line about $name") or diag(join "\n", @errors);
}

# The fake's log lines from line $from (a count read before) on.
sub fake_since {
    my ($dir, $from) = @_;
    my @all = fake_log($dir);
    return @all[$from .. $#all];
}

sub enable_site { my ($r, $site) = @_; $r->cmd('HSET', 'recording:site:' . ($site // 1), 'enabled', 1, 'sample_rate', 1) }
sub llen { my ($r) = @_; return $r->cmd('LLEN', $QUEUE) }
sub elements { my ($r) = @_; return @{ $r->cmd('LRANGE', $QUEUE, 0, -1) } }

# Does localhost resolve to 127.0.0.1, and to nothing else?
sub localhost_is_loopback {
    my ($err, @res) = Socket::getaddrinfo('localhost', 0, { socktype => Socket::SOCK_STREAM() });
    return 0 if $err || !@res;
    for my $r (@res) {
        return 0 unless $r->{family} == Socket::AF_INET();
        my (undef, $ip) = Socket::unpack_sockaddr_in($r->{addr});
        return 0 unless Socket::inet_ntoa($ip) eq '127.0.0.1';
    }
    return 1;
}

# ---------------------------------------------------------------------------
# The servers: a CA, four TLS-only redis-servers, fake peers.
# ---------------------------------------------------------------------------

my $CERTS = make_certs(servroot() . '/tls');
my $CA = $CERTS->{ca};
my $TRUST = "recording_redis_ssl_trusted_certificate $CA;\n";
my $PASSWORD = 'secret';

my $A = Test::Nginx::RedisTls->start(certs => $CERTS);                         # plain TLS
my $B = Test::Nginx::RedisTls->start(certs => $CERTS, password => $PASSWORD);  # --requirepass
my $C = Test::Nginx::RedisTls->start(certs => $CERTS, auth_clients => 'yes');  # client certificates
my $D = Test::Nginx::RedisTls->start(certs => $CERTS, options => ['--tls-protocols', 'TLSv1.2']);
my $FAKE_DIR = servroot() . '/fake-tls';
my ($FAKE_PORT) = start_fake_tls_redis(certs => $CERTS, dir => $FAKE_DIR);
my $FAKE = "127.0.0.1:$FAKE_PORT";
my $LOCALHOST = localhost_is_loopback();

# ---------------------------------------------------------------------------
# 0. The harness on its own: what the tests below stand on.
# ---------------------------------------------------------------------------
section('0. harness', sub {
    my $t = '0. harness';
    my $verify = `openssl verify -CAfile $CA $CERTS->{server_cert} $CERTS->{client_cert} 2>&1`;
    is($?, 0, "$t: the server and client certificates verify against the test CA") or diag($verify);
    my $wrong = `openssl verify -CAfile $CERTS->{wrong_ca} $CERTS->{server_cert} 2>&1`;
    isnt($?, 0, "$t: ... and not against the wrong CA");
    $verify = `openssl verify -CAfile $CERTS->{wrong_ca} $CERTS->{wrong_server_cert} $CERTS->{wrong_client_cert} 2>&1`;
    is($?, 0, "$t: the wrong CA's server and client certificates verify against it") or diag($verify);
    $wrong = `openssl verify -CAfile $CA $CERTS->{wrong_server_cert} 2>&1`;
    isnt($?, 0, "$t: ... and not against the test CA");
    my $text = `openssl x509 -in $CERTS->{server_cert} -noout -ext subjectAltName 2>&1`;
    like($text, qr/DNS:localhost, IP Address:127\.0\.0\.1/, "$t: the server certificate's SAN");
    ok(!grep({ !((stat $_)[2] & 04) } glob("$CERTS->{dir}/*.crt"), glob("$CERTS->{dir}/*.key")),
       "$t: every certificate and key readable by all");

    is($A->cmd('PING'), 'PONG', "$t: a TLS PING answered");
    is_deeply($A->cmd('CONFIG', 'GET', 'port'), ['port', '0'], "$t: no plain-TCP port");
    my $plain = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $A->port, Proto => 'tcp', Timeout => 3);
    my $got = '';
    if ($plain) {
        syswrite($plain, "*1\r\n\$4\r\nPING\r\n");
        IO::Select->new($plain)->can_read(3) and sysread($plain, $got, 100);
        close $plain;
    }
    unlike($got, qr/PONG/, "$t: RESP without TLS on the TLS port gets no PONG");
    ok(!eval { tls_call(port => $A->port, ca => $CERTS->{wrong_ca}, commands => [['PING']]) },
       "$t: the client trusting the wrong CA is refused");
    ok(!eval { tls_call(port => $A->port, ca => $CA, name => 'wrong.example', commands => [['PING']]) },
       "$t: the client checking another name is refused");
    is(tls_call(port => $A->port, ca => $CA, name => 'localhost', commands => [['PING']]), 'PONG',
       "$t: the name localhost verifies");

    like($B->cmd_as_raw({}, 'GET', 'x')->{error} // '', qr/^NOAUTH/, "$t: B wants a password");
    is($B->cmd('PING'), 'PONG', "$t: ... and takes it");
    is($C->cmd('PING'), 'PONG', "$t: C answers a client with the client certificate");
    ok(!eval { tls_call(port => $C->port, ca => $CA, commands => [['PING']]) },
       "$t: ... and not one without");
    ok(!eval { tls_call(port => $C->port, ca => $CA, cert => $CERTS->{wrong_client_cert},
                        key => $CERTS->{wrong_client_key}, commands => [['PING']]) },
       "$t: ... nor one with a certificate of the wrong CA");
    is(tls_call(port => $D->port, ca => $CA, version => 'TLSv1_2', commands => [['PING']]), 'PONG',
       "$t: D speaks TLSv1.2");
    ok(!eval { tls_call(port => $D->port, ca => $CA, version => 'TLSv1_3', commands => [['PING']]) },
       "$t: ... and not TLSv1.3");

    # The fake TLS Redis.
    my @r = tls_call(port => $FAKE_PORT, ca => $CA, commands => [
        ['HMGET', 'recording:site:1', 'enabled', 'sample_rate', 'daily_sessions', 'daily_sessions_pace'],
        ['RPUSH', $QUEUE, 'a', 'b'], ['PING']]);
    is_deeply(\@r, [['1', undef, undef, undef], 2, 'PONG'], "$t: the fake answers HMGET, RPUSH, PING");
    tls_call(port => $FAKE_PORT, ca => $CA, name => 'localhost', sni => 'localhost', commands => [['PING']]);
    my @accepts = grep { /^accept/ } fake_log($FAKE_DIR);
    is("@accepts[-2, -1]", 'accept sni=- accept sni=localhost', "$t: ... and logs the SNI sent, or none");
    for my $case (['cut_hmget', ['HMGET', 'k', 'f', 'g'], "*2\r\n\$1\r\n1\r\n\$10\r\nabc", 0],
                  ['cut_rpush', ['RPUSH', 'k', 'v'], ':1', 1]) {
        my ($mode, $cmd, $partial, $fin) = @$case;
        set_fake_mode($FAKE_DIR, $mode);
        my $s = Test::Nginx::RedisTls::tls_connect(port => $FAKE_PORT, ca => $CA);
        syswrite($s, '*' . @$cmd . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @$cmd));
        my $buf = '';
        while (IO::Select->new($s)->can_read(5) || $s->pending) {
            my $n = sysread($s, $buf, 100, length $buf);
            last unless $n;
        }
        is($buf, $partial, "$t: $mode: the reply's first bytes");
        ok(Net::SSLeay::get_shutdown($s->_get_ssl_object) & Net::SSLeay::RECEIVED_SHUTDOWN(),
           "$t: $mode: ... then close_notify");
        $s->stop_SSL(SSL_fast_shutdown => 1);
        my $eof = IO::Select->new($s)->can_read($fin ? 3 : 0.3) && !sysread($s, my $more, 1);
        is($eof ? 1 : 0, $fin, "$t: $mode: ... the TCP connection " . ($fin ? 'closed' : 'left open'));
        close $s;
    }
    set_fake_mode($FAKE_DIR, 'ok');

    # Peers that break the handshake.
    for my $how (qw(hello half)) {
        my $dir = servroot() . "/harness-cut-$how";
        my ($port, $pid) = start_handshake_cutter(dir => $dir, how => $how);
        ok(!eval { Test::Nginx::RedisTls::tls_connect(port => $port, ca => $CA) },
           "$t: cutter ($how): no handshake");
        like(join(' ', fake_log($dir)), qr/^hello [1-9]\d+$/, "$t: cutter ($how): ... it read the ClientHello");
        stop_child($pid);
    }
    my $dir = servroot() . '/harness-silent';
    my ($port, $pid) = start_counting_silent_server(dir => $dir);
    ok(!eval { Test::Nginx::RedisTls::tls_connect(port => $port, ca => $CA, timeout => 1) },
       "$t: silent: the handshake is never answered");
    is(join(' ', fake_log($dir)), 'accept', "$t: silent: ... the connection counted");
    stop_child($pid);
});

# ---------------------------------------------------------------------------
# 1. Batches land byte for byte over TLS.
# ---------------------------------------------------------------------------
section('1. batches over TLS', sub {
    my $t = '1. batches over TLS';
    enable_site($A, 1);
    # A reply above TLS's 16 KiB records: sample_rate padded with 200 KB of
    # white space (still the number 1).
    $A->cmd('HSET', 'recording:site:19', 'enabled', '1', 'sample_rate', '1' . (' ' x 200_000));
    my $addr = $A->addr;
    start_nginx(no_default_redis => 1, http_config => $TRUST . "client_max_body_size 4m;\n",
                config => loc('', "recording_redis $addr ssl; recording_redis_read_timeout 1h;"));

    # The read timeout is an hour: an answer within the 15 s hang guard did
    # not wait for more data than came.
    my $doc = qq({\n  "session_id": "utf8",\n  "seq": 0,\n  "events": [ {"type":3, "timestamp":1,)
            . qq( "data":{"t":"caf\xc3\xa9 \\u00e9 \\"q\\" \\\\"}} ]\n}\n);
    $A->cmd('DEL', $QUEUE);
    is(answer(post(body => $doc)), $QUEUED, "$t: 202");
    my @el = elements($A);
    is(scalar @el, 1, "$t: one element in the TLS Redis");
    is(client_bytes($el[0]), $doc, "$t: the client's bytes, white space and escapes as sent");
    like($el[0] // '', qr/,"_ingest":\{"site_id":1,/, "$t: ... with _ingest");

    my $gz = batch('gzip', 0);
    $A->cmd('DEL', $QUEUE);
    is(answer(post(body => gzip_bytes($gz), headers => ['Content-Encoding' => 'gzip'])), $QUEUED, "$t: gzip body: 202");
    @el = elements($A);
    is(scalar @el, 1, "$t: gzip: one element");
    is(client_bytes($el[0]), $gz, "$t: gzip: the decoded bytes");

    # Many TLS records each way.
    my $big = qq({"session_id":"big","seq":0,"events":[)
            . join(',', map { qq({"type":3,"timestamp":$_,"data":{"x":") . ('y' x 1000) . '"}}' } 1 .. 600) . ']}';
    $A->cmd('DEL', $QUEUE);
    is(answer(post(body => $big)), $QUEUED, "$t: a " . length($big) . "-byte batch: 202");
    @el = elements($A);
    ok(@el == 1 && client_bytes($el[0]) eq $big, "$t: ... byte-identical in Redis")
        or diag('elements ' . scalar(@el) . ', length ' . length($el[0] // ''));
    is(answer(post(site => 19, session => 'big-reply')), $QUEUED,
       "$t: a 200 KB HMGET reply read whole over TLS: 202");

    $A->cmd('DEL', $QUEUE);
    my @raw = concurrent_requests(15, map { raw_post('', 1, batch("burst-$_", 0)) } 1 .. 100);
    my %codes;
    $codes{ status_of($_) }++ for @raw;
    is_deeply(\%codes, { 202 => 100 }, "$t: a burst of 100: every batch 202");
    my %seen = map { /"session_id":"(burst-\d+)"/ ? ($1 => 1) : () } elements($A);
    is(scalar keys %seen, 100, "$t: ... 100 distinct elements landed");
    is(llen($A), 100, "$t: ... and nothing else");
    is(scalar(grep { /\[error\]/ } lines_about($addr)), 0, "$t: no [error] about the server")
        or diag(join "\n", lines_about($addr));

    # Redis stops reading (SIGSTOP) while 16 batches of 600 KB arrive: the
    # socket fills, a TLS write is left unfinished, and the commands queued
    # behind it grow (and move) the client's buffer before the write is
    # retried. OpenSSL must take the retry from the moved buffer.
    $A->cmd('DEL', $QUEUE);
    kill STOP => $A->{pid};
    my @stalled = map { raw_post('', 1, (my $b = $big) =~ s/"big"/"stall-$_"/r) } 1 .. 16;
    my $resumer = fork // die "fork: $!";
    if ($resumer == 0) { sleep 1.5; kill CONT => $A->{pid}; POSIX::_exit(0) }
    my @stall_raw = concurrent_requests(30, @stalled);
    waitpid($resumer, 0);
    kill CONT => $A->{pid};
    my %stall_codes;
    $stall_codes{ status_of($_) }++ for @stall_raw;
    is_deeply(\%stall_codes, { 202 => 16 }, "$t: 16 large batches while Redis reads nothing: every one 202");
    my %stall_seen = map { /"session_id":"(stall-\d+)"/ ? ($1 => 1) : () } elements($A);
    is(scalar keys %stall_seen, 16, "$t: ... all 16 landed");
    is(scalar(grep { /\[error\]/ } lines_about($addr)), 0, "$t: ... with no [error] about the server")
        or diag(join "\n", lines_about($addr));
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 2. AUTH over TLS.
# ---------------------------------------------------------------------------
section('2. login over TLS', sub {
    my $t = '2. login over TLS';
    my $addr = $B->addr;
    enable_site($B, 1);
    $B->cmd_as({ password => $PASSWORD, db => 2 }, 'HSET', 'recording:site:1', 'enabled', 1);
    is($B->cmd('ACL', 'SETUSER', 'writer', 'on', '>pw', '~recording:*', '+rpush', '+hmget'), 'OK',
       "$t: ACL user writer");
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('/good', "recording_redis $addr ssl password=$PASSWORD;")
                        . loc('/wrong', "recording_redis $addr ssl password=wrong;")
                        . loc('/acl', "recording_redis $addr ssl user=writer password=pw;")
                        . loc('/db2', "recording_redis $addr ssl password=$PASSWORD db=2;"));
    is(answer(post(prefix => '/good', session => 'good')), $QUEUED, "$t: password=: 202");
    is(answer(post(prefix => '/acl', session => 'acl')), $QUEUED, "$t: user= password=: 202");
    is(answer(post(prefix => '/db2', session => 'db2')), $QUEUED, "$t: db=2: 202");
    my @sessions = map { /"session_id":"([^"]+)"/ } elements($B);
    is("@sessions", 'good acl', "$t: password= and user= landed in database 0");
    my $db2 = $B->cmd_as({ password => $PASSWORD, db => 2 }, 'LRANGE', $QUEUE, 0, -1);
    is(scalar(grep { /"session_id":"db2"/ } @$db2), 1, "$t: db= landed in database 2");
    is(scalar(grep { /\[error\]/ } lines_about($addr)), 0, "$t: no [error] so far");

    my @answers = map { answer(post(prefix => '/wrong', session => "wrong-$_")) } 1 .. 3;
    is("@answers", join(' ', ($UNAVAILABLE) x 3), "$t: a wrong password: 503 for each of three batches");
    one_error_line($t, $addr, 'login refused', 'login refused');
    like((grep { /login refused/ } lines_about($addr))[0] // '', qr/login refused: WRONGPASS/,
         "$t: ... with Redis's answer");
    unlike(error_log_text(), qr/password=wrong|\bwrong\b.*password/, "$t: the password is not logged");
    is(llen($B), 2, "$t: nothing landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 3. A client certificate: --tls-auth-clients yes.
# ---------------------------------------------------------------------------
section('3. client certificate', sub {
    my $t = '3. client certificate';
    my $addr = $C->addr;
    enable_site($C, 1);
    my $config = loc('', "recording_redis $addr ssl;");

    start_nginx(no_default_redis => 1, config => $config, http_config => $TRUST
                . "recording_redis_ssl_certificate $CERTS->{client_cert};\n"
                . "recording_redis_ssl_certificate_key $CERTS->{client_key};\n");
    is(answer(post(session => 'mtls')), $QUEUED, "$t: with the client certificate: 202");
    is(scalar(grep { /"session_id":"mtls"/ } elements($C)), 1, "$t: ... landed");
    ok(stop_nginx(), "$t: nginx stops gracefully");

    # TLS 1.3 lets a client finish its handshake before the server has
    # looked at its certificate: the refusal may come as the handshake's
    # failure or as the connection's loss. Either, once.
    for my $case (['without a client certificate', ''],
                  ['with a certificate of the wrong CA',
                   "recording_redis_ssl_certificate $CERTS->{wrong_client_cert};\n"
                   . "recording_redis_ssl_certificate_key $CERTS->{wrong_client_key};\n"]) {
        my ($what, $http) = @$case;
        start_nginx(no_default_redis => 1, config => $config, http_config => $TRUST . $http);
        my @answers = map { answer(post(session => 'refused')) } 1 .. 3;
        is("@answers", join(' ', ($UNAVAILABLE) x 3), "$t: $what: 503 for each of three batches");
        one_error_line("$t: $what", $addr, '(?:TLS handshake failed|connection lost)',
                       'TLS handshake failed or connection lost');
        is(scalar(grep { /"session_id":"refused"/ } elements($C)), 0, "$t: $what: nothing landed");
        # nginx's OpenSSL layer logs a peer's alert it does not list (TLS
        # 1.3's certificate_required, 116) at [crit], as it does for its own
        # proxy: that line is nginx's about the peer, and the only one
        # allowed here.
        my @bad = grep { !/\[crit\] .*SSL_read\(\) failed .*alert certificate required/ } crash_lines();
        ok(!@bad, "$t: $what: no alert/crit/emerg/crash but nginx's own line about the peer's alert")
            or diag(join "\n", @bad);
        ok(stop_nginx(), "$t: $what: nginx stops gracefully");
    }
});

# ---------------------------------------------------------------------------
# 4. Verification: CA, name, verify off, the system's store, default names.
# ---------------------------------------------------------------------------
section('4. verification', sub {
    my $t = '4. verification';
    my $addr = $A->addr;
    enable_site($A, 1);
    $A->cmd('DEL', $QUEUE);
    my $config = loc('', "recording_redis $addr ssl;");

    # Batches before and after the 1 s pause a TLS failure makes: retried,
    # and still logged once.
    my $spread = sub {
        my ($session) = @_;
        my @a = map { answer(post(session => $session)) } 1 .. 3;
        sleep 1.2;
        push @a, map { answer(post(session => $session)) } 1 .. 3;
        return "@a";
    };
    for my $case (['a wrong CA', "recording_redis_ssl_trusted_certificate $CERTS->{wrong_ca};\n",
                   'TLS certificate verify failed: \S', 'TLS certificate verify failed'],
                  ['the system\'s CA store (no trusted certificate)', '',
                   'TLS certificate verify failed: \S', 'TLS certificate verify failed'],
                  ['a wrong name', $TRUST . "recording_redis_ssl_name wrong.example;\n",
                   'TLS certificate does not match "wrong\.example"', 'does not match "wrong.example"']) {
        my ($what, $http, $re, $label) = @$case;
        start_nginx(no_default_redis => 1, http_config => $http, config => $config);
        is($spread->('unverified'), join(' ', ($UNAVAILABLE) x 6), "$t: $what: 503 for each of six batches");
        one_error_line("$t: $what", $addr, $re, $label);
        is(scalar(grep { /answering again/ } lines_about($addr)), 0, "$t: $what: never 'answering again'");
        is(llen($A), 0, "$t: $what: nothing landed");
        no_crash("$t: $what");
        ok(stop_nginx(), "$t: $what: nginx stops gracefully");
    }

    start_nginx(no_default_redis => 1, config => $config,
                http_config => "recording_redis_ssl_trusted_certificate $CERTS->{wrong_ca};\nrecording_redis_ssl_verify off;\n");
    is(answer(post(session => 'unchecked')), $QUEUED, "$t: verify off, the wrong CA: 202");
    is(answer(post(session => 'unchecked')), $QUEUED, "$t: verify off: again 202");
    is(llen($A), 2, "$t: verify off: both landed");
    ok(stop_nginx(), "$t: verify off: nginx stops gracefully");

    # The default name: the host as written.
    $A->cmd('DEL', $QUEUE);
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('/ip', "recording_redis 127.0.0.1:" . $A->port . " ssl;")
                        . ($LOCALHOST ? loc('/name', 'recording_redis localhost:' . $A->port . ' ssl;') : ''));
    is(answer(post(prefix => '/ip', session => 'by-ip')), $QUEUED, "$t: 127.0.0.1:P ssl: 202 (the IP SAN)");
    SKIP: {
        skip "$t: localhost does not resolve to 127.0.0.1 alone", 1 unless $LOCALHOST;
        is(answer(post(prefix => '/name', session => 'by-name')), $QUEUED, "$t: localhost:P ssl: 202 (the DNS SAN)");
    }
    is(scalar(grep { /\[error\]/ } split /\n/, error_log_text()), 0, "$t: default names: no [error] line");
    ok(stop_nginx(), "$t: default names: nginx stops gracefully");

    # SNI, as the fake TLS Redis saw it: the name, never an IP address.
    # Every handshake of an nginx run with one server in it, whenever made.
    my $sni_with = sub {
        my ($recording_redis, $http) = @_;
        my $from = () = fake_log($FAKE_DIR);
        start_nginx(no_default_redis => 1, http_config => $TRUST . ($http // ''),
                    config => loc('', "recording_redis $recording_redis ssl;"));
        my $a = answer(post(session => 'sni'));
        no_crash("$t: SNI with $recording_redis");
        ok(stop_nginx(), "$t: SNI with $recording_redis: nginx stops gracefully");
        my %sni = map { /^accept sni=(\S+)/ ? ($1 => 1) : () } fake_since($FAKE_DIR, $from);
        return "$a; SNI " . join(' ', sort keys %sni);
    };
    set_fake_mode($FAKE_DIR, 'ok');
    is($sni_with->($FAKE), "$QUEUED; SNI -", "$t: 127.0.0.1:P ssl: 202, and no SNI sent");
    SKIP: {
        skip "$t: localhost does not resolve to 127.0.0.1 alone", 6 unless $LOCALHOST;
        is($sni_with->("localhost:$FAKE_PORT"), "$QUEUED; SNI localhost", "$t: localhost:P ssl: 202, SNI localhost");
        # A cluster's seed is reached at its resolved address, but checked
        # (and named in SNI) as written. The fake has no slot map: 503.
        like($sni_with->("localhost:$FAKE_PORT cluster"), qr/; SNI localhost\z/,
             "$t: a cluster seed localhost:P: SNI localhost, not its IP address");
    }
    is($sni_with->($FAKE, "recording_redis_ssl_name localhost;\n"), "$QUEUED; SNI localhost",
       "$t: 127.0.0.1:P ssl with recording_redis_ssl_name localhost: checked (202) and sent as SNI");
});

# ---------------------------------------------------------------------------
# 5. Protocols: a TLSv1.2-only Redis.
# ---------------------------------------------------------------------------
section('5. protocols', sub {
    my $t = '5. protocols';
    my $addr = $D->addr;
    enable_site($D, 1);
    my $config = loc('', "recording_redis $addr ssl;");
    start_nginx(no_default_redis => 1, config => $config,
                http_config => $TRUST . "recording_redis_ssl_protocols TLSv1.3;\n");
    my @answers = map { answer(post(session => 'v13')) } 1 .. 3;
    is("@answers", join(' ', ($UNAVAILABLE) x 3), "$t: TLSv1.3 only against TLSv1.2 only: 503 for each batch");
    one_error_line($t, $addr, 'TLS handshake failed', 'TLS handshake failed');
    is(llen($D), 0, "$t: nothing landed");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");

    start_nginx(no_default_redis => 1, config => $config,
                http_config => $TRUST . "recording_redis_ssl_protocols TLSv1.2;\n");
    is(answer(post(session => 'v12')), $QUEUED, "$t: recording_redis_ssl_protocols TLSv1.2: 202");
    is(llen($D), 1, "$t: ... landed");
    ok(stop_nginx(), "$t: nginx stops gracefully");

    start_nginx(no_default_redis => 1, config => $config, http_config => $TRUST);
    is(answer(post(session => 'default')), $QUEUED, "$t: the default (TLSv1.2 TLSv1.3) against TLSv1.2 only: 202");
    is(llen($D), 2, "$t: ... landed");
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 6. A handshake never answered: the connect timeout bounds it.
# ---------------------------------------------------------------------------
section('6. handshake timeout', sub {
    my $t = '6. handshake timeout';
    my $dir = servroot() . '/silent-tls';
    my ($port, $pid) = start_counting_silent_server(dir => $dir);
    my $addr = "127.0.0.1:$port";
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('', "recording_redis $addr ssl; recording_redis_connect_timeout 500ms;"
                                . " recording_redis_read_timeout 1h;"));
    # The read timeout is an hour and the hang guard 15 s: only the connect
    # timeout (TCP connect and handshake together) can answer.
    my $res = post(session => 'hs-timeout', timeout => 15);
    is(answer($res), $UNAVAILABLE, "$t: 503 within the hang guard");
    one_error_line($t, $addr, 'TLS handshake timed out', 'TLS handshake timed out');
    is(count_matches(error_log_text(), qr/connect timed out|no reply in time/), 0,
       "$t: neither 'connect timed out' (TCP connected) nor 'no reply in time'");
    my $accepts = () = fake_log($dir);
    is($accepts, 1, "$t: one connection");

    # After the failure the client waits a second: batches right after
    # are answered at once, without a connection.
    my @answers = map { answer(post(session => 'hs-timeout')) } 1 .. 2;
    is("@answers", "$UNAVAILABLE $UNAVAILABLE", "$t: two batches at once: 503 each");
    $accepts = () = fake_log($dir);
    cmp_ok($accepts, '<=', 2, "$t: ... fewer connections than three batches ($accepts)");
    my $tried = poll_until(10, sub { post(session => 'hs-timeout'); (() = fake_log($dir)) > $accepts });
    ok($tried, "$t: a later batch tries again");
    is(count_about($addr, 'TLS handshake timed out'), 1, "$t: ... still one 'TLS handshake timed out' line");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($pid);

    # A handshake that takes 1.5 s, within the connect timeout (5 s): the
    # command that waited for it has its whole read timeout (1 s) from when
    # it could go out, not from when it was sent.
    my $slow_dir = servroot() . '/slow-tls';
    my ($slow_port, $slow_pid) = start_fake_tls_redis(certs => $CERTS, dir => $slow_dir, handshake_delay => 1.5);
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('', "recording_redis 127.0.0.1:$slow_port ssl; recording_redis_connect_timeout 5s;"
                                . " recording_redis_read_timeout 1s;"));
    is(answer(post(session => 'slow-handshake', timeout => 15)), $QUEUED,
       "$t: a 1.5 s handshake, a 1 s read timeout: 202")
        or diag(join "\n", grep { !/\[debug\]/ } split /\n/, error_log_text());
    is(count_matches(error_log_text(), qr/no reply in time|timed out/), 0, "$t: ... and no timeout logged");
    no_crash("$t: slow handshake");
    ok(stop_nginx(), "$t: slow handshake: nginx stops gracefully");
    stop_child($slow_pid);
});

# ---------------------------------------------------------------------------
# 7. Handshakes cut: after the ClientHello, inside the ServerHello, and a
#    plain-TCP Redis named with ssl.
# ---------------------------------------------------------------------------
section('7. handshake cut', sub {
    my $t = '7. handshake cut';
    my %cut;
    for my $how (qw(hello half)) {
        my $dir = servroot() . "/cut-$how";
        my ($port, $pid) = start_handshake_cutter(dir => $dir, how => $how);
        $cut{$how} = { port => $port, pid => $pid, dir => $dir, addr => "127.0.0.1:$port" };
    }
    redis_start();   # the harness's plain-TCP Redis
    my $plain = '127.0.0.1:' . redis_port();
    my $closed = do {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
            or die "bind: $@";
        '127.0.0.1:' . $s->sockport;   # closed again on leaving the block
    };
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('/closed', "recording_redis $closed ssl; recording_redis_connect_timeout 1h;")
                        . loc('/hello', "recording_redis $cut{hello}{addr} ssl; recording_redis_read_timeout 1h;")
                        . loc('/half', "recording_redis $cut{half}{addr} ssl; recording_redis_read_timeout 1h;")
                        . loc('/plain', "recording_redis $plain ssl; recording_redis_connect_timeout 500ms;")
                        . loc('', 'recording_redis ' . $A->addr . ' ssl;'));
    enable_site($A, 1);
    my %pids;
    for my $how (qw(hello half)) {
        my $what = "$t: $how";
        my @res = map { post(prefix => "/$how", session => "cut-$how", timeout => 15) } 1 .. 2;
        is(join(' ', map { answer($_) } @res), "$UNAVAILABLE $UNAVAILABLE", "$what: 503 for each of two batches");
        $pids{ $_->{headers}{'x-pid'} // 'none' } = 1 for @res;
        like(join(' ', fake_log($cut{$how}{dir})), qr/^hello [1-9]/, "$what: the module sent a ClientHello");
        one_error_line($what, $cut{$how}{addr}, 'TLS handshake failed', 'TLS handshake failed');
    }
    # Plain Redis reads the ClientHello as an inline command: it answers an
    # error when a newline happens to be in it, else waits.
    my $res = post(prefix => '/plain', session => 'cut-plain');
    $pids{ $res->{headers}{'x-pid'} // 'none' } = 1;
    is(answer($res), $UNAVAILABLE, "$t: ssl to a plain-TCP Redis: 503");
    one_error_line("$t: plain", $plain, 'TLS handshake (?:failed|timed out)', 'TLS handshake failed or timed out');

    # Nothing listening: the TCP connect is refused, no TLS is begun.
    $res = post(prefix => '/closed', session => 'cut-closed');
    $pids{ $res->{headers}{'x-pid'} // 'none' } = 1;
    is(answer($res), $UNAVAILABLE, "$t: ssl to a closed port: 503 (the connect timeout is an hour)");
    one_error_line("$t: closed", $closed, 'connect failed', 'connect failed');

    $res = post(session => 'after-cuts');
    is(answer($res), $QUEUED, "$t: the good Redis still served: 202");
    $pids{ $res->{headers}{'x-pid'} // 'none' } = 1;
    is(join(' ', keys %pids), $res->{headers}{'x-pid'} // 'none', "$t: ... by the same worker as all the 503s");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    stop_child($_->{pid}) for values %cut;
});

# ---------------------------------------------------------------------------
# 8. close_notify in the middle of a reply.
# ---------------------------------------------------------------------------
section('8. close_notify mid-reply', sub {
    my $t = '8. close_notify mid-reply';
    set_fake_mode($FAKE_DIR, 'ok');
    start_nginx(no_default_redis => 1, http_config => $TRUST,
                config => loc('/fake', "recording_redis $FAKE ssl; recording_redis_read_timeout 1h;")
                        . loc('/fastfake', "recording_redis $FAKE ssl; recording_redis_read_timeout 300ms;")
                        . loc('', 'recording_redis ' . $A->addr . ' ssl;'));
    enable_site($A, 1);
    my $first = post(prefix => '/fake', site => 1, session => 'fake-ok');
    is(answer($first), $QUEUED, "$t: the fake answers: 202 (site 1 cached)");
    my $pid = $first->{headers}{'x-pid'};
    my $seen = () = fake_log($FAKE_DIR);

    # The read timeout is an hour and the hang guard 15 s: only the
    # close_notify can end the wait.
    set_fake_mode($FAKE_DIR, 'cut_rpush');
    my $res = post(prefix => '/fake', site => 1, session => 'cut-rpush', timeout => 15);
    is(answer($res), $UNAVAILABLE, "$t: RPUSH reply ':1' cut by close_notify and FIN: 503");
    my @new = fake_since($FAKE_DIR, $seen);
    ok(grep({ $_ eq 'cut_rpush RPUSH' } @new), "$t: ... it was the RPUSH's reply") or diag("@new");
    is(count_about($FAKE, 'connection lost'), 1, "$t: 'connection lost' logged");

    set_fake_mode($FAKE_DIR, 'ok');
    my $again;
    ok(poll_until(10, sub { ($again = answer(post(prefix => '/fake', site => 1, session => 'fake-again'))) eq $QUEUED }),
       "$t: the fake answers again: 202 ($again)");
    is(scalar(grep { /\[notice\] .*answering again/ } lines_about($FAKE)), 1, "$t: ... 'answering again' logged");

    # Site 2 is not cached: its HMGET's reply is cut inside a bulk string,
    # then close_notify, the TCP connection left open.
    $seen = () = fake_log($FAKE_DIR);
    set_fake_mode($FAKE_DIR, 'cut_hmget');
    $res = post(prefix => '/fake', site => 2, session => 'cut-hmget', timeout => 15);
    is(answer($res), $UNAVAILABLE, "$t: HMGET reply cut by close_notify, TCP open: 503");
    @new = fake_since($FAKE_DIR, $seen);
    ok(grep({ $_ eq 'cut_hmget HMGET' } @new), "$t: ... it was the HMGET's reply") or diag("@new");
    is(count_about($FAKE, 'connection lost'), 2, "$t: 'connection lost' logged again (a second change of state)");
    is(count_matches(error_log_text(), qr/no reply in time/), 0, "$t: no read timeout fired");

    # A handshake completed, then silence: the read timeout answers.
    set_fake_mode($FAKE_DIR, 'ok');
    ok(poll_until(10, sub { answer(post(prefix => '/fake', site => 1, session => 'fake-ok-2')) eq $QUEUED }),
       "$t: the fake answers again: 202");
    set_fake_mode($FAKE_DIR, 'silent');
    is(answer(post(prefix => '/fastfake', site => 3, session => 'silent', timeout => 15)), $UNAVAILABLE,
       "$t: no reply after the handshake: 503");
    is(count_about($FAKE, 'no reply in time'), 1, "$t: ... 'no reply in time' logged");
    set_fake_mode($FAKE_DIR, 'ok');

    $res = post(session => 'after-notify');
    is(answer($res), $QUEUED, "$t: the other Redis still served: 202");
    is($res->{headers}{'x-pid'}, $pid, "$t: ... by the same worker");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 9. A Redis Cluster of TLS nodes.
# ---------------------------------------------------------------------------
section('9. cluster over TLS', sub {
    my $t = '9. cluster over TLS';
    SKIP: {
        my $no = Test::Nginx::RedisCluster::unavailable();
        skip("$t: no Redis Cluster here: $no", 1) if $no;
        my $c = Test::Nginx::RedisCluster->start(masters => 3, replicas => 0, node_timeout => 2000,
            tls => { cert => $CERTS->{server_cert}, key => $CERTS->{server_key}, ca => $CA });
        my @masters = $c->masters;
        is(scalar @masters, 3, "$t: three TLS masters");
        my $SHARDS = 16;
        $c->cmd(HSET => 'recording:site:1', enabled => 1, sample_rate => 1);
        my $seeds = "127.0.0.1:$masters[0] 127.0.0.1:$masters[1]";
        start_nginx(no_default_redis => 1, main_config => 'worker_processes 2;',
                    http_config => $TRUST . "recording_redis $seeds cluster ssl;\n",
                    config => loc('', "recording_queue_shards $SHARDS;"));
        my $N = 120;
        my @status;
        for (my $i = 0; $i < $N; $i += 12) {
            my @group = grep { $_ < $N } $i .. $i + 11;
            my @res = concurrent_requests(15, map { raw_post('', 1, batch("route-$_", 0)) } @group);
            $status[$group[$_]] = status_of($res[$_]) for 0 .. $#group;
        }
        is(scalar(grep { $_ eq '202' } @status), $N, "$t: all $N batches of $N sessions: 202");
        my (%found, @missing, @misplaced, %keys_on);
        for my $e ($c->queue_elements) {
            my ($key, $port, $element) = @$e;
            push @{ $found{$1} }, [$key, $port] if $element =~ /"session_id":"(route-\d+)"/;
        }
        my $dups = 0;
        for my $i (0 .. $N - 1) {
            my $where = $found{"route-$i"} or do { push @missing, $i; next };
            $dups += @$where - 1;
            my ($key, $port) = @{ $where->[0] };
            my $want = 'recording:queue:' . (Compress::Zlib::crc32("1:route-$i") % $SHARDS);
            my $owner = $c->owner($c->keyslot($want));
            push @misplaced, "route-$i: in $key on $port, expected $want on $owner"
                if $key ne $want || $port != $owner;
            $keys_on{$port} = 1;
        }
        ok(!@missing, "$t: every batch is in the cluster") or diag("missing: @missing");
        ok(!@misplaced, "$t: each in its shard's key on the master owning its slot")
            or diag(join "\n", @misplaced[0 .. ($#misplaced > 9 ? 9 : $#misplaced)]);
        is($dups, 0, "$t: no duplicates");
        is(scalar keys %keys_on, 3, "$t: the keys are spread over the three masters");
        is(scalar(grep { /\[error\].*recording: redis/ } split /\n/, error_log_text()), 0,
           "$t: no [error] line about Redis");
        no_crash($t);
        ok(stop_nginx(), "$t: nginx stops gracefully");
        $c->stop;
    }
});

# ---------------------------------------------------------------------------
# 10. The spool: load while the TLS Redis stops and starts again.
# ---------------------------------------------------------------------------
section('10. spool over TLS', sub {
    my $t = '10. spool over TLS';
    my $SPOOL = servroot() . '/spool';
    remove_tree($SPOOL);
    make_path($SPOOL);
    # What Redis acknowledged survives its restart.
    my $E = Test::Nginx::RedisTls->start(certs => $CERTS, options => ['--appendonly', 'yes', '--appendfsync', 'always']);
    enable_site($E, 1);
    start_nginx(no_default_redis => 1, error_log_level => 'info', main_config => 'worker_processes 2;',
                http_config => $TRUST . "recording_spool $SPOOL;\n",
                config => "location = /status { recording_status; }\n"
                        . loc('', 'recording_redis ' . $E->addr . ' ssl; recording_redis_connect_timeout 300ms;'
                                . ' recording_redis_read_timeout 1s;'));
    is(answer(post(session => 'warm', body => load_batch('warm', 0))), $QUEUED, "$t: 202 while Redis is up (site cached)");
    $E->cmd('DEL', $QUEUE);

    # Recorders keep sending while Redis goes away and comes back.
    my $load = start_load(clients => 6, batches => 40, prefix => 'tls-edge', pause => 0.02, retries => 0);
    sleep 0.4;
    $E->stop;
    sleep 0.8;
    $E->start_again;
    my $result = wait_load($load);
    is_deeply($result->{statuses}, { 202 => 240 }, "$t: through the outage: every one of 240 batches 202");

    # A burst while Redis is away: all spooled.
    $E->stop;
    my @raw = concurrent_requests(15, map { raw_post('', 1, load_batch("tls-burst-$_", 0)) } 1 .. 50);
    my %codes;
    $codes{ status_of($_) }++ for @raw;
    is_deeply(\%codes, { 202 => 50 }, "$t: a burst of 50 while Redis is away: 202 each");
    ok(-e "$SPOOL/recording.spool", "$t: ... held in the spool");
    $result->{accepted}{"tls-burst-$_ 0"} = 1 for grep { status_of($raw[$_ - 1]) eq '202' } 1 .. 50;
    $E->start_again;

    my $accepted = keys %{ $result->{accepted} };
    my @elements;
    ok(poll_until(20, sub {
        @elements = @{ $E->cmd('LRANGE', $QUEUE, 0, -1) };
        !-e "$SPOOL/recording.spool" && @elements >= $accepted;
    }), "$t: replayed over TLS once Redis is back (" . scalar(@elements) . " of $accepted)");
    my $dups = check_delivery($t, $result, @elements);
    # At least once: an RPUSH whose reply the stop cut is sent again from
    # the spool, the same element with the same request_id. Nothing else
    # may be there twice.
    my %ids;
    for my $e (@elements) {
        my ($s, $q) = ($e =~ /"session_id":"([^"]+)"/, $e =~ /"seq":(\d+)/);
        my ($id) = $e =~ /"request_id":"([^"]+)"/;
        push @{ $ids{"$s $q"} }, $id // '' if defined $s && defined $q;
    }
    my @twice_accepted = grep { my %u = map { $_ => 1 } @{ $ids{$_} }; keys %u > 1 } sort keys %ids;
    ok(!@twice_accepted, "$t: no batch accepted twice (copies share their request_id)") or diag("@twice_accepted");
    my $resent = eval { $JSON->decode(http_request(uri => '/status')->{body})->{spool}{resent_elements} } // 0;
    cmp_ok($dups, '<=', $resent, "$t: copies ($dups) no more than the elements resent after a lost reply ($resent)");
    like(error_log_text(), qr/recording: redis \Q${\ $E->addr }\E: (?:connect failed|connection lost)/,
         "$t: the outage is logged");
    is(answer(post(session => 'after', body => load_batch('after', 0))), $QUEUED, "$t: 202 afterwards");
    ok(!-e "$SPOOL/recording.spool", "$t: ... straight to Redis");

    # A TLS failure spools too: Redis comes back with a certificate of
    # another CA (the site is cached), then with the right one again.
    # The restart drops the workers' connections first: which failure a
    # worker's one [error] line names depends on when it noticed.
    $E->cmd('DEL', $QUEUE);
    my $from = length error_log_text();
    $E->restart(cert => $CERTS->{wrong_server_cert}, key => $CERTS->{wrong_server_key}, client_ca => $CERTS->{wrong_ca});
    my @answers = map { answer(post(session => "unverified-$_", body => load_batch("unverified-$_", 0))) } 1 .. 5;
    is("@answers", join(' ', ($QUEUED) x 5), "$t: Redis's certificate not trusted: 202 for each of five batches");
    ok(-e "$SPOOL/recording.spool", "$t: ... spooled");
    my @errors = grep { /\[error\] .*recording: redis \Q${\ $E->addr }\E: / } split /\n/, substr(error_log_text(), $from);
    my %per_worker;
    $per_worker{ /\[error\] (\d+)#/ ? $1 : '?' }++ for @errors;
    ok(@errors && !grep({ $_ != 1 } values %per_worker), "$t: ... one [error] line about Redis per worker at most")
        or diag(join "\n", @errors);
    is(scalar(grep { !/: (?:connection lost|connect failed|TLS certificate verify failed: \S)/ } @errors), 0,
       "$t: ... each the lost connection, the refused connect or the failed verification") or diag(join "\n", @errors);
    is(llen($E), 0, "$t: ... none reached Redis");
    $E->restart(cert => undef, key => undef, client_ca => undef);
    ok(poll_until(20, sub { !-e "$SPOOL/recording.spool" && llen($E) >= 5 }),
       "$t: the right certificate again: replayed");
    my @unverified = sort map { /"session_id":"(unverified-\d)"/ } elements($E);
    is("@unverified", join(' ', map { "unverified-$_" } 1 .. 5), "$t: ... each batch once");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
    $E->stop;
});

# ---------------------------------------------------------------------------
# 11. recording_health over TLS.
# ---------------------------------------------------------------------------
section('11. health over TLS', sub {
    my $t = '11. health over TLS';
    my $OK = '{"status":"ok"}';
    my $DOWN = '{"status":"unavailable","reason":"redis_unreachable"}';
    my $becomes = sub {
        my ($status, $what) = @_;
        my ($res, $from) = (undef, time);
        my $ok = poll_until(10, sub { $res = http_request(uri => '/healthz', timeout => 5); ($res->{status} // 0) == $status });
        Test::More::note(sprintf("%s: %s after %.2fs", $what, $res->{status} // 'none', time - $from));
        return $ok ? answer($res) : 'not ' . $status . ' but ' . answer($res);
    };
    my $HEALTH = "location = /healthz { recording_health; }\n";
    my $TIMEOUTS = "recording_redis_connect_timeout 300ms; recording_redis_read_timeout 1s;\n";
    start_nginx(no_default_redis => 1, http_config => $TRUST . $TIMEOUTS . 'recording_redis ' . $A->addr . " ssl;\n",
                config => $HEALTH . loc('', ''));
    is($becomes->(200, 'up'), "200 $OK", "$t: 200 while the TLS Redis answers");
    $A->stop;
    is($becomes->(503, 'stopped'), "503 $DOWN", "$t: 503 redis_unreachable once it stops");
    $A->start_again;
    is($becomes->(200, 'back'), "200 $OK", "$t: 200 once it is back");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");

    # A Redis whose certificate is not trusted cannot be reached either.
    start_nginx(no_default_redis => 1,
                http_config => "recording_redis_ssl_trusted_certificate $CERTS->{wrong_ca};\n" . $TIMEOUTS
                             . 'recording_redis ' . $A->addr . " ssl;\n",
                config => $HEALTH . loc('', ''));
    is($becomes->(503, 'wrong CA'), "503 $DOWN", "$t: the wrong CA: 503 redis_unreachable");
    no_crash("$t: wrong CA");
    ok(stop_nginx(), "$t: wrong CA: nginx stops gracefully");
});

# ---------------------------------------------------------------------------
# 12. nginx -t.
# ---------------------------------------------------------------------------
section('12. nginx -t', sub {
    my $t = '12. nginx -t';
    my $addr = $A->addr;
    my $config = loc('', "recording_redis $addr ssl;");
    my $check = sub {
        my ($what, $http, $re, $config_override) = @_;
        my ($rc, $out) = nginx_test(no_default_redis => 1, http_config => $http, config => $config_override // $config);
        isnt($rc, 0, "$t: $what: refused");
        like($out, $re, "$t: $what: ... naming the problem") or diag($out);
    };
    my ($rc, $out) = nginx_test(no_default_redis => 1, config => $config, http_config => $TRUST
        . "recording_redis_ssl_verify on;\nrecording_redis_ssl_name localhost;\n"
        . "recording_redis_ssl_protocols TLSv1.2 TLSv1.3;\n"
        . "recording_redis_ssl_certificate $CERTS->{client_cert};\n"
        . "recording_redis_ssl_certificate_key $CERTS->{client_key};\n");
    is($rc, 0, "$t: every recording_redis_ssl_* directive with good files: accepted") or diag($out);

    my $missing = servroot() . '/tls/missing';
    $check->('a missing trusted certificate', "recording_redis_ssl_trusted_certificate $missing/ca.crt;\n",
             qr/\[emerg\].*\Q$missing\E\/ca\.crt/);
    $check->('a missing client certificate', $TRUST . "recording_redis_ssl_certificate $missing/client.crt;\n"
             . "recording_redis_ssl_certificate_key $CERTS->{client_key};\n", qr/\[emerg\].*\Q$missing\E\/client\.crt/);
    $check->('a missing client key', $TRUST . "recording_redis_ssl_certificate $CERTS->{client_cert};\n"
             . "recording_redis_ssl_certificate_key $missing/client.key;\n", qr/\[emerg\].*\Q$missing\E\/client\.key/);
    $check->('a certificate without a key', $TRUST . "recording_redis_ssl_certificate $CERTS->{client_cert};\n",
             qr/\[emerg\].*(?:certificate_key|\bkey\b)/i);
    my $garbage = servroot() . '/tls/garbage.crt';
    open my $fh, '>', $garbage or die "$garbage: $!";
    print {$fh} "this is no certificate\n";
    close $fh;
    $check->('a trusted certificate file that is no certificate',
             "recording_redis_ssl_trusted_certificate $garbage;\n", qr/\[emerg\].*\Q$garbage\E/);
    SKIP: {
        skip "$t: root reads any file", 2 if $> == 0;
        my $unreadable = servroot() . '/tls/unreadable.crt';
        system('cp', $CA, $unreadable);
        chmod 0000, $unreadable;
        $check->('an unreadable trusted certificate', "recording_redis_ssl_trusted_certificate $unreadable;\n",
                 qr/\[emerg\].*\Q$unreadable\E/);
    }
    $check->('ssl with a unix: address', $TRUST, qr/\[emerg\][^\n]*(?:unix[^\n]*(?:ssl|TLS)|(?:ssl|TLS)[^\n]*unix)/i,
             loc('', 'recording_redis unix:' . servroot() . '/redis.sock ssl;'));
    $check->('recording_redis_ssl_verify in a location', $TRUST, qr/\[emerg\] "recording_redis_ssl_verify" directive is not allowed here/,
             loc('', "recording_redis $addr ssl; recording_redis_ssl_verify off;"));
});

$_->stop for $A, $B, $C, $D;
Test::More::done_testing();
