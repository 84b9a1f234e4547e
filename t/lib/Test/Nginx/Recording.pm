package Test::Nginx::Recording;

# Minimal Test::Nginx-compatible harness for the recording module.
#
# Usage in a .t file:
#
#     use lib 't/lib';
#     use Test::Nginx::Recording;          # or: use Test::Nginx::Recording 'no_plan';
#     plan tests => planned_tests();       # optional, see "Plan" below
#     run_tests();
#     __DATA__
#     === TEST 1: name
#     --- config
#         location /t { return 200 "hi"; }
#     --- request
#     GET /t
#     --- response_body: hi
#
# Plan: every check section present in a block is exactly ONE test, plus one
# default test per block ("no [alert]/[crit]/[emerg]/crash in error.log", or
# "config rejected" for must_die blocks).  So you can either
#   * declare nothing: run_tests() declares 'no_plan' when no plan exists yet,
#   * `use Test::Nginx::Recording 'no_plan';`, or
#   * `plan tests => planned_tests() + $extra;` (exact count of all blocks).
# `repeat_each()` exists for compatibility and always returns 1.
#
# Block sections:
#   config setup:   main_config http_config config no_default_redis must_die
#   redis:          redis_setup redis_check redis_check_result redis_check_like
#   request:        request ("METHOD URI\nbody", or `request eval`), raw_request,
#                   more_headers, timeout
#   checks:         error_code response_body response_body_like response_headers
#                   response_headers_like error_log no_error_log
#   Test::Base:     ONLY SKIP LAST
# add_block_preprocessor(sub { my $block = shift; ... }) runs before each
# block, e.g. to give every block a default config:
#   $block->set_value(config => $default) unless defined $block->config;
# Each check section is ONE test (all its lines together).  redis_check alone
# only runs the commands; add redis_check_result or redis_check_like to test.
# Blocks run in order: FLUSHALL + redis_setup, start nginx, request,
# redis_check, stop nginx (SIGQUIT), then the log checks on that block's log.
# must_die blocks only run `nginx -t` and check its output.
#
# Procedural API (for what blocks cannot express):
#   start_nginx(config => ..., http_config => ..., main_config => ...,
#               no_default_redis => 1)         dies with the log tail on failure
#   reload_nginx(%same_sections_or_none)       1 ok, 0 config rejected
#   stop_nginx()                               1 if the graceful stop worked
#   http_request(method, uri, headers => [N => v, ...], body, timeout, raw)
#     -> {status, headers => {lc name => 'v1, v2'}, raw_headers, body, raw, error}
#   error_log_text() servroot() server_port() html_dir()
#   redis_cmd(@args) redis_cmd_raw(@args) redis_port() redis_start()
#   redis_stop() redis_restart()
#   gzip_bytes($s) deflate_bytes($s) raw_deflate_bytes($s)
#
# `$TEST_NGINX_FOO` in config sections and more_headers is replaced by
# $ENV{TEST_NGINX_FOO}; the harness sets TEST_NGINX_SERVER_PORT,
# TEST_NGINX_REDIS_PORT, TEST_NGINX_HTML_DIR and TEST_NGINX_SERVROOT.
#
# Value conventions (Test::Base applies its default `norm trim` filters, so
# CRLF becomes LF and a multi-line value keeps exactly one trailing newline):
#   * request: the single trailing newline is stripped (not for `request eval`);
#   * response_body is compared exactly (inline `--- response_body: x` has no
#     newline, the multi-line form ends in one);
#   * *_like regexes and redis_check_result lose one trailing newline;
#   * `eval` sections are evaluated in package main, so helpers exported to the
#     test file (gzip_bytes, ...) can be used; errors in them are fatal.
#
# Environment: TEST_NGINX_MODULE (default <repo>/build/ngx_http_recording_module.so;
# set to '' to run plain nginx: no load_module and no default recording_redis),
# TEST_NGINX_BINARY (default /usr/sbin/nginx), TEST_NGINX_REDIS_SERVER (default
# redis-server from PATH), TEST_NGINX_NO_CLEAN=1 keeps the temp directory.
#
# ASan mode: TEST_NGINX_ASAN_PRELOAD=/path/to/libasan.so runs nginx (not
# redis-server or the tests' own tools) with that runtime preloaded, for a
# module built with -fsanitize=address (scripts/test-asan reads the reports).
#
# Valgrind mode: TEST_NGINX_USE_VALGRIND=1 runs nginx (and `nginx -t` for
# must_die blocks) under valgrind's memcheck, master and workers alike (one
# log per process: <servroot>/logs/valgrind.<pid>.log); any value other than
# 0 or 1 is taken as extra valgrind options, e.g.
# TEST_NGINX_USE_VALGRIND='--track-origins=yes'.  Startup waits 10 times,
# request timeouts (http_request, concurrent_requests, poll_until) 5 times and
# the graceful stop 6 times longer.  Every nginx run gets ONE more test, after
# it stops: "valgrind: no invalid access or definite leak from the module".
# It fails on any memcheck error (invalid read/write/free, uninitialised
# value, ...) or definite leak with a stack frame of the module (its .so, its
# functions and sources, hiredis), and on a process killed by a signal;
# errors and leaks wholly inside nginx or the libraries it uses pass.  In
# blocks that is one more test per block (planned_tests() counts it); in
# procedural tests stop_nginx() adds it (and start_nginx() when it stops a
# running nginx).  valgrind_problems($log_text) is that check on the text of
# valgrind logs: it returns the offending records.  use_valgrind() is true in
# this mode.

use strict;
use warnings;

# Subclass Test::Base the way Test::Nginx does: its blocks/plan/is/... (and
# Test::More's ok/like/diag) are re-exported to the test file by Spiffy, and
# `use Test::Nginx::Recording 'no_plan'` works like `use Test::Base 'no_plan'`.
use Test::Base -base;
require Test::Base::Filter;

use Cwd ();
use File::Spec ();
use File::Temp ();
use File::Path qw(make_path remove_tree);
use IO::Socket::INET ();
use IO::Select ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use Text::Diff ();
use Compress::Zlib ();
use Compress::Raw::Zlib ();
use IO::Compress::Gzip ();

our @EXPORT = qw(
    run_tests planned_tests repeat_each add_block_preprocessor
    start_nginx start_second_nginx stop_nginx reload_nginx nginx_test http_request error_log_text
    nginx_master_pid nginx_worker_pids
    servroot server_port html_dir
    redis_cmd redis_cmd_raw redis_port redis_pid redis_start redis_stop redis_restart redis_kill
    gzip_bytes deflate_bytes raw_deflate_bytes
    concurrent_requests poll_until count_matches crash_lines no_crash ingest_location
    start_server start_silent_server track_child stop_child
    use_valgrind valgrind_problems
);

# --------------------------------------------------------------------------
# Configuration and per-file state
# --------------------------------------------------------------------------

