package Test::Nginx::RedisCluster;

# A throw-away Redis Cluster on loopback for integration tests:
#
#     use Test::Nginx::RedisCluster;
#     my $why = Test::Nginx::RedisCluster::unavailable();   # '' or a reason to skip
#     my $c = Test::Nginx::RedisCluster->start(masters => 3, replicas => 1);
#     start_nginx(no_default_redis => 1,
#                 http_config => 'recording_redis ' . join(' ', $c->seeds) . ' cluster;', ...);
#     $c->cmd(HSET => 'recording:site:1', enabled => 1);   # routed like redis-cli -c
#     $c->call($port, 'LRANGE', $key, 0, -1);               # one node, no redirection
#
# start() runs masters * (1 + replicas) `redis-server --cluster-enabled yes`
# (Redis 7 or later) on free loopback ports (the cluster
# bus on other free ports, --cluster-port), in a temporary directory, with
# --cluster-node-timeout (default 1000 ms, for a fast failover), joins them
# with `redis-cli --cluster create ... --cluster-replicas N --cluster-yes`
# and waits until every node says cluster_state:ok, all agree on the slot
# map and every replica is in sync. Every node is killed at exit (END, and
# INT/TERM/HUP), whatever happened; TEST_NGINX_NO_CLEAN=1 keeps the
# directory (logs in <dir>/<port>/redis.log).
#
# TLS: start(..., tls => { cert => FILE, key => FILE, ca => FILE }) runs
# every node TLS only (--port 0 --tls-port <port> --tls-cluster yes
# --tls-replication yes --tls-auth-clients no), the certificate also
# presented to the other nodes (its extendedKeyUsage must allow clientAuth
# too, or be absent); `redis-cli --tls --cacert` creates the cluster and
# every method below talks TLS (IO::Socket::SSL, verifying the nodes'
# certificate for 127.0.0.1 against ca). ports() and seeds() are then
# the TLS ports. Without tls, nothing changes.
#
# Methods:
#   seeds()                  "127.0.0.1:<port>" of every node
#   ports() masters()        every node's port; the masters that own slots
#   call($port, @cmd)        one command on a fresh connection; an error reply
#                            is {error => 'TEXT'}; dies when the node does not answer
#   pipeline($port, [@cmd]...)  several on one connection (ASKING, then a command)
#   cmd(@cmd)                the command on the owner of its key ($cmd[1]),
#                            following MOVED and ASK; dies on other errors
#   keyslot($key)            CLUSTER KEYSLOT, as a node computes it
#   owner($slot)             the port of the master owning $slot (a live node's view)
#   slot_map()               [[start, end, port], ...] from a live node
#   node_id($port)           CLUSTER MYID
#   replica_of($port)        a replica of that master (its port)
#   kill_node($port)         SIGKILL (the node is then considered gone)
#   wait_ok($seconds)        as after start(): 1 or 0 on timeout (with diagnostics in ->{why})
#   queue_elements()         every element of every recording:queue:* key on the
#                            masters: ([$key, $port, $element], ...)
#   stop()                   kills every node

use strict;
use warnings;

use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp ();
use IO::Select ();
use IO::Socket::INET ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

my $REDIS_SERVER = $ENV{TEST_NGINX_REDIS_SERVER} || 'redis-server';
my $REDIS_CLI    = $ENV{TEST_NGINX_REDIS_CLI}    || 'redis-cli';
my $OWNER_PID    = $$;
my @CLUSTERS;     # every cluster started, stopped at exit

