# recording_redis's login: password=, user= (a Redis 6 ACL user) and db=,
# against a real redis-server started with --requirepass. Batches land where
# the login says, site settings are read from the selected database, and a
# refused login answers 503 with one "login refused" line, not one per batch.
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use IO::Socket::INET ();
use IO::Select ();
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $PASSWORD = 'secret';

# ---------------------------------------------------------------------------
# A password-protected redis-server of the test's own (the harness's Redis
# has no password), and a client that logs in before each command.
# ---------------------------------------------------------------------------

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1)
        or die "bind: $@";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# One reply of RESP from $sock (blocking): a string, a number, undef (nil),
# an array ref, or {error => '...'}.
sub read_reply {
    my ($sock) = @_;
    my $line = <$sock>;
    die "redis closed the connection\n" unless defined $line;
    $line =~ s/\r\n\z// or die "bad redis line: $line\n";
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest              if $type eq '+';
    return { error => $rest } if $type eq '-';
    return 0 + $rest          if $type eq ':';
    if ($type eq '$') {
        return undef if $rest < 0;
        my $data = '';
        while (length $data < $rest + 2) {
            read($sock, $data, $rest + 2 - length $data, length $data) or die "redis closed the connection\n";
        }
        return substr($data, 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { read_reply($sock) } 1 .. $rest ];
    }
    die "unexpected redis reply: $line\n";
}

sub resp { my @a = @_; return '*' . @a . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @a) }

# Sends AUTH (as %$login says: user, password; by default the password
# above), SELECT (db) and then the command on a fresh connection; dies on an
# error reply to the login, returns the command's reply.
sub pw_cmd {
    my ($port, $login, @cmd) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 3)
        or die "cannot connect to redis at 127.0.0.1:$port: $@\n";
    my @first;
    push @first, ['AUTH', defined $login->{user} ? ($login->{user}) : (), $login->{password} // $PASSWORD]
        unless $login->{no_auth};
    push @first, ['SELECT', $login->{db}] if defined $login->{db};
    print {$sock} map { resp(@$_) } @first, \@cmd;
    for my $c (@first) {
        my $r = read_reply($sock);
        die "redis: @$c[0]: $r->{error}\n" if ref $r eq 'HASH';
    }
    my $reply = read_reply($sock);
    close $sock;
    return $reply;
}

my $DIR = servroot() . '/pw-redis';
mkdir $DIR;

# Starts redis-server on a free port with --requirepass: (port, pid).
sub start_pw_redis {
    my $port = free_port();
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$DIR/redis.stdout";
        open STDERR, '>&', \*STDOUT;
        {
            no warnings 'exec';
            exec { $ENV{TEST_NGINX_REDIS_SERVER} || 'redis-server' }
                'redis-server', '--port', $port, '--bind', '127.0.0.1', '--requirepass', $PASSWORD,
                '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', $DIR,
                '--logfile', "$DIR/redis-$port.log";
        }
        POSIX::_exit(127);
    }
    track_child($pid);   # stopped at the end in any case
    my $deadline = time + 10;
    while (1) {
        my $pong = eval { pw_cmd($port, {}, 'PING') };
        return ($port, $pid) if defined $pong && $pong eq 'PONG';
        die "redis-server --requirepass did not start on port $port\n" if time > $deadline;
        sleep 0.05;
    }
}

my $SEQ = 0;
sub batch { my ($session) = @_; return qq({"session_id":"$session","seq":) . $SEQ++ . qq(,"events":[{"type":3,"timestamp":1}]}) }

# The sessions in a queue list of database $db.
sub sessions_in {
    my ($port, $db, $key) = @_;
    my $list = pw_cmd($port, { db => $db }, 'LRANGE', $key // 'recording:queue:0', 0, -1);
    return join ' ', map { /"session_id":"([^"]+)"/ ? $1 : '?' } @$list;
}

# ---------------------------------------------------------------------------
# One nginx, one location per way of logging in to the same server.
# ---------------------------------------------------------------------------

my ($PORT, $REDIS_PID) = start_pw_redis();
my $NAME = "127.0.0.1:$PORT";

# Sites: 1 in database 0; 3 in database 3 only.
pw_cmd($PORT, {}, 'HSET', 'recording:site:1', 'enabled', '1', 'sample_rate', '1');
pw_cmd($PORT, { db => 3 }, 'HSET', 'recording:site:3', 'enabled', '1', 'sample_rate', '1');
# An ACL user that may do what the module does, on its keys only.
is(pw_cmd($PORT, {}, 'ACL', 'SETUSER', 'writer', 'on', '>pw', '~recording:*', '+rpush', '+hmget'), 'OK',
   'ACL user "writer" (+rpush +hmget on recording:*)');

# A server that never answers (not even AUTH), and a port nobody listens on.
my ($SILENT_PORT, $SILENT_PID) = start_silent_server();
my $CLOSED_PORT = free_port();