my $REPO = do {   # this file is <repo>/t/lib/Test/Nginx/Recording.pm
    my @d = File::Spec->splitdir(File::Spec->rel2abs(__FILE__));
    File::Spec->catdir(@d[0 .. $#d - 5]);
};
my $MODULE = exists $ENV{TEST_NGINX_MODULE}
    ? $ENV{TEST_NGINX_MODULE}
    : "$REPO/build/ngx_http_recording_module.so";
$MODULE = File::Spec->rel2abs($MODULE) if length $MODULE;
my $NGINX        = $ENV{TEST_NGINX_BINARY}       || '/usr/sbin/nginx';
my $REDIS_SERVER = $ENV{TEST_NGINX_REDIS_SERVER} || 'redis-server';

# Valgrind mode (the Test::Nginx convention): TEST_NGINX_USE_VALGRIND=1 runs
# nginx under memcheck; any other value (but 0) is extra valgrind options.
my $VALGRIND = $ENV{TEST_NGINX_USE_VALGRIND} // '';
$VALGRIND = '' if $VALGRIND =~ /^\s*0?\s*$/;
my $USE_VALGRIND = length($VALGRIND) > 0;
my @VALGRIND_OPTS = (
    '--tool=memcheck', '--leak-check=full', '--show-leak-kinds=definite',
    '--errors-for-leak-kinds=definite', '--num-callers=40', '--trace-children=yes',
    # nginx dlclose()s the module when it frees a cycle (on exit, on reload)
    # before the leak check: keep its symbols so leak stacks still name it.
    '--keep-debuginfo=yes',
    ($VALGRIND eq '1' ? () : split(' ', $VALGRIND)),
);
sub use_valgrind { $USE_VALGRIND }

# Valgrind makes nginx 10-50 times slower: wait longer for everything it does.
my $START_TIMEOUT = 10 * ($USE_VALGRIND ? 10 : 1);   # nginx/redis coming up
my $STOP_TIMEOUT  = 5  * ($USE_VALGRIND ? 6 : 1);    # graceful stop (SIGQUIT)
my $TIME_FACTOR   = $USE_VALGRIND ? 5 : 1;           # request timeouts
our $REDIS_TIMEOUT = 10;  # seconds for one redis round trip

# The worker user when the tests run as root, as Debian's nginx would have
# it ("nobody" is nginx's own default): never root.
our $WORKER_USER = 'nobody ' . (getgrnam('nogroup') ? 'nogroup' : 'nobody');
my $OWNER_PID = $$;       # only this process cleans up in END
my ($SERVER_PORT, $REDIS_PORT) = _free_ports(2);
my $SERVROOT = File::Temp::tempdir('nginx-recording-XXXXXX',
                                   TMPDIR => 1, CLEANUP => 0);
make_path(map { "$SERVROOT/$_" } qw(conf logs html redis client_body_temp
          proxy_temp fastcgi_temp uwsgi_temp scgi_temp));
# Workers run as nobody when the tests run as root: they must reach the
# server root (tempdir makes it 0700) to serve its files.
chmod 0755, $SERVROOT, "$SERVROOT/html";

$ENV{TEST_NGINX_SERVER_PORT} = $SERVER_PORT;
$ENV{TEST_NGINX_REDIS_PORT}  = $REDIS_PORT;
$ENV{TEST_NGINX_HTML_DIR}    = "$SERVROOT/html";
$ENV{TEST_NGINX_SERVROOT}    = $SERVROOT;

my $ERROR_LOG  = "$SERVROOT/logs/error.log";
my $STDERR_LOG = "$SERVROOT/logs/nginx.stderr";

my $NGINX_PID;            # nginx master (our child), if running
my $REDIS_PID;            # redis-server (our child), if running
my $MODULE_CHECKED;
my %VG_RUN;               # valgrind mode: the current nginx run (started => where)
my $VG_RUNS = 0;          # nginx runs whose valgrind logs were checked
our $IN_BLOCK;            # run_tests() is running a block
my @CHILDREN;             # processes of the test's own (track_child)

sub repeat_each { 1 }
sub servroot    { $SERVROOT }
sub server_port { $SERVER_PORT }
sub html_dir    { "$SERVROOT/html" }
sub redis_port  { $REDIS_PORT }
sub redis_pid   { $REDIS_PID }    # undef when none runs (to SIGSTOP it, say)

# Stop everything we started, however the test ends (normal exit, die, or a
# signal we turn into exit).  $? is the test's exit status: keep it.
END {
    if ($$ == $OWNER_PID) {
        local ($?, $!, $@);
        eval { _stop_nginx() };
        # Too late for a test (the plan is done): say it at least.
        if ($USE_VALGRIND && %VG_RUN) {
            my @problems = eval { _valgrind_collect() };
            print STDERR "# valgrind: problems from the module in the last nginx run:\n",
                map { s/^/#   /mgr } @problems
                if @problems;
        }
        eval { redis_stop() };
        eval { stop_child($_) } for @CHILDREN;
        if ($ENV{TEST_NGINX_NO_CLEAN}) {
            print STDERR "# TEST_NGINX_NO_CLEAN: keeping $SERVROOT\n";
        } else {
            remove_tree($SERVROOT);
        }
    }
}
for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} ||= sub { print STDERR "# caught SIG$sig, cleaning up\n"; exit 1 };
}

# --------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------

sub _free_ports {
    my ($n) = @_;
    # Keep all sockets open until every port is read, so they are distinct.
    my @socks = map {
        IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                              Proto => 'tcp', Listen => 1)
            or die "cannot bind a loopback port: $@\n";
    } 1 .. $n;
    my @ports = map { $_->sockport } @socks;
    close $_ for @socks;
    return @ports;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    my $data = <$fh>;
    return defined $data ? $data : '';
}

sub _spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "cannot write $path: $!\n";
    print {$fh} $data;
    close $fh or die "cannot write $path: $!\n";
}

sub _tail {
    my ($text, $n) = @_;
    my @lines = split /\n/, $text;
    @lines = @lines[-($n || 30) .. -1] if @lines > ($n || 30);
    return join("\n", @lines) . "\n";
}

# Replace $TEST_NGINX_FOO by $ENV{TEST_NGINX_FOO} (dies on unknown names).
sub _expand_vars {
    my ($text) = @_;
    return '' unless defined $text;
    $text =~ s{\$(TEST_NGINX_[A-Z0-9_]+)}{
        defined $ENV{$1} ? $ENV{$1}
                         : die "\$$1 used in a test but not defined in the environment\n"
    }ge;
    return $text;
}

# fork + exec with stdin from /dev/null and stdout+stderr appended to a file.
sub _spawn {
    my ($cmd, $out_file) = @_;
    my $pid = fork;
    die "fork failed: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDIN,  '<',  '/dev/null';
        open STDOUT, '>>', $out_file;
        open STDERR, '>&', \*STDOUT;
        { no warnings 'exec'; exec { $cmd->[0] } @$cmd; }
        print STDERR "exec $cmd->[0] failed: $!\n";
        POSIX::_exit(127);   # never run the parent's END blocks in the child
    }
    return $pid;
}

# Wait for our child to exit: its wait status, -1 if it is not our child
# (anymore), undef on timeout.
sub _wait_exit {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        return -1 if $r == -1;
        return undef if time >= $deadline;
        sleep 0.02;
    }
}

# Live (non-zombie) child processes of $ppid, from /proc.
sub _children {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = _slurp("/proc/$pid/stat");
        my $rest = substr($stat, rindex($stat, ')') + 1);   # after "(comm)"
        my ($state, $parent) = $rest =~ /^\s*(\S)\s+(\d+)/ or next;
        push @kids, $pid if $parent == $ppid && $state ne 'Z';
    }
    return @kids;
}

