package Test::Nginx::RedisTls;

# Redis over TLS for integration tests: a throw-away test CA, TLS-only
# redis-server processes, a TLS RESP client, and fake TLS peers that fail
# in the ways a client has to survive.
#
#     use Test::Nginx::Recording;
#     use Test::Nginx::RedisTls;
#     my $why = Test::Nginx::RedisTls::unavailable();   # '' or a reason to skip
#     my $certs = make_certs(servroot() . '/tls');
#     my $r = Test::Nginx::RedisTls->start(certs => $certs, password => 'secret');
#     $r->cmd(HSET => 'recording:site:1', enabled => 1);   # AUTHs with the password
#     start_nginx(no_default_redis => 1,
#                 http_config => "recording_redis_ssl_trusted_certificate $certs->{ca};",
#                 config => ingest_location('recording_redis ' . $r->addr . ' ssl password=secret;'));
#
# make_certs($dir) runs `openssl` (EC P-256 keys, 30 days) and returns the
# paths, every file readable by all (the workers may run as nobody):
#   ca, ca_key              the test CA
#   server_cert, server_key signed by it; CN=localhost, SAN DNS:localhost,
#                           IP:127.0.0.1, for serverAuth and clientAuth (a
#                           cluster node presents it to the others too)
#   client_cert, client_key signed by it; CN=recording-client, clientAuth
#   wrong_ca, wrong_ca_key  an unrelated CA (trusting it verifies nothing)
#   wrong_server_cert, wrong_server_key   a server certificate of wrong_ca
#                           (the same names as server_cert)
#   wrong_client_cert, wrong_client_key   a client certificate of wrong_ca
#
# Test::Nginx::RedisTls->start(%o) runs `redis-server --port 0 --tls-port P`
# (TLS only) on a free loopback port, in a directory of its own
# (<certs dir>/redis-<port>, log redis.log), and waits for a TLS PING.
# Options: certs (required), auth_clients ('no' default, or 'yes':
# --tls-auth-clients), password (--requirepass; cmd() then logs in with it),
# options => [more redis-server arguments, e.g. '--tls-protocols', 'TLSv1.2'],
# port (default: a free one), cert and key (the server's certificate,
# default server_cert and server_key) with client_ca (what the harness's
# client trusts for it, default ca). Methods:
#   port() addr()            the TLS port; "127.0.0.1:<port>"
#   cmd(@cmd)                one command on a fresh TLS connection (the
#                            client certificate is always presented); dies on
#                            an error reply; cmd_raw returns {error => '...'}
#   cmd_as({user, password, db}, @cmd)   with that login (db: SELECT first)
#   stop()  start_again()  restart(%o)   SHUTDOWN NOSAVE (then TERM, KILL);
#                            the same port, directory and options again
#                            (restart takes cert, key, client_ca anew)
#   running() server_log()
# Every server is stopped at exit (END, and INT/TERM/HUP).
#
# tls_call(port => P, ca => FILE, [cert => FILE, key => FILE],
#          [name => 'checked name'], [login => {...}], commands => [[...], ...])
#   the same client as a function: the replies, in order.
#
# Fake peers, each a forked child of Test::Nginx::Recording::start_server
# (stopped at the end with the harness's other children), each returning
# (port, pid) and writing what it saw, one line per event, to <dir>/log
# (fake_log($dir) reads it):
#   start_fake_tls_redis(certs => $c, dir => $dir, [mode => 'ok'], [handshake_delay => S])
#     a TLS server with the test server certificate (beginning each
#     handshake S seconds after the connection is accepted); logs "accept sni=NAME"
#     ('-' when the client sent no SNI) per handshake, "handshake failed" on
#     a failed one, and "MODE COMMAND" per command. The mode is read from
#     <dir>/mode at each command (set_fake_mode($dir, $mode)):
#       ok         HMGET: enabled "1", the other fields nil; RPUSH: :<n>;
#                  PING: +PONG; anything else +OK
#       cut_rpush  as ok, but RPUSH gets ":1" (no CRLF), then close_notify
#                  and the TCP connection closed
#       cut_hmget  HMGET gets "*N\r\n$1\r\n1\r\n$10\r\nabc" (cut inside a
#                  bulk string), then close_notify with the TCP connection
#                  left open (only the close_notify says the reply ends)
#       silent     reads commands, never answers
#   start_handshake_cutter(dir => $dir, [how => 'hello' | 'half'])
#     plain TCP: reads the ClientHello record ("hello N" logged), then
#     'hello' closes at once; 'half' sends the first bytes of a ServerHello
#     record (its header announces more) and closes.
#   start_counting_silent_server(dir => $dir)
#     accepts ("accept" logged) and reads, never answers anything.