my %LOGINS = (
    good        => "password=$PASSWORD",
    wrong       => 'password=wrong',
    acl         => 'user=writer password=pw',
    acl_wrong   => 'user=writer password=nope',
    none        => '',
    db3         => "password=$PASSWORD db=3",
    db99        => "password=$PASSWORD db=99",
    acl_db3     => 'user=writer password=pw db=3',   # writer may not SELECT
);
my $config = "        location = /status { recording_status; }\n";
for my $name (sort keys %LOGINS) {
    $config .= <<"CONF";
        location ~ "^/$name/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis $NAME $LOGINS{$name};
        }
CONF
}
$config .= <<"CONF";
        location ~ "^/silent/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis 127.0.0.1:$SILENT_PORT password=x db=1;
            recording_redis_read_timeout 300ms;
        }
        location ~ "^/closed/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_redis 127.0.0.1:$CLOSED_PORT password=x db=1;
        }
CONF
start_nginx(no_default_redis => 1, config => $config);

sub post {
    my ($name, $site, $session) = @_;
    my $res = http_request(method => 'POST', uri => "/$name/sites/$site/recordings", body => batch($session),
                           timeout => 5);
    return ($res->{status} // 'none') . ' ' . ($res->{body} // '');
}

sub status {
    my $res = http_request(method => 'GET', uri => '/status', timeout => 5);
    return JSON::PP->new->decode($res->{body} // '{}');
}

my $QUEUED = '202 {"status":"queued"}';
my $UNAVAILABLE = '503 {"error":"queue_unavailable"}';

# Lines about this server in the error log from $from on.
sub redis_lines {
    my ($from) = @_;
    return grep { /recording: redis \Q$NAME\E: / } split /\n/, substr(error_log_text(), $from);
}

# --- password= -------------------------------------------------------------
{
    my $t = 'password=';
    is(post('good', 1, 'good-1'), $QUEUED, "$t: the right password: 202");
    is(post('good', 1, 'good-2'), $QUEUED, "$t: again: 202");
    is(sessions_in($PORT, 0), 'good-1 good-2', "$t: both landed in database 0");
    is(scalar(redis_lines(0)), 0, "$t: nothing logged about the server") or diag(join "\n", redis_lines(0));
}

{
    my $t = 'wrong password';
    my $from = length error_log_text();
    my @answers = map { post('wrong', 1, "wrong-$_") } 1 .. 3;
    is("@answers", join(' ', ($UNAVAILABLE) x 3), "$t: 503 for each batch");
    my @lines = redis_lines($from);
    my @refused = grep { /login refused/ } @lines;
    is(scalar @refused, 1, "$t: one 'login refused' line for three batches") or diag(join "\n", @lines);
    like($refused[0] // '', qr/ \[error\] .*recording: redis \Q$NAME\E: login refused: WRONGPASS/,
         "$t: ... at [error], with Redis's answer");
    is(scalar(grep { /\[error\]/ } @lines), 1, "$t: and no other [error] line") or diag(join "\n", @lines);
    unlike(error_log_text(), qr/\bwrong\b.*\bpassword=|password=wrong/, "$t: the password is not logged");
    is(sessions_in($PORT, 0), 'good-1 good-2', "$t: nothing landed");
}

{
    my $t = 'no password';
    my $from = length error_log_text();
    is(post('none', 1, 'none-1'), $UNAVAILABLE, "$t: a protected server without password=: 503");
    like(join("\n", redis_lines($from)), qr/\[error\] .*error reply: NOAUTH/, "$t: 'error reply: NOAUTH' logged");
}

# --- user= -----------------------------------------------------------------
{
    my $t = 'user=';
    is(post('acl', 1, 'acl-1'), $QUEUED, "$t: user=writer password=pw: 202");
    is(sessions_in($PORT, 0), 'good-1 good-2 acl-1', "$t: landed in database 0");
    my $from = length error_log_text();
    is(post('acl_wrong', 1, 'acl-wrong-1'), $UNAVAILABLE, "$t: the user's wrong password: 503");
    like(join("\n", redis_lines($from)), qr/\[error\] .*login refused: WRONGPASS/, "$t: ... 'login refused'");
}

# --- db= -------------------------------------------------------------------
{
    my $t = 'db=3';
    # Site 3 exists in database 3 only: 202 means it was read from there.
    is(post('db3', 3, 'db3-1'), $QUEUED, "$t: site settings read from database 3: 202");
    is(post('db3', 3, 'db3-2'), $QUEUED, "$t: again (cached): 202");
    is(sessions_in($PORT, 3), 'db3-1 db3-2', "$t: both landed in database 3");
    is(sessions_in($PORT, 0), 'good-1 good-2 acl-1', "$t: none in database 0");
}

{
    my $t = 'db=99';
    # Redis has 16 databases: SELECT 99 is refused. Nothing may go to
    # database 0 instead.
    my $from = length error_log_text();
    my @answers = map { post('db99', 1, "db99-$_") } 1 .. 2;
    is("@answers", "$UNAVAILABLE $UNAVAILABLE", "$t: SELECT refused: 503 for each batch");
    like(join("\n", redis_lines($from)), qr/\[error\] .*login refused: ERR DB index is out of range/,
         "$t: 'login refused' with Redis's answer");
    is(scalar(grep { /login refused/ } redis_lines($from)), 1, "$t: ... once") or diag(join "\n", redis_lines($from));
    is(sessions_in($PORT, 0), 'good-1 good-2 acl-1', "$t: nothing landed in database 0");
    unlike(join("\n", redis_lines($from)), qr/answering again/, "$t: no 'answering again'");
    my $reconnects = status()->{redis}{reconnects};
    is(post('db99', 1, 'db99-3'), $UNAVAILABLE, "$t: within a second: 503");
    is(status()->{redis}{reconnects}, $reconnects, "$t: ... without a new connection");
    is(scalar(grep { /login refused/ } redis_lines($from)), 1, "$t: still one 'login refused' line");
}

{
    my $t = 'user without SELECT';
    # writer may RPUSH and HMGET recording:* but not SELECT: its batches
    # must not land in database 0 either.
    my $from = length error_log_text();
    pw_cmd($PORT, {}, 'HSET', 'recording:site:5', 'enabled', '1', 'sample_rate', '1');
    my @answers = map { post('acl_db3', 5, "acl-db3-$_") } 1 .. 2;
    is("@answers", "$UNAVAILABLE $UNAVAILABLE", "$t: SELECT refused: 503 for each batch");
    like(join("\n", redis_lines($from)), qr/\[error\] .*login refused: NOPERM/, "$t: 'login refused: NOPERM'");
    is(sessions_in($PORT, 0), 'good-1 good-2 acl-1', "$t: nothing landed in database 0");
    is(sessions_in($PORT, 3), 'db3-1 db3-2', "$t: nor in database 3");
}

{
    my $t = 'site cache per database';
    # The site cache's key is the server's id (addresses, db=, user=) and
    # the site: a location on database 0 never uses what one on database 3
    # read.
    is(post('good', 3, 'good-site3'), '404 {"error":"unknown_site"}',
       "$t: site 3 through database 0, which lacks it: 404, whatever database 3 said");
    is(post('db3', 1, 'db3-site1'), '404 {"error":"unknown_site"}',
       "$t: site 1 through database 3, which lacks it: 404, whatever database 0 said");
}

{
    my $t = 'login accepted again';
    # The default user takes "wrong" too now: the next attempt (a second
    # after the refusal at the latest) logs in, and says so.
    my $from = length error_log_text();
    pw_cmd($PORT, {}, 'ACL', 'SETUSER', 'default', '>wrong');
    my $answer;
    ok(poll_until(3, sub { ($answer = post('wrong', 1, 'wrong-back')) eq $QUEUED }), "$t: 202 ($answer)");
    my @lines = redis_lines($from);
    is(scalar(grep { /answering again/ } @lines), 1, "$t: 'answering again' logged") or diag(join "\n", @lines);
    is(scalar(grep { /login refused/ } @lines), 0, "$t: no 'login refused' meanwhile") or diag(join "\n", @lines);
    like(sessions_in($PORT, 0), qr/ wrong-back$/, "$t: landed in database 0");
}

# --- no answer to the login ------------------------------------------------
{
    my $t = 'login unanswered';
    my $from = length error_log_text();
    is(post('silent', 1, 'silent-1'), $UNAVAILABLE, "$t: a server that never answers AUTH: 503");
    my @lines = grep { /recording: redis 127\.0\.0\.1:$SILENT_PORT: / } split /\n/, substr(error_log_text(), $from);
    like("@lines", qr/no reply in time/, "$t: 'no reply in time'");
    is(post('closed', 1, 'closed-1'), $UNAVAILABLE, "$t: a login to a closed port: 503");
    is(post('closed', 1, 'closed-2'), $UNAVAILABLE, "$t: again: 503");
    no_crash($t);
}

# --- the figures and the end -------------------------------------------------
{
    my $t = 'status';
    my $res = http_request(method => 'GET', uri => '/status', timeout => 5);
    like($res->{body} // '', qr/"\Q$NAME\E":\{"connections":\d+\}/, "$t: the server by its address only");
    unlike($res->{body} // '', qr/password|secret|writer/, "$t: no login in the figures");
    no_crash($t);
    ok(stop_nginx(), "$t: nginx stops gracefully");
}

stop_child($REDIS_PID);
stop_child($SILENT_PID);
Test::More::done_testing();