# Write all of $data to a non-blocking socket before $deadline.
sub _write_all {
    my ($sock, $data, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    my $off = 0;
    while ($off < length $data) {
        my $left = $deadline - time;
        return (0, 'timeout while sending') if $left <= 0;
        next unless $sel->can_write($left);
        my $n = syswrite($sock, $data, 65536, $off);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINTR};
            return (0, "send failed: $!");
        }
        $off += $n;
    }
    return (1, undef);
}

# Append what is available on a non-blocking socket to $$buf.  Returns the
# byte count (0 at EOF); dies on timeout or error.
sub _read_some {
    my ($sock, $buf, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    while (1) {
        my $left = $deadline - time;
        die "timeout while reading\n" if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($sock, $$buf, 65536, length $$buf);
        return $n if defined $n;
        next if $!{EAGAIN} || $!{EINTR};
        die "read failed: $!\n";
    }
}

sub _connect {
    my ($port, $timeout) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                     Proto => 'tcp', Timeout => $timeout)
        or return;
    $sock->blocking(0);
    return $sock;
}

# --------------------------------------------------------------------------
# Compression helpers for request bodies
# --------------------------------------------------------------------------

sub gzip_bytes {
    my ($data) = @_;
    my $out;
    IO::Compress::Gzip::gzip(\$data => \$out)
        or die "gzip failed: $IO::Compress::Gzip::GzipError\n";
    return $out;
}

# zlib-wrapped deflate (RFC 1950), what "Content-Encoding: deflate" means.
sub deflate_bytes { return Compress::Zlib::compress($_[0]) }

# raw deflate stream (RFC 1951) without zlib header/trailer.
sub raw_deflate_bytes {
    my ($data) = @_;
    my ($d, $st) = Compress::Raw::Zlib::Deflate->new(
        -WindowBits => -Compress::Raw::Zlib::MAX_WBITS(), -AppendOutput => 1);
    die "deflateInit failed: $st\n" unless $d;
    my $out = '';
    $d->deflate($data, $out) == Compress::Raw::Zlib::Z_OK() or die "deflate failed\n";
    $d->flush($out)          == Compress::Raw::Zlib::Z_OK() or die "deflate flush failed\n";
    return $out;
}

# --------------------------------------------------------------------------
# Redis: one redis-server per test file, tiny RESP client
# --------------------------------------------------------------------------

sub _redis_running { return defined $REDIS_PID }

# Send one command on a fresh connection and parse the reply.  Error replies
# are returned as {error => 'ERR ...'}; connection problems die.
sub _redis_call {
    my @args = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $sock = _connect($REDIS_PORT, 2)
        or die "cannot connect to redis at 127.0.0.1:$REDIS_PORT: $@\n";
    my $req = '*' . scalar(@args) . "\r\n";
    for my $arg (@args) {
        my $b = defined $arg ? "$arg" : '';
        utf8::encode($b) if utf8::is_utf8($b);
        $req .= '$' . length($b) . "\r\n$b\r\n";
    }
    my $deadline = time + $REDIS_TIMEOUT;
    my ($ok, $err) = _write_all($sock, $req, $deadline);
    die "redis: $err\n" unless $ok;
    my $buf = '';
    my $reply = _resp_parse($sock, \$buf, $deadline);
    close $sock;
    return $reply;
}

sub _resp_parse {
    my ($sock, $buf, $deadline) = @_;
    my $i;
    while (($i = index($$buf, "\r\n")) < 0) {
        _read_some($sock, $buf, $deadline) or die "redis closed the connection\n";
    }
    my $line = substr($$buf, 0, $i + 2, '');
    my ($type, $rest) = $line =~ /^(.)(.*)\r\n\z/s;
    return $rest              if $type eq '+';
    return { error => $rest } if $type eq '-';
    return 0 + $rest          if $type eq ':';
    if ($type eq '$') {
        return undef if $rest < 0;
        while (length $$buf < $rest + 2) {
            _read_some($sock, $buf, $deadline) or die "redis closed the connection\n";
        }
        return substr(substr($$buf, 0, $rest + 2, ''), 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { _resp_parse($sock, $buf, $deadline) } 1 .. $rest ];
    }
    die "unexpected redis reply: $line\n";
}

# Lazily start redis on first use (unless a test stopped it on purpose).
my $REDIS_STOPPED_BY_TEST;
sub _redis_ensure { redis_start() unless _redis_running() || $REDIS_STOPPED_BY_TEST }

sub redis_cmd_raw {
    _redis_ensure();
    return _redis_call(@_);
}

sub redis_cmd {
    my $reply = redis_cmd_raw(@_);
    die "redis error for '@_': $reply->{error}\n"
        if ref $reply eq 'HASH' && exists $reply->{error};
    return $reply;
}

# redis_start(@options): extra redis-server options (e.g. '--appendonly',
# 'yes') override the defaults, and stay for later starts in this file.
my @REDIS_OPTIONS;
sub redis_start {
    @REDIS_OPTIONS = @_ if @_;
    return 1 if _redis_running();
    undef $REDIS_STOPPED_BY_TEST;
    my $dir = "$SERVROOT/redis";
    $REDIS_PID = _spawn([$REDIS_SERVER, '--port', $REDIS_PORT, '--bind', '127.0.0.1',
                         '--save', '', '--appendonly', 'no', '--daemonize', 'no',
                         '--dir', $dir, '--logfile', "$dir/redis.log", @REDIS_OPTIONS],
                        "$dir/redis.stdout");
    my $deadline = time + $START_TIMEOUT;
    while (1) {
        my $pong = eval { local $REDIS_TIMEOUT = 1; _redis_call('PING') };
        return 1 if defined $pong && $pong eq 'PONG';
        my $exited = defined _wait_exit($REDIS_PID, 0);
        if ($exited || time > $deadline) {
            redis_stop() unless $exited;
            undef $REDIS_PID;
            die "redis-server did not start on port $REDIS_PORT:\n"
              . _tail(_slurp("$dir/redis.stdout") . _slurp("$dir/redis.log"));
        }
        sleep 0.05;
    }
}

sub redis_stop {
    return unless _redis_running();
    my $pid = $REDIS_PID;
    # SHUTDOWN does not reply: the server just closes the connection.
    eval { local $REDIS_TIMEOUT = 2; _redis_call('SHUTDOWN', 'NOSAVE') };
    my $st = _wait_exit($pid, 5);
    for my $sig (qw(TERM KILL)) {
        last if defined $st;
        kill $sig => $pid;
        $st = _wait_exit($pid, 3);
    }
    undef $REDIS_PID;
    $REDIS_STOPPED_BY_TEST = 1;
    return 1;
}

sub redis_restart { redis_stop(); return redis_start() }

# kill -9: whatever Redis had not written (appendonly, appendfsync) is lost.
sub redis_kill {
    return unless _redis_running();
    kill KILL => $REDIS_PID;
    _wait_exit($REDIS_PID, 5);
    undef $REDIS_PID;
    $REDIS_STOPPED_BY_TEST = 1;
    return 1;
}