use strict;
use warnings;

use Exporter 'import';
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp ();
use IO::Select ();
use IO::Socket::INET ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

# Loaded by the test file first as a rule (its import takes a plan).
require Test::Nginx::Recording;

our @EXPORT = qw(make_certs tls_call start_fake_tls_redis set_fake_mode fake_log
                 start_handshake_cutter start_counting_silent_server);

my $REDIS_SERVER = $ENV{TEST_NGINX_REDIS_SERVER} || 'redis-server';
my $OPENSSL      = $ENV{TEST_NGINX_OPENSSL}      || 'openssl';
my $OWNER_PID    = $$;
my @SERVERS;     # every redis-server started, stopped at exit
my @TEMP_DIRS;   # directories of our own, removed at exit

END {
    if ($$ == $OWNER_PID) {
        local ($?, $!, $@);
        eval { $_->stop } for @SERVERS;
        unless ($ENV{TEST_NGINX_NO_CLEAN}) {
            remove_tree($_) for @TEMP_DIRS;
        }
    }
}
for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} ||= sub { print STDERR "# caught SIG$sig, cleaning up\n"; exit 1 };
}

sub _in_path {
    my ($prog) = @_;
    return -x $prog if $prog =~ m{/};
    return grep { -x "$_/$prog" } File::Spec->path;
}

# The harness's own file helpers (Test::Nginx::Recording), not copies.
*_slurp = \&Test::Nginx::Recording::_slurp;
*_spew  = \&Test::Nginx::Recording::_spew;
*_tail  = \&Test::Nginx::Recording::_tail;

sub _free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
        or die "cannot bind a loopback port: $@\n";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# '' when TLS to Redis can be tested here, else why not: IO::Socket::SSL,
# openssl and redis-server are needed, and the redis-server must have been
# built with TLS (a TLS-only one is started and PINGed once).
sub unavailable {
    return "IO::Socket::SSL is missing: $@" unless eval { require IO::Socket::SSL; 1 };
    return "$OPENSSL not found" unless _in_path($OPENSSL);
    return "$REDIS_SERVER not found" unless _in_path($REDIS_SERVER);
    my $dir = File::Temp::tempdir('redis-tls-probe-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    my $why = '';
    eval {
        my $certs = make_certs($dir);
        my $r = __PACKAGE__->start(certs => $certs, start_timeout => 5);
        $r->stop;
        1;
    } or $why = "no TLS Redis here: $@";
    remove_tree($dir);
    $why =~ s/\s+/ /g;   # one line: it becomes the plan's skip reason
    $why =~ s/ \z//;
    return $why;
}

# --------------------------------------------------------------------------
# The test CA
# --------------------------------------------------------------------------

my $OPENSSL_CONF = <<'CNF';
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

my $SERIAL = int(time) % 100000 * 1000;

sub _openssl {
    my ($dir, @args) = @_;
    my $out = "$dir/openssl.out";
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $out;
        open STDERR, '>&', \*STDOUT;
        local $ENV{OPENSSL_CONF} = "$dir/openssl.cnf";   # nothing from the system's
        { no warnings 'exec'; exec { $OPENSSL } $OPENSSL, @args; }
        POSIX::_exit(127);
    }
    waitpid($pid, 0);
    die "openssl @args failed:\n" . _tail(_slurp($out), 15) if $?;
}