END {
    if ($$ == $OWNER_PID) {
        local ($?, $!, $@);
        eval { $_->stop } for @CLUSTERS;
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

# '' when a cluster can be started here, else why not.
sub unavailable {
    return "$REDIS_SERVER not found" unless _in_path($REDIS_SERVER);
    return "$REDIS_CLI not found" unless _in_path($REDIS_CLI);
    my $version = `$REDIS_SERVER --version 2>&1` // '';
    my ($major) = $version =~ /v=(\d+)\./;
    return "redis-server 7 or later is needed (--cluster-port), found: $version"
        unless $major && $major >= 7;
    return '';
}

sub _free_ports {
    my ($n) = @_;
    my @socks = map {
        IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
                              Listen => 1) or die "cannot bind a loopback port: $@\n";
    } 1 .. $n;
    my @ports = map { $_->sockport } @socks;
    close $_ for @socks;
    return @ports;
}

sub start {
    my ($class, %o) = @_;
    my $masters  = $o{masters}  // 3;
    my $replicas = $o{replicas} // 1;
    my $timeout  = $o{node_timeout} // 1000;
    my $n = $masters * (1 + $replicas);
    my $self = bless {
        dir   => File::Temp::tempdir('redis-cluster-XXXXXX', TMPDIR => 1, CLEANUP => 0),
        nodes => [],
        gone  => {},
        tls   => $o{tls},
    }, $class;
    my $tls = $self->{tls};
    require IO::Socket::SSL if $tls;
    my @tls_args = $tls ? ('--tls-cluster', 'yes', '--tls-replication', 'yes', '--tls-cert-file', $tls->{cert},
                           '--tls-key-file', $tls->{key}, '--tls-ca-cert-file', $tls->{ca},
                           '--tls-auth-clients', 'no') : ();
    push @CLUSTERS, $self;

    my @ports = _free_ports(2 * $n);
    for my $i (0 .. $n - 1) {
        my ($port, $bus) = ($ports[$i], $ports[$n + $i]);
        my $dir = "$self->{dir}/$port";
        make_path($dir);
        my $pid = fork // die "fork: $!\n";
        if ($pid == 0) {
            chdir $dir or POSIX::_exit(127);
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', "$dir/stdout";
            open STDERR, '>&', \*STDOUT;
            { no warnings 'exec'; exec $REDIS_SERVER, ($tls ? ('--port', 0, '--tls-port', $port, @tls_args)
                                                            : ('--port', $port)),
                 '--cluster-port', $bus, '--bind', '127.0.0.1',
                 '--cluster-enabled', 'yes', '--cluster-config-file', "$dir/nodes.conf",
                 '--cluster-node-timeout', $timeout, '--save', '', '--appendonly', 'no',
                 '--repl-diskless-sync-delay', 0,  # replicas in sync at once, not after 5 s
                 '--daemonize', 'no', '--dir', $dir, '--logfile', "$dir/redis.log"; }
            POSIX::_exit(127);
        }
        push @{ $self->{nodes} }, { port => $port, bus => $bus, pid => $pid };
    }
    for my $node (@{ $self->{nodes} }) {
        my $deadline = time + 10;
        until ((eval { $self->call($node->{port}, 'PING') } // '') eq 'PONG') {
            die "redis-server on port $node->{port} did not start:\n" . $self->_log($node->{port})
                if time > $deadline || waitpid($node->{pid}, WNOHANG) != 0;
            sleep 0.05;
        }
    }
    my $out = "$self->{dir}/create.out";
    my $status = system("$REDIS_CLI " . ($tls ? "--tls --cacert '$tls->{ca}' " : '') . "--cluster create "
                        . join(' ', $self->seeds)
                        . " --cluster-replicas $replicas --cluster-yes >$out 2>&1");
    die "redis-cli --cluster create failed:\n" . _slurp($out) if $status != 0;
    $self->wait_ok(20) or die "the cluster did not come up: $self->{why}\n";
    return $self;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return <$fh> // '';
}

sub _log {
    my ($self, $port) = @_;
    my @lines = split /\n/, _slurp("$self->{dir}/$port/redis.log") . _slurp("$self->{dir}/$port/stdout");
    return join("\n", @lines[($#lines > 20 ? $#lines - 20 : 0) .. $#lines]) . "\n";
}

sub stop {
    my ($self) = @_;
    for my $node (@{ $self->{nodes} }) {
        next unless $node->{pid};
        kill KILL => $node->{pid};
        waitpid($node->{pid}, 0);
        $node->{pid} = undef;
    }
    if ($ENV{TEST_NGINX_NO_CLEAN}) {
        print STDERR "# TEST_NGINX_NO_CLEAN: keeping $self->{dir}\n" unless $self->{kept}++;
    } else {
        remove_tree($self->{dir});
    }
}

sub seeds { my ($self) = @_; return map { "127.0.0.1:$_" } $self->ports }
sub ports { my ($self) = @_; return map { $_->{port} } @{ $self->{nodes} } }
sub live_ports { my ($self) = @_; return grep { !$self->{gone}{$_} } $self->ports }

sub kill_node {
    my ($self, $port) = @_;
    my ($node) = grep { $_->{port} == $port } @{ $self->{nodes} };
    die "no node on port $port\n" unless $node && $node->{pid};
    kill KILL => $node->{pid};
    waitpid($node->{pid}, 0);
    $node->{pid} = undef;
    $self->{gone}{$port} = 1;
}

# --- A small RESP client ----------------------------------------------------

sub _encode {
    my @args = @_;
    my $req = '*' . @args . "\r\n";
    for my $arg (@args) {
        my $b = "$arg";
        utf8::encode($b) if utf8::is_utf8($b);
        $req .= '$' . length($b) . "\r\n$b\r\n";
    }
    return $req;
}

sub _read_more {
    my ($sock, $buf, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    while (1) {
        # A TLS socket may hold decrypted bytes already: no select for them.
        unless ($sock->can('pending') && $sock->pending) {
            my $left = $deadline - time;
            die "redis: timeout\n" if $left <= 0;
            next unless $sel->can_read($left);
        }
        my $n = sysread($sock, $$buf, 65536, length $$buf);
        die "redis closed the connection\n" if defined $n && $n == 0;
        return if $n;
        next if $!{EAGAIN} || $!{EINTR};
        die "redis: read: $!\n";
    }
}

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

sub pipeline {
    my ($self, $port, @cmds) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $tls = $self->{tls};
    my $sock = $tls
        ? IO::Socket::SSL->new(PeerHost => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 2,
                               SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_PEER(), SSL_ca_file => $tls->{ca},
                               SSL_verifycn_scheme => 'default', SSL_verifycn_name => '127.0.0.1')
        : IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                Timeout => 2);
    unless ($sock) {
        no warnings 'once';   # IO::Socket::SSL is loaded at run time
        die "cannot connect to redis at 127.0.0.1:$port: " . ($tls ? $IO::Socket::SSL::SSL_ERROR || $@ : $@) . "\n";
    }
    my $deadline = time + 10;
    my $req = join '', map { _encode(@$_) } @cmds;
    while (length $req) {
        my $n = syswrite($sock, $req) // die "redis: write: $!\n";
        substr($req, 0, $n) = '';
    }
    my $buf = '';
    my @replies = map { _parse($sock, \$buf, $deadline) } @cmds;
    close $sock;
    return @replies;
}

sub call {
    my ($self, $port, @cmd) = @_;
    return ($self->pipeline($port, \@cmd))[0];
}

sub _ok {
    my ($reply, @cmd) = @_;
    die "redis error for '@cmd': $reply->{error}\n" if ref $reply eq 'HASH';
    return $reply;
}

# --- The cluster's view -----------------------------------------------------

sub _any_live {
    my ($self) = @_;
    my @live = $self->live_ports or die "no live node\n";
    return $live[0];
}

sub keyslot { my ($self, $key) = @_; return _ok($self->call($self->_any_live, 'CLUSTER', 'KEYSLOT', $key)) }
sub node_id { my ($self, $port) = @_; return _ok($self->call($port, 'CLUSTER', 'MYID')) }

sub slot_map {
    my ($self, $port) = @_;
    my $slots = _ok($self->call($port // $self->_any_live, 'CLUSTER', 'SLOTS'));
    return [ sort { $a->[0] <=> $b->[0] } map { [ $_->[0], $_->[1], $_->[2][1] ] } @$slots ];
}

sub owner {
    my ($self, $slot) = @_;
    for my $range (@{ $self->slot_map }) {
        return $range->[2] if $slot >= $range->[0] && $slot <= $range->[1];
    }
    return undef;
}

sub masters {
    my ($self) = @_;
    my %seen;
    return grep { !$seen{$_}++ } map { $_->[2] } @{ $self->slot_map };
}

# The port of a live replica of the master on $port. Right after the
# cluster forms, a node may not list the replica yet: asked again for up to
# five seconds.
sub replica_of {
    my ($self, $port) = @_;
    my $id = $self->node_id($port);
    my $deadline = time + 5;
    while (1) {
        for my $line (split /\n/, _ok($self->call($self->_any_live, 'CLUSTER', 'NODES'))) {
            my ($addr, $flags, $master) = (split ' ', $line)[1, 2, 3];
            next unless $flags =~ /\bslave\b/ && $flags !~ /\bfail\b/ && $master eq $id;
            my ($p) = $addr =~ /:(\d+)@/;
            return $p;
        }
        return undef if time >= $deadline;
        sleep 0.1;
    }
}

# The command on the owner of its key, following redirections.
sub cmd {
    my ($self, @cmd) = @_;
    my $port = $self->owner($self->keyslot($cmd[1]));
    my $asking = 0;
    for (1 .. 5) {
        my @replies = $self->pipeline($port, ($asking ? (['ASKING']) : ()), \@cmd);
        my $reply = $replies[-1];
        if (ref $reply eq 'HASH' && $reply->{error} =~ /^(MOVED|ASK) \d+ [^:]*:(\d+)$/) {
            ($asking, $port) = ($1 eq 'ASK', $2);
            next;
        }
        return _ok($reply, @cmd);
    }
    die "too many redirections for '@cmd'\n";
}

sub wait_ok {
    my ($self, $seconds) = @_;
    my $deadline = time + $seconds;
    while (1) {
        my $why = eval { $self->_not_ok } // "$@";
        return 1 unless $why;
        $self->{why} = $why;
        return 0 if time > $deadline;
        sleep 0.1;
    }
}

sub _not_ok {
    my ($self) = @_;
    my $first;
    for my $port ($self->live_ports) {
        my $info = _ok($self->call($port, 'CLUSTER', 'INFO'));
        return "$port: not cluster_state:ok" unless $info =~ /^cluster_state:ok\r?$/m;
        my $map = join ' ', map { "@$_" } @{ $self->slot_map($port) };
        $first //= $map;
        return "$port sees another slot map ($map, not $first)" if $map ne $first;
        my $replication = _ok($self->call($port, 'INFO', 'replication'));
        return "$port: replica not in sync"
            if $replication =~ /^role:slave\r?$/m && $replication !~ /^master_link_status:up\r?$/m;
    }
    return "no slot served" unless $first;
    return '';
}

sub queue_elements {
    my ($self) = @_;
    my @out;
    for my $port ($self->masters) {
        for my $key (sort @{ _ok($self->call($port, 'KEYS', 'recording:queue:*')) }) {
            push @out, map { [ $key, $port, $_ ] } @{ _ok($self->call($port, 'LRANGE', $key, 0, -1)) };
        }
    }
    return @out;
}

1;