# Parse "CMD arg 'quoted arg' \"with \\n escapes\"" lines (# comments and
# blank lines skipped) into [[CMD, args...], ...].
sub _command_lines {
    my ($text) = @_;
    my @cmds;
    for my $line (split /\n/, defined $text ? $text : '') {
        next if $line =~ /^\s*(#|$)/;
        my @args;
        pos($line) = 0;
        while (1) {
            $line =~ /\G\s+/gc;
            last if pos($line) >= length $line;
            if    ($line =~ /\G"((?:[^"\\]|\\.)*)"/gc) { push @args, _unescape($1) }
            elsif ($line =~ /\G'([^']*)'/gc)          { push @args, $1 }
            elsif ($line =~ /\G([^\s"'][^\s]*)/gc)    { push @args, $1 }
            else  { die "cannot parse redis command line: $line\n" }
        }
        push @cmds, \@args;
    }
    return @cmds;
}

sub _unescape {
    my ($s) = @_;
    my %map = (n => "\n", r => "\r", t => "\t", 0 => "\0");
    $s =~ s{\\(x[0-9a-fA-F]{2}|.)}{
        length $1 == 3 ? chr(hex substr($1, 1)) : exists $map{$1} ? $map{$1} : $1
    }ge;
    return $s;
}

# Render a reply for redis_check: arrays one element per line, nil as (nil).
sub _format_reply {
    my ($v) = @_;
    return '(nil)' unless defined $v;
    return join "\n", map { _format_reply($_) } @$v if ref $v eq 'ARRAY';
    return "(error) $v->{error}" if ref $v eq 'HASH';
    return $v;
}

# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------

sub _check_module {
    return if $MODULE_CHECKED++;
    Test::More::BAIL_OUT("nginx module $MODULE not found -- build the module first: "
                         . "scripts/test builds it (or set TEST_NGINX_MODULE)")
        if length $MODULE && !-f $MODULE;
    Test::More::BAIL_OUT("nginx binary $NGINX not found (set TEST_NGINX_BINARY)")
        unless -x $NGINX;
    Test::More::BAIL_OUT("TEST_NGINX_USE_VALGRIND is set but valgrind is not installed "
                         . "(scripts/test-valgrind installs it)")
        if $USE_VALGRIND && !grep { -x "$_/valgrind" } File::Spec->path;
}

sub _default_redis { my (%sec) = @_; return length($MODULE) && !$sec{no_default_redis} }

# Render conf/nginx.conf from the sections (main_config, http_config, config,
# no_default_redis).
sub _write_config {
    my (%sec) = @_;
    my $main = _expand_vars($sec{main_config});
    my $http = _expand_vars($sec{http_config});
    my $srv  = _expand_vars($sec{config});
    my $conf = '';
    $conf .= "load_module $MODULE;\n" if length $MODULE;
    $conf .= "daemon off;\n";
    $conf .= "master_process on;\n"  unless $main =~ /^\s*master_process\b/m;
    $conf .= "worker_processes 1;\n" unless $main =~ /^\s*worker_processes\b/m;
    # Load tests ask for less than debug: its volume would be the test.
    $conf .= "error_log logs/error.log " . ($sec{error_log_level} // 'debug') . ";\n";
    $conf .= "pid logs/nginx.pid;\n";
    # As a package runs it: a master as root, workers as an unprivileged
    # user (what they write, the spool above all, must work as that user).
    $conf .= "user $WORKER_USER;\n"
        if $> == 0 && $main !~ /^\s*user\b/m;
    $conf .= "$main\n";
    $conf .= "events { worker_connections 1024; }\n";
    $conf .= "http {\n";
    $conf .= "    access_log logs/access.log;\n";
    $conf .= "    ${_}_temp_path $SERVROOT/${_}_temp;\n"
        for qw(client_body proxy fastcgi uwsgi scgi);
    $conf .= "    default_type text/plain;\n";
    $conf .= "    recording_redis 127.0.0.1:$REDIS_PORT;\n" if _default_redis(%sec);
    $conf .= "$http\n";
    $conf .= "    server {\n";
    $conf .= "        listen 127.0.0.1:$SERVER_PORT;\n";
    $conf .= "        server_name localhost;\n";
    $conf .= "$srv\n";
    $conf .= "    }\n}\n";
    _spew("$SERVROOT/conf/nginx.conf", $conf);
}

sub _nginx_cmd { return ($NGINX, '-p', "$SERVROOT/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log') }

# The command that runs nginx with @args: under valgrind in valgrind mode.
sub _run_cmd {
    my @cmd = @_;
    # AddressSanitizer mode (scripts/test-asan): the module built with ASan
    # needs its runtime loaded first, in nginx only.
    @cmd = ('env', "LD_PRELOAD=$ENV{TEST_NGINX_ASAN_PRELOAD}", @cmd) if $ENV{TEST_NGINX_ASAN_PRELOAD};
    return @cmd unless $USE_VALGRIND;
    $VG_RUN{started} //= _outside_caller();
    return ('valgrind', @VALGRIND_OPTS, "--log-file=$SERVROOT/logs/valgrind.%p.log", @cmd);
}

sub _log_tail { return _tail(_slurp($STDERR_LOG) . _slurp($ERROR_LOG)) }

# Start nginx (stopping a running one first) with the given sections; dies
# with the error log's tail when it does not come up.
sub start_nginx {
    my (%sec) = @_;
    _check_module();
    stop_nginx();
    redis_start() if _default_redis(%sec);
    _write_config(%sec);
    _spew($_, '') for $ERROR_LOG, $STDERR_LOG;   # one log per start
    my $pid = $NGINX_PID = _spawn([_run_cmd(_nginx_cmd())], $STDERR_LOG);
    @VG_RUN{qw(pid what)} = ($pid, 'the nginx master') if $USE_VALGRIND;
    my $deadline = time + $START_TIMEOUT;
    while (1) {
        if (my $sock = _connect($SERVER_PORT, 1)) { close $sock; return 1 }
        if (defined(my $st = _wait_exit($pid, 0))) {
            undef $NGINX_PID;
            die "nginx exited during startup (status $st):\n" . _log_tail();
        }
        if (time > $deadline) {
            stop_nginx();
            die "nginx did not accept connections within ${START_TIMEOUT}s:\n" . _log_tail();
        }
        sleep 0.05;
    }
}

# A second nginx server beside the running one: the same configuration (the
# same module, Redis and shared paths) on a port and prefix of its own, as a
# fleet's other edge server. Returns its port; it is stopped with the others
# at the end (stop_child), or by stop_child($pid) with the pid it returns
# second in list context.
sub start_second_nginx {
    die "start_second_nginx: start nginx first\n" unless $NGINX_PID;
    my ($port) = _free_ports(1);
    my $prefix = "$SERVROOT/second";
    make_path("$prefix/conf", "$prefix/logs");
    chmod 0755, $prefix;
    my $conf = _slurp("$SERVROOT/conf/nginx.conf");
    $conf =~ s/listen 127\.0\.0\.1:$SERVER_PORT;/listen 127.0.0.1:$port;/g;
    _spew("$prefix/conf/nginx.conf", $conf);
    my $pid = _spawn([$NGINX, '-p', "$prefix/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log'],
                     "$prefix/logs/stderr.log");
    track_child($pid);
    my $deadline = time + $START_TIMEOUT;
    until (my $sock = _connect($port, 1)) {
        die "the second nginx did not start:\n" . _tail(_slurp("$prefix/logs/error.log"))
            if time > $deadline || defined _wait_exit($pid, 0);
        sleep 0.05;
    }
    return wantarray ? ($port, $pid) : $port;
}

# Stop nginx: SIGQUIT (graceful), then SIGTERM, then SIGKILL of master and
# workers.  Returns 1 when the graceful stop worked (also when nothing ran).
# In valgrind mode, outside blocks, one more test checks that run's logs.
sub stop_nginx {
    my $ran = $NGINX_PID;
    my $graceful = _stop_nginx();
    _check_valgrind('nginx started at ' . ($VG_RUN{started} // 'unknown place'))
        if $USE_VALGRIND && $ran && !$IN_BLOCK;
    return $graceful;
}

my $LAST_STOP_GRACEFUL = 1;
sub _stop_nginx {
    return 1 unless $NGINX_PID;
    my $pid = $NGINX_PID;
    undef $NGINX_PID;
    kill QUIT => $pid;
    my $st = _wait_exit($pid, $STOP_TIMEOUT);
    $LAST_STOP_GRACEFUL = defined $st;
    unless (defined $st) {
        kill TERM => $pid;
        $st = _wait_exit($pid, 3);
    }
    unless (defined $st) {
        kill KILL => $pid, _children($pid);   # workers would survive the master
        _wait_exit($pid, 3);
    }
    return $LAST_STOP_GRACEFUL;
}

# The running nginx's master pid (our child), undef when none runs.  Not
# read off nginx.pid: nginx accepts connections before it writes that file,
# and under valgrind the gap is long enough for a test to fall into it.
sub nginx_master_pid { $NGINX_PID }

# The running nginx's worker pids, waiting (as long as a start may take)
# until the master has forked at least one: start_nginx returns once the
# listening socket accepts, which can be before the workers exist.
sub nginx_worker_pids {
    die "nginx_worker_pids: nginx is not running\n" unless $NGINX_PID;
    my $deadline = time + $START_TIMEOUT;
    while (1) {
        my @workers = _children($NGINX_PID);
        return sort { $a <=> $b } @workers if @workers;
        die "nginx_worker_pids: no worker within ${START_TIMEOUT}s\n" if time > $deadline;
        sleep 0.05;
    }
}

# SIGHUP the master (after rewriting the config if sections are given) and
# wait until only new workers run.  Returns 1 on success, 0 if nginx rejected
# the new configuration (it keeps the old one; see error_log_text()).
sub reload_nginx {
    my (%sec) = @_;
    die "reload_nginx: nginx is not running\n" unless $NGINX_PID;
    _write_config(%sec) if %sec;
    my @old = _children($NGINX_PID);
    my $offset = -s $ERROR_LOG || 0;
    kill HUP => $NGINX_PID;
    my $deadline = time + $START_TIMEOUT;
    while (time < $deadline) {
        sleep 0.05;
        return 0 if substr(_slurp($ERROR_LOG), $offset) =~ /\[emerg\]/;
        my %old = map { $_ => 1 } @old;
        my @now = _children($NGINX_PID);
        next unless @now && !grep { $old{$_} } @now;
        my $sock = _connect($SERVER_PORT, 1) or next;
        close $sock;
        return 1;
    }
    die "nginx did not reload within ${START_TIMEOUT}s:\n" . _log_tail();
}

sub error_log_text { return _slurp($ERROR_LOG) }

# Run `nginx -t`; returns (wait status, its output).
sub _nginx_test_config {
    my $out = "$SERVROOT/logs/nginx-t.out";
    _spew($out, '');
    my $pid = _spawn([_run_cmd($NGINX, '-t', (_nginx_cmd())[1 .. 6])], $out);
    @VG_RUN{qw(pid what)} = ($pid, 'nginx -t') if $USE_VALGRIND;
    my $st = _wait_exit($pid, $START_TIMEOUT);
    unless (defined $st) {
        kill KILL => $pid;
        _wait_exit($pid, 3);
        $st = -1;
    }
    return ($st, _slurp($out));
}

# `nginx -t` with the given sections (as start_nginx takes them); returns
# its exit code (-1: it hung) and its output.
sub nginx_test {
    my (%sec) = @_;
    _check_module();
    _write_config(%sec);
    my ($st, $out) = _nginx_test_config();
    return ($st == -1 ? -1 : $st >> 8, $out);
}

# --------------------------------------------------------------------------
# Valgrind mode: the check of the logs of one nginx run
# --------------------------------------------------------------------------

# "FILE line N" of the innermost caller outside this file.
sub _outside_caller {
    for (my $i = 0; my @c = caller($i); $i++) {
        return "$c[1] line $c[2]" if $c[1] ne __FILE__;
    }
    return 'unknown place';
}

# What makes a stack frame the module's: its .so (frames without debug
# info), its function names and source files, and hiredis (only the module
# links it).  rapidjson is header-only and only the module uses it.
my $MODULE_FRAME_RE = do {
    my %files;
    my @dirs = ("$REPO/src");   # src/, src/core/, ...
    while (defined(my $dir = shift @dirs)) {
        opendir my $d, $dir or next;
        for my $f (readdir $d) {
            next if $f =~ /^\./;
            if (-d "$dir/$f") { push @dirs, "$dir/$f"; next }
            $files{$f} = 1 if $f =~ /\.(?:c|cc|cpp|cxx|h|hh|hpp)\z/;
        }
    }
    my $so = length $MODULE ? (File::Spec->splitpath($MODULE))[2] : '';
    my @alt = (
        'ngx_http_recording_module\.so',
        ($so ne '' ? quotemeta($so) : ()),
        '\bngx_http_recording_\w',
        '\brecording::',
        '\bRedisClient\b',
        '\b_*redis[A-Z]\w*',
        '\blibhiredis\b',
        '\brapidjson::',
        (%files ? '\((?:' . join('|', map { quotemeta } sort keys %files) . '):\d+\)' : ()),
    );
    my $alt = join '|', @alt;
    qr/$alt/;
};

# Records of valgrind log text (one log, or several processes' interleaved:
# records are kept apart by pid) that are problems from the module:
#   * any memcheck error (invalid read/write/free, mismatched free, use of
#     an uninitialised value, bad syscall argument, overlap, ...) or a
#     definitely lost block, with at least one stack frame of the module
#     (in any of its stacks: access, allocation, free, origin);
#   * "Process terminating with default action of signal", whoever's.
# Records wholly inside nginx or its libraries pass; possibly/indirectly lost
# and still reachable blocks, warnings and summaries are not problems.
# Returns the offending records as text (each "==pid== ..." line, "\n" ended).
sub valgrind_problems {
    my ($text) = @_;
    my (%open, @records);   # pid => lines of the record being read
    for my $line (split /\n/, $text // '') {
        my ($pid, $body) = $line =~ /^==(\d+)==(?: ?(.*))?$/ or next;
        $body //= '';
        if ($body =~ /^\s*$/) {
            push @records, delete $open{$pid} if $open{$pid};
            next;
        }
        push @{ $open{$pid} ||= [] }, $line;
    }
    push @records, grep { $_ } map { $open{$_} } sort keys %open;

    my @problems;
    for my $rec (@records) {
        my @body = map { /^==\d+== ?(.*)$/ ? $1 : $_ } @$rec;
        shift @body while @body && $body[0] =~ /^Thread \d+/;   # "Thread 2:" / "Thread 2 name:"
        next unless @body;
        my $head = $body[0];
        my @frames = grep { /^\s*(?:at|by) 0x[0-9A-Fa-f]+: / } @body;
        my $bad;
        if ($head =~ /^Process terminating with default action of signal/) {
            $bad = 1;
        } elsif ($head =~ /\bare (?:definitely|indirectly|possibly) lost\b|\bstill reachable\b/) {
            $bad = $head =~ /\bare definitely lost\b/ && grep { /$MODULE_FRAME_RE/ } @frames;
        } elsif (@frames && $head !~ /^(?:Warning|Open (?:file descriptor|\w+ socket))\b/i) {
            $bad = grep { /$MODULE_FRAME_RE/ } @frames;
        }
        push @problems, join('', map { "$_\n" } @$rec) if $bad;
    }
    return @problems;
}

# Reads and sets aside the valgrind logs of the nginx run that just ended;
# returns its problems, each prefixed with the log it comes from.
sub _valgrind_collect {
    my @logs = sort glob("$SERVROOT/logs/valgrind.*.log");
    my $run = ++$VG_RUNS;
    my @problems;
    push @problems, "no valgrind log in $SERVROOT/logs: did valgrind run at all?\n"
        if %VG_RUN && !@logs;
    my $keep = "$SERVROOT/logs/valgrind-runs/$run";
    make_path($keep) if @logs;
    for my $log (@logs) {
        my ($base) = $log =~ m{([^/]+)\z};
        my ($pid) = $base =~ /(\d+)/;
        my $who = defined $VG_RUN{pid} && $pid == $VG_RUN{pid} ? $VG_RUN{what}
                : 'a worker or other child of nginx';
        push @problems, map { "in $base ($who):\n$_" } valgrind_problems(_slurp($log));
        rename $log, "$keep/$base";
    }
    %VG_RUN = ();
    return @problems;
}

# One test: the nginx run that just ended left no problem from the module in
# its valgrind logs.
sub _check_valgrind {
    my ($name) = @_;
    my @problems = _valgrind_collect();
    ok(!@problems, "$name - valgrind: no invalid access or definite leak from the module")
        or diag(join "\n", @problems);
}

# --------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------

# http_request(method => 'POST', uri => '/x', headers => [Name => value, ...],
#              body => $bytes, timeout => 10)   or   http_request(raw => $bytes)
# Returns {status, headers => {lc name => value}, raw_headers => [[n, v], ...],
#          body, raw, error}; `error` is set on connect/timeout/parse problems.
sub http_request {
    my (%a) = @_;
    my $timeout = (defined $a{timeout} ? $a{timeout} : 10) * $TIME_FACTOR;
    my $data = $a{raw};
    unless (defined $data) {
        my $method = defined $a{method} ? $a{method} : 'GET';
        my $uri    = defined $a{uri} ? $a{uri} : '/';
        my $body   = $a{body};
        my @h      = @{ $a{headers} || [] };
        my ($lines, %have) = ('');
        while (my ($name, $value) = splice @h, 0, 2) {
            $lines .= "$name: $value\r\n";
            $have{lc $name} = 1;
        }
        $data = "$method $uri " . ($a{protocol} || 'HTTP/1.1') . "\r\n";
        $data .= "Host: localhost\r\n"   unless $have{host};
        $data .= "Connection: close\r\n" unless $have{connection};
        $data .= $lines;
        $data .= 'Content-Length: ' . length($body // '') . "\r\n"
            if !$have{'content-length'} && !$have{'transfer-encoding'}
               && ((defined $body && length $body) || $method =~ /^(?:POST|PUT)$/);
        $data .= "\r\n" . ($body // '');
    }
    utf8::encode($data) if utf8::is_utf8($data);

    local $SIG{PIPE} = 'IGNORE';
    my $res = { status => undef, headers => {}, raw_headers => [], body => undef, raw => '' };
    my $deadline = time + $timeout;
    my $sock = _connect($a{port} || $SERVER_PORT, $timeout) or do {
        $res->{error} = "cannot connect to 127.0.0.1:" . ($a{port} || $SERVER_PORT) . ": $@";
        return $res;
    };
    # A send error is not fatal: nginx may answer (e.g. 413) and close early.
    my (undef, $send_err) = _write_all($sock, $data, $deadline);
    my $raw = '';
    my $ok = eval { 1 while _read_some($sock, \$raw, $deadline); 1 };
    chomp(my $read_err = $ok ? '' : $@);
    undef $read_err unless length $read_err;
    close $sock;
    $res->{raw} = $raw;
    my $head_only = !defined $a{raw} && ($a{method} // '') eq 'HEAD';
    my $parse_err = _parse_response($res, $raw, $head_only);
    $res->{error} = join '; ', grep { defined } $parse_err, $read_err, $send_err
        if defined $parse_err || defined $read_err;
    return $res;
}

# Fill status/headers/body of $res from the raw bytes; returns an error or undef.
sub _parse_response {
    my ($res, $rest, $head_only) = @_;
    while (1) {
        my $end = index($rest, "\r\n\r\n");
        return length $rest ? 'incomplete response header' : 'empty response' if $end < 0;
        my ($status_line, @lines) = split /\r\n/, substr($rest, 0, $end);
        $rest = substr($rest, $end + 4);
        return "bad status line: $status_line" unless $status_line =~ m{^HTTP/\d\.\d\s+(\d{3})};
        $res->{status} = $1;
        $res->{headers} = {};
        $res->{raw_headers} = [];
        for my $line (@lines) {
            my ($name, $value) = $line =~ /^([^:]+):\s*(.*?)\s*$/ or next;
            push @{ $res->{raw_headers} }, [$name, $value];
            my $h = $res->{headers};
            $h->{lc $name} = exists $h->{lc $name} ? "$h->{lc $name}, $value" : $value;
        }
        last unless $res->{status} =~ /^1/ && $res->{status} != 101;   # skip "100 Continue"
    }
    my $h = $res->{headers};
    if ($head_only || $res->{status} =~ /^(?:204|304)$/) {
        $res->{body} = $rest;   # no body, whatever Content-Length says
        return undef;
    }
    if (($h->{'transfer-encoding'} || '') =~ /chunked/i) {
        my $body = '';
        while ($rest =~ s/\A([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $len = hex $1;
            if ($len == 0) { $res->{body} = $body; return undef }
            return 'truncated chunk' if length $rest < $len + 2;
            $body .= substr($rest, 0, $len + 2, '');
            substr($body, -2) = '';
        }
        $res->{body} = $body;
        return 'malformed or unterminated chunked body';
    }
    if (defined $h->{'content-length'}) {
        $res->{body} = substr($rest, 0, $h->{'content-length'});
        return 'short body' if length $rest < $h->{'content-length'};
        return undef;
    }
    $res->{body} = $rest;
    return undef;
}

# --------------------------------------------------------------------------
# Helpers for procedural tests

# Sends the raw requests on as many connections opened at once; returns the
# raw responses (undef where nothing came) within $timeout seconds.
sub concurrent_requests {
    my ($timeout, @requests) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $deadline = time + $timeout * $TIME_FACTOR;
    my (@socks, %out, %in, %done, %idx);
    for my $i (0 .. $#requests) {
        # A request is its bytes, or [port, bytes] for another server.
        my ($port, $data) = ref $requests[$i] ? @{ $requests[$i] } : (server_port(), $requests[$i]);
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => 3) or die "connect: $@";
        $s->blocking(0);
        push @socks, $s;
        $idx{"$s"} = $i;
        $out{$i} = $data;
        $in{$i} = '';
    }
    my $rsel = IO::Select->new(@socks);
    my $wsel = IO::Select->new(@socks);
    while (($rsel->count || $wsel->count) && time < $deadline) {
        my ($r, $w) = IO::Select->select($rsel, $wsel, undef, $deadline - time);
        for my $s (@{ $w || [] }) {
            my $i = $idx{"$s"};
            my $n = syswrite($s, $out{$i});
            if (defined $n) {
                substr($out{$i}, 0, $n) = '';
                $wsel->remove($s) unless length $out{$i};
            } elsif (!$!{EAGAIN} && !$!{EINTR}) {
                $wsel->remove($s);
            }
        }
        for my $s (@{ $r || [] }) {
            my $i = $idx{"$s"};
            my $n = sysread($s, $in{$i}, 65536, length $in{$i});
            next if !defined $n && ($!{EAGAIN} || $!{EINTR});
            next if $n;
            $rsel->remove($s);
            $wsel->remove($s);
        }
    }
    close $_ for @socks;
    return map { length $in{$_} ? $in{$_} : undef } 0 .. $#requests;
}

# The recording endpoint's location as the contract has it, answering with
# the worker's pid in X-Pid; $extra goes inside it.
sub ingest_location {
    my ($extra) = @_;
    $extra //= '';
    return <<"CONF";
        location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            add_header X-Pid \$pid always;
            $extra
        }
CONF
}

# Processes a test started besides nginx and Redis (fake servers, another
# redis-server): stopped by stop_child(), and at the end in any case.
sub track_child { push @CHILDREN, @_ }

sub stop_child {
    my ($pid) = @_;
    return unless $pid;
    @CHILDREN = grep { $_ != $pid } @CHILDREN;
    kill TERM => $pid;
    my $deadline = time + 3;
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) != 0;
        sleep 0.02;
    }
    kill KILL => $pid;
    waitpid($pid, 0);
}

# A server on a loopback port, in a forked child: $serve->($listener, $alive)
# runs there, looping while $alive->() (false once the test is gone, or after
# two minutes, so that nothing outlives a test). Returns ($port, $pid).
sub start_server {
    my ($serve) = @_;
    my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                         Proto => 'tcp', Listen => 128, ReuseAddr => 1)
        or die "fake server: $@";
    my $port = $listener->sockport;
    my $parent = $$;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        $SIG{$_} = sub { POSIX::_exit(0) } for qw(TERM INT HUP);
        $SIG{PIPE} = 'IGNORE';
        my $until = time + 120;
        $serve->($listener, sub { time < $until && getppid() == $parent });
        POSIX::_exit(0);
    }
    close $listener;
    track_child($pid);
    return ($port, $pid);
}

# A server that accepts connections and reads what comes, but never answers.
sub start_silent_server {
    return start_server(sub {
        my ($listener, $alive) = @_;
        my $sel = IO::Select->new($listener);
        while ($alive->()) {
            for my $fh ($sel->can_read(0.2)) {
                if ($fh == $listener) {
                    my $c = $listener->accept or next;
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

# Calls $cond until it is true (1) or $timeout seconds have passed (0).
sub poll_until {
    my ($timeout, $cond) = @_;
    my $deadline = time + $timeout * $TIME_FACTOR;
    while (1) {
        return 1 if $cond->();
        return 0 if time >= $deadline;
        select undef, undef, undef, 0.05;
    }
}

# How many times $re matches in $text.
sub count_matches {
    my ($text, $re) = @_;
    my $n = () = $text =~ /$re/g;
    return $n;
}

# [alert]/[crit]/[emerg] lines or crashed workers in the current error log.
sub crash_lines {
    return grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, error_log_text();
}

# One test: the error log so far shows no alert, crit, emerg or crash.
sub no_crash {
    my ($name) = @_;
    my @bad = crash_lines();
    ok(!@bad, "$name: no alert/crit/emerg/crash in error.log") or diag(join "\n", @bad);
}

# --------------------------------------------------------------------------
# Block runner
# --------------------------------------------------------------------------

# Sections that each produce exactly one test when present.
my @RESPONSE_CHECKS = qw(error_code response_headers response_headers_like
                         response_body response_body_like
                         redis_check_result redis_check_like);
my @LOG_CHECKS = qw(error_log no_error_log);

sub _has { return exists $_[0]->{ $_[1] } }

sub _section_has_filter {
    my ($block, $section, $filter) = @_;
    my $map = $block->_section_map || {};
    return (($map->{$section} || {})->{filters} || '') =~ /(?:^|\s)\Q$filter\E(?:\s|$)/;
}

sub _tests_for_block {
    my ($block) = @_;
    my @checks = _has($block, 'must_die') ? @LOG_CHECKS : (@RESPONSE_CHECKS, @LOG_CHECKS);
    return 1 + ($USE_VALGRIND ? 1 : 0) + grep { _has($block, $_) } @checks;
}

# As Test::Nginx: subs that may fill in sections a block leaves out (a
# shared --- config, say) before the block runs or is counted.
my @block_preprocessors;
sub add_block_preprocessor { push @block_preprocessors, @_ }

sub _prepared_blocks {
    my @blocks = blocks();
    for my $block (@blocks) {
        next if $block->{_preprocessed}++;
        $_->($block) for @block_preprocessors;
    }
    return @blocks;
}

sub planned_tests {
    my $n = 0;
    $n += _tests_for_block($_) for _prepared_blocks();
    return $n;
}

sub run_tests {
    plan('no_plan') unless Test::Builder->new->has_plan;
    for my $block (_prepared_blocks()) {
        my $tb     = Test::Builder->new;
        my $before = $tb->current_test;
        next if eval { local $IN_BLOCK = 1; _run_block($block); 1 };
        # Harness or setup failure: fail the block's remaining tests so the
        # plan still adds up, and keep going with the next block.
        my $err = $@;
        eval { _stop_nginx() };
        if ($USE_VALGRIND && %VG_RUN) {
            my @problems = eval { _valgrind_collect() };
            $err .= "valgrind found problems from the module:\n" . join('', @problems)
                if @problems;
        }
        my $left = _tests_for_block($block) - ($tb->current_test - $before);
        fail($block->name . ' - block died');
        diag($err);
        fail($block->name . ' - (not run)') for 2 .. $left;
    }
}

sub _run_block {
    my ($block) = @_;
    my $name = $block->name;
    my %sec = map { _has($block, $_) ? ($_ => scalar $block->$_) : () }
              qw(main_config http_config config);
    $sec{no_default_redis} = 1 if _has($block, 'no_default_redis');

    if (_has($block, 'must_die')) {
        _check_module();
        _write_config(%sec);
        my ($status, $output) = _nginx_test_config();
        ok($status != 0, "$name - nginx -t rejects the configuration")
            or diag("nginx -t output:\n$output");
        _check_logs($block, $output);
        _check_valgrind($name) if $USE_VALGRIND;
        return;
    }

    # Redis: fresh database for every block that (may) talk to it.
    redis_start() if _default_redis(%sec) || _has($block, 'redis_setup')
                     || _has($block, 'redis_check');
    _redis_call('FLUSHALL') if _redis_running();
    redis_cmd(@$_) for _command_lines(scalar $block->redis_setup);

    start_nginx(%sec);

    my $res;
    my %opts = (timeout => scalar $block->timeout);
    if (_has($block, 'raw_request')) {
        $res = http_request(%opts, raw => scalar $block->raw_request);
    } elsif (_has($block, 'request')) {
        my $req = $block->request;
        $req =~ s/\n\z// unless _section_has_filter($block, 'request', 'eval');
        my ($line, $body) = split /\n/, $req, 2;
        my ($method, $uri, $protocol) = split ' ', $line // '';
        die "--- request must start with 'METHOD URI'\n" unless defined $uri;
        my @headers;
        for my $h (split /\n/, _expand_vars(scalar $block->more_headers)) {
            next unless $h =~ /\S/;
            $h =~ /^\s*([^:\s]+)\s*:\s*(.*?)\s*$/ or die "bad more_headers line: $h\n";
            push @headers, $1, $2;
        }
        $res = http_request(%opts, method => $method, uri => $uri, protocol => $protocol,
                            headers => \@headers, body => $body);
    }

    my $redis_out;
    $redis_out = join "\n", map { _format_reply(redis_cmd_raw(@$_)) }
                            _command_lines(scalar $block->redis_check)
        if _has($block, 'redis_check');

    my $graceful = _stop_nginx();
    _check_response($block, $res);
    _check_redis($block, $redis_out);
    _check_logs($block, error_log_text(), $graceful);
    _check_valgrind($name) if $USE_VALGRIND;
}

# Compare text exactly; show a diff for multi-line values.
sub _is_text {
    my ($got, $expected, $name) = @_;
    return pass($name) if defined $got && $got eq $expected;
    fail($name);
    if (!defined $got) {
        diag("got no value; expected:\n$expected");
    } elsif ("$got$expected" =~ /\n./) {
        diag(Text::Diff::diff(\$expected, \$got, { STYLE => 'Unified' }));
    } else {
        diag("     got: '$got'\nexpected: '$expected'");
    }
}

sub _pattern {
    my ($block, $section) = @_;
    my $pat = $block->$section;
    return ref $pat eq 'Regexp' ? $pat : do { $pat =~ s/\n\z//; qr/$pat/s };
}

sub _check_response {
    my ($block, $res) = @_;
    my $name = $block->name;
    my @checks = grep { _has($block, $_) } @RESPONSE_CHECKS;
    return unless grep { !/^redis_/ } @checks;
    if (!$res) {
        fail("$name - $_ (block has no request)") for grep { !/^redis_/ } @checks;
        return;
    }
    diag("$name: response problem: $res->{error}") if defined $res->{error};

    if (_has($block, 'error_code')) {
        (my $code = $block->error_code) =~ s/^\s+|\s+$//g;
        is($res->{status}, $code, "$name - status code");
    }
    for my $section (qw(response_headers response_headers_like)) {
        next unless _has($block, $section);
        my @problems;
        for my $line (grep { /\S/ } split /\n/, $block->$section) {
            if ($line =~ /^\s*!\s*(\S+?)\s*$/) {
                my $got = $res->{headers}{lc $1};
                push @problems, "header $1 should be absent but is '$got'" if defined $got;
                next;
            }
            my ($hname, $want) = $line =~ /^\s*([^:\s]+)\s*:\s?(.*?)\s*$/
                or die "bad $section line: $line\n";
            my $got = $res->{headers}{lc $hname};
            if (!defined $got) {
                push @problems, "header $hname is missing";
            } elsif ($section eq 'response_headers' ? $got ne $want : $got !~ /$want/s) {
                push @problems, "header $hname: got '$got', expected "
                    . ($section eq 'response_headers' ? "'$want'" : "to match /$want/");
            }
        }
        ok(!@problems, "$name - $section") or diag(join "\n", @problems);
    }
    _is_text($res->{body}, scalar $block->response_body, "$name - response_body")
        if _has($block, 'response_body');
    like($res->{body} // '', _pattern($block, 'response_body_like'), "$name - response_body_like")
        if _has($block, 'response_body_like');
}

sub _check_redis {
    my ($block, $out) = @_;
    my $name = $block->name;
    if (_has($block, 'redis_check_result')) {
        (my $expected = $block->redis_check_result) =~ s/\n\z//;
        _is_text($out, $expected, "$name - redis_check_result");
    }
    like($out // '', _pattern($block, 'redis_check_like'), "$name - redis_check_like")
        if _has($block, 'redis_check_like');
}

# error_log/no_error_log patterns: lines of text, or with `eval` a string,
# qr// or an arrayref of those.
sub _log_patterns {
    my ($block, $section) = @_;
    return () unless _has($block, $section);
    return grep { defined && (ref || length) } map { ref eq 'ARRAY' ? @$_ : $_ } $block->$section
        if _section_has_filter($block, $section, 'eval');
    return grep { length } split /\n/, scalar $block->$section;
}

sub _log_has {
    my ($log, $pat) = @_;
    return ref $pat eq 'Regexp' ? $log =~ $pat : index($log, $pat) >= 0;
}

# Lines that mean something went badly wrong in nginx.
sub _crash_lines {
    my ($log) = @_;
    return grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, $log;
}

sub _check_logs {
    my ($block, $log, $graceful) = @_;
    my $name = $block->name;
    my @want = _log_patterns($block, 'error_log');
    if (_has($block, 'error_log')) {
        my @missing = grep { !_log_has($log, $_) } @want;
        ok(!@missing, "$name - error_log")
            or diag("not found in the error log: " . join(', ', map { "'$_'" } @missing)
                    . "\nerror log tail (without [debug] lines):\n"
                    . _tail(join("\n", grep { !/\[debug\]/ } split /\n/, $log), 15));
    }
    if (_has($block, 'no_error_log')) {
        my @found = grep { _log_has($log, $_) } _log_patterns($block, 'no_error_log');
        ok(!@found, "$name - no_error_log") or diag(join "\n", map {
            my $p = $_;
            "unexpected '$p' in error log: " . ((grep { _log_has($_, $p) } split /\n/, $log)[0] // '');
        } @found);
    }
    return if _has($block, 'must_die');
    # Default check: no alert/crit/emerg or crashed worker, except lines the
    # block explicitly expects via error_log; and the graceful stop worked.
    my @bad = grep { my $l = $_; !grep { _log_has($l, $_) } @want } _crash_lines($log);
    push @bad, "nginx did not exit within ${STOP_TIMEOUT}s of SIGQUIT (graceful shutdown hangs)"
        unless $graceful;
    ok(!@bad, "$name - no alert/crit/emerg/crash in error.log") or diag(join "\n", @bad);
}

# --------------------------------------------------------------------------
# Filter class: `eval` sections run in package main (so functions exported
# to the test file work) and die on errors instead of yielding $@ as value.
# --------------------------------------------------------------------------

package Test::Nginx::Recording::Filter;
our @ISA = ('Test::Base::Filter');

sub eval {
    my ($self, $code) = @_;
    my $where = $self->current_block ? $self->current_block->name : 'block';
    my @ret = CORE::eval("package main; no strict 'vars';\n#line 1 \"eval section of $where\"\n$code");
    die "eval section of '$where' failed: $@" if $@;
    return @ret;
}

1;