sub _key_args { return ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes') }

sub _make_ca {
    my ($dir, $name, $cn) = @_;
    _openssl($dir, 'req', '-x509', '-new', _key_args(), '-keyout', "$dir/$name.key", '-out', "$dir/$name.crt",
             '-days', 30, '-subj', "/CN=$cn", '-config', "$dir/openssl.cnf", '-extensions', 'ca',
             '-set_serial', ++$SERIAL);
}

sub _make_leaf {
    my ($dir, $name, $ca, $cn, $ext) = @_;
    _openssl($dir, 'req', '-new', _key_args(), '-keyout', "$dir/$name.key", '-out', "$dir/$name.csr",
             '-subj', "/CN=$cn", '-config', "$dir/openssl.cnf");
    _openssl($dir, 'x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/$ca.crt", '-CAkey', "$dir/$ca.key",
             '-set_serial', ++$SERIAL, '-days', 30, '-out', "$dir/$name.crt",
             '-extfile', "$dir/openssl.cnf", '-extensions', $ext);
    unlink "$dir/$name.csr";
}

sub make_certs {
    my ($dir) = @_;
    unless (defined $dir) {
        $dir = File::Temp::tempdir('redis-tls-XXXXXX', TMPDIR => 1, CLEANUP => 0);
        push @TEMP_DIRS, $dir;
    }
    make_path($dir);
    chmod 0755, $dir;
    _spew("$dir/openssl.cnf", $OPENSSL_CONF);
    _make_ca($dir, 'ca', 'Recording Test CA');
    _make_ca($dir, 'wrong-ca', 'Unrelated Test CA');
    _make_leaf($dir, 'server', 'ca', 'localhost', 'server');
    _make_leaf($dir, 'client', 'ca', 'recording-client', 'client');
    _make_leaf($dir, 'wrong-server', 'wrong-ca', 'localhost', 'server');
    _make_leaf($dir, 'wrong-client', 'wrong-ca', 'recording-client', 'client');
    chmod 0644, glob("$dir/*.crt"), glob("$dir/*.key");
    return {
        dir => $dir,
        ca => "$dir/ca.crt", ca_key => "$dir/ca.key",
        wrong_ca => "$dir/wrong-ca.crt", wrong_ca_key => "$dir/wrong-ca.key",
        server_cert => "$dir/server.crt", server_key => "$dir/server.key",
        client_cert => "$dir/client.crt", client_key => "$dir/client.key",
        wrong_server_cert => "$dir/wrong-server.crt", wrong_server_key => "$dir/wrong-server.key",
        wrong_client_cert => "$dir/wrong-client.crt", wrong_client_key => "$dir/wrong-client.key",
    };
}

# --------------------------------------------------------------------------
# A RESP client over TLS
# --------------------------------------------------------------------------

sub _encode {
    my @args = @_;
    my $req = '*' . @args . "\r\n";
    for my $arg (@args) {
        my $b = defined $arg ? "$arg" : '';
        utf8::encode($b) if utf8::is_utf8($b);
        $req .= '$' . length($b) . "\r\n$b\r\n";
    }
    return $req;
}

# Appends what comes to $$buf: data OpenSSL holds already (pending) first,
# else waits for the socket. Dies at EOF, on errors and after $deadline.
sub _read_more {
    my ($sock, $buf, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    while (1) {
        unless ($sock->can('pending') && $sock->pending) {
            my $left = $deadline - time;
            die "redis: timeout\n" if $left <= 0;
            next unless $sel->can_read($left);
        }
        my $n = sysread($sock, $$buf, 65536, length $$buf);
        die "redis closed the connection\n" if defined $n && $n == 0;
        return if $n;
        next if $!{EAGAIN} || $!{EINTR};
        die "redis: read: " . ($IO::Socket::SSL::SSL_ERROR || $!) . "\n";
    }
}

# One reply: a string, a number, undef (nil), an array ref or {error => ...}.
sub _parse {
    my ($sock, $buf, $deadline) = @_;
    my $i;
    _read_more($sock, $buf, $deadline) while ($i = index($$buf, "\r\n")) < 0;
    my $line = substr($$buf, 0, $i + 2, '');
    my ($type, $rest) = $line =~ /^(.)(.*)\r\n\z/s;
    return $rest              if $type eq '+';
    return { error => $rest } if $type eq '-';
    return 0 + $rest          if $type eq ':';
    if ($type eq '$') {
        return undef if $rest < 0;
        _read_more($sock, $buf, $deadline) while length $$buf < $rest + 2;
        return substr(substr($$buf, 0, $rest + 2, ''), 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { _parse($sock, $buf, $deadline) } 1 .. $rest ];
    }
    die "unexpected redis reply: $line\n";
}

sub tls_connect {
    my (%o) = @_;
    require IO::Socket::SSL;
    my $sock = IO::Socket::SSL->new(
        PeerHost => '127.0.0.1', PeerPort => $o{port}, Proto => 'tcp', Timeout => $o{timeout} // 3,
        SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_PEER(), SSL_ca_file => $o{ca},
        SSL_verifycn_scheme => 'default', SSL_verifycn_name => $o{name} // '127.0.0.1',
        (defined $o{sni} ? (SSL_hostname => $o{sni}) : ()),
        ($o{cert} ? (SSL_cert_file => $o{cert}, SSL_key_file => $o{key}) : ()),
        ($o{version} ? (SSL_version => $o{version}) : ()),
    ) or die "cannot connect over TLS to 127.0.0.1:$o{port}: " . ($IO::Socket::SSL::SSL_ERROR || $@ || $!) . "\n";
    return $sock;
}

sub tls_call {
    my (%o) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $sock = tls_connect(%o);
    my @login;
    my $login = $o{login} || {};
    push @login, ['AUTH', (defined $login->{user} ? ($login->{user}) : ()), $login->{password}]
        if defined $login->{password};
    push @login, ['SELECT', $login->{db}] if defined $login->{db};
    my @cmds = @{ $o{commands} };
    my $req = join '', map { _encode(@$_) } @login, @cmds;
    my $deadline = time + ($o{timeout} // 10);
    while (length $req) {
        my $n = syswrite($sock, $req);
        die "redis: write: " . ($IO::Socket::SSL::SSL_ERROR || $!) . "\n" unless defined $n;
        substr($req, 0, $n) = '';
    }
    my $buf = '';
    for my $c (@login) {
        my $r = _parse($sock, \$buf, $deadline);
        die "redis: $c->[0]: $r->{error}\n" if ref $r eq 'HASH';
    }
    my @replies = map { _parse($sock, \$buf, $deadline) } @cmds;
    $sock->close(SSL_fast_shutdown => 1);
    return wantarray ? @replies : $replies[-1];
}

# --------------------------------------------------------------------------
# A TLS-only redis-server
# --------------------------------------------------------------------------

sub start {
    my ($class, %o) = @_;
    die "start: certs => make_certs(...) is needed\n" unless $o{certs};
    my $self = bless { %o, port => $o{port} // _free_port() }, $class;
    $self->{dir} = "$o{certs}{dir}/redis-$self->{port}";
    make_path($self->{dir});
    push @SERVERS, $self;
    $self->start_again;
    return $self;
}

sub port    { $_[0]{port} }
sub addr    { '127.0.0.1:' . $_[0]{port} }
sub running { defined $_[0]{pid} }
sub server_log { my ($self) = @_; return _slurp("$self->{dir}/redis.log") . _slurp("$self->{dir}/stdout") }

sub _login { my ($self) = @_; return defined $self->{password} ? { password => $self->{password} } : {} }

sub cmd_as_raw {
    my ($self, $login, @cmd) = @_;
    my $c = $self->{certs};
    return scalar tls_call(port => $self->{port}, ca => $self->{client_ca} // $c->{ca}, cert => $c->{client_cert},
                           key => $c->{client_key}, login => $login, commands => [\@cmd]);
}

sub cmd_as {
    my ($self, $login, @cmd) = @_;
    my $reply = $self->cmd_as_raw($login, @cmd);
    die "redis error for '@cmd': $reply->{error}\n" if ref $reply eq 'HASH';
    return $reply;
}

sub cmd_raw { my ($self, @cmd) = @_; return $self->cmd_as_raw($self->_login, @cmd) }
sub cmd     { my ($self, @cmd) = @_; return $self->cmd_as($self->_login, @cmd) }

sub start_again {
    my ($self) = @_;
    return 1 if $self->running;
    my $c = $self->{certs};
    my $dir = $self->{dir};
    my @args = ('--port', 0, '--tls-port', $self->{port}, '--bind', '127.0.0.1',
                '--tls-cert-file', $self->{cert} // $c->{server_cert},
                '--tls-key-file', $self->{key} // $c->{server_key},
                '--tls-ca-cert-file', $c->{ca}, '--tls-auth-clients', $self->{auth_clients} // 'no',
                '--save', '', '--appendonly', 'no', '--daemonize', 'no',
                '--dir', $dir, '--logfile', "$dir/redis.log",
                (defined $self->{password} ? ('--requirepass', $self->{password}) : ()),
                @{ $self->{options} || [] });
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/stdout";
        open STDERR, '>&', \*STDOUT;
        { no warnings 'exec'; exec { $REDIS_SERVER } $REDIS_SERVER, @args; }
        POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    my $deadline = time + ($self->{start_timeout} // 10);
    while (1) {
        my $pong = eval { local $SIG{__DIE__}; $self->cmd_raw('PING') };
        return 1 if defined $pong && !ref $pong && $pong eq 'PONG';
        my $exited = waitpid($pid, WNOHANG) == $pid;
        if ($exited || time > $deadline) {
            $self->_kill unless $exited;
            undef $self->{pid};
            die "redis-server --tls-port $self->{port} did not start"
              . ($exited ? " (it exited, status $?)" : '') . ":\n" . _tail($self->server_log, 15);
        }
        sleep 0.05;
    }
}

sub _wait_exit {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || $r == -1;
        return 0 if time >= $deadline;
        sleep 0.02;
    }
}

sub _kill {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    for my $sig (qw(TERM KILL)) {
        kill $sig => $pid;
        last if _wait_exit($pid, 3);
    }
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return 1;
    # SHUTDOWN does not reply: the server just closes the connection.
    eval { local $SIG{__DIE__}; $self->cmd_raw('SHUTDOWN', 'NOSAVE') };
    $self->_kill unless _wait_exit($pid, 5);
    undef $self->{pid};
    return 1;
}

sub restart {
    my ($self, %o) = @_;
    $self->stop;
    $self->{$_} = $o{$_} for grep { exists $o{$_} } qw(cert key client_ca);
    return $self->start_again;
}

# --------------------------------------------------------------------------
# Fake peers
# --------------------------------------------------------------------------

sub set_fake_mode {
    my ($dir, $mode) = @_;
    _spew("$dir/mode.tmp", $mode);
    rename "$dir/mode.tmp", "$dir/mode" or die "rename $dir/mode: $!\n";
}

sub fake_log { my ($dir) = @_; return map { s/\n\z//r } split /^/m, _slurp("$dir/log") }

sub _open_log {
    my ($dir) = @_;
    open my $log, '>>', "$dir/log" or POSIX::_exit(1);
    $log->autoflush(1);
    return $log;
}

# Complete RESP arrays at the start of $$buf, taken from it.
sub _commands {
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

# What the fake answers $cmd in $mode: (bytes, then: '' | 'close' | 'notify').
sub _fake_reply {
    my ($mode, $cmd) = @_;
    my $name = uc($cmd->[0] // '');
    return ('', '') if $mode eq 'silent';
    if ($name eq 'HMGET') {
        my $fields = @$cmd - 2;
        return ("*$fields\r\n\$1\r\n1\r\n\$10\r\nabc", 'notify') if $mode eq 'cut_hmget';
        return ("*$fields\r\n\$1\r\n1\r\n" . ("\$-1\r\n" x ($fields - 1)), '');
    }
    if ($name eq 'RPUSH') {
        return (':1', 'close') if $mode eq 'cut_rpush';
        return (':' . (@$cmd - 2) . "\r\n", '');
    }
    return ("+PONG\r\n", '') if $name eq 'PING';
    return ("+OK\r\n", '');
}

sub start_fake_tls_redis {
    my (%o) = @_;
    my ($certs, $dir) = @o{qw(certs dir)};
    make_path($dir);
    set_fake_mode($dir, $o{mode} // 'ok');
    require IO::Socket::SSL;
    return Test::Nginx::Recording::start_server(sub {
        my ($listener, $alive) = @_;
        my $log = _open_log($dir);
        my $sel = IO::Select->new($listener);
        my (%buf, @kept);
        my $drop = sub { my ($fh) = @_; $sel->remove($fh); delete $buf{ fileno $fh } };
        while ($alive->()) {
            for my $fh ($sel->can_read(0.05)) {
                if ($fh == $listener) {
                    my $c = $listener->accept or next;
                    # A slow server: its handshake begins this late.
                    sleep $o{handshake_delay} if $o{handshake_delay};
                    if (!IO::Socket::SSL->start_SSL($c, SSL_server => 1, Timeout => 3,
                                                    SSL_cert_file => $certs->{server_cert},
                                                    SSL_key_file => $certs->{server_key})) {
                        print {$log} "handshake failed: $IO::Socket::SSL::SSL_ERROR\n";
                        close $c;
                        next;
                    }
                    my $sni = $c->get_servername;
                    print {$log} 'accept sni=' . (defined $sni && length $sni ? $sni : '-') . "\n";
                    $sel->add($c);
                    $buf{ fileno $c } = '';
                    next;
                }
                my $eof;
                do {
                    my $n = sysread($fh, $buf{ fileno $fh }, 65536, length $buf{ fileno $fh });
                    $eof = !$n;
                } while (!$eof && $fh->pending);
                my @cmds = _commands(\$buf{ fileno $fh });
                for my $cmd (@cmds) {
                    my $mode = _slurp("$dir/mode") || 'ok';
                    print {$log} "$mode " . uc($cmd->[0] // '') . "\n";
                    my ($reply, $then) = _fake_reply($mode, $cmd);
                    syswrite($fh, $reply) if length $reply;
                    next unless $then;
                    $drop->($fh);
                    if ($then eq 'close') {
                        $fh->close(SSL_fast_shutdown => 1);   # close_notify, then FIN
                    } else {
                        $fh->stop_SSL(SSL_fast_shutdown => 1);   # close_notify; TCP stays open
                        push @kept, $fh;
                    }
                    print {$log} "close_notify sent ($then)\n";
                    undef $eof;
                    last;
                }
                if ($eof && exists $buf{ fileno $fh }) {
                    $drop->($fh);
                    close $fh;
                }
            }
        }
    });
}

# Reads the first TLS record (the ClientHello) from a new connection; returns
# its length, or -1 when what came is no TLS handshake record.
sub _read_hello {
    my ($c) = @_;
    my $buf = '';
    my $deadline = time + 3;
    my $sel = IO::Select->new($c);
    while (time < $deadline) {
        if (length $buf >= 5) {
            return -1 if ord(substr($buf, 0, 1)) != 0x16;
            my $len = unpack('n', substr($buf, 3, 2));
            return length $buf if length $buf >= 5 + $len;
        }
        next unless $sel->can_read(0.1);
        my $n = sysread($c, $buf, 65536, length $buf);
        last unless $n;
    }
    return length $buf;
}

sub start_handshake_cutter {
    my (%o) = @_;
    my $dir = $o{dir};
    my $how = $o{how} // 'hello';
    make_path($dir);
    return Test::Nginx::Recording::start_server(sub {
        my ($listener, $alive) = @_;
        my $log = _open_log($dir);
        my $sel = IO::Select->new($listener);
        while ($alive->()) {
            next unless $sel->can_read(0.1);
            my $c = $listener->accept or next;
            my $n = _read_hello($c);
            print {$log} "hello $n\n";
            if ($how eq 'half') {
                # A handshake record of 122 bytes announced, a ServerHello's
                # first 16 sent.
                syswrite($c, "\x16\x03\x03\x00\x7a" . "\x02\x00\x00\x76\x03\x03" . ("\x5a" x 10));
                sleep 0.1;
            }
            close $c;
        }
    });
}

sub start_counting_silent_server {
    my (%o) = @_;
    my $dir = $o{dir};
    make_path($dir);
    return Test::Nginx::Recording::start_server(sub {
        my ($listener, $alive) = @_;
        my $log = _open_log($dir);
        my $sel = IO::Select->new($listener);
        while ($alive->()) {
            for my $fh ($sel->can_read(0.1)) {
                if ($fh == $listener) {
                    my $c = $listener->accept or next;
                    print {$log} "accept\n";
                    $sel->add($c);
                    next;
                }
                next if sysread($fh, my $buf, 65536);
                $sel->remove($fh);
                close $fh;
            }
        }
    });
}

1;
