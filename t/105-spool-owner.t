# The spool directory, run the way a package runs nginx: the master as root,
# the workers as an unprivileged user (the harness's "nobody"). nginx makes
# the directory and gives it to the worker user, as it does for
# client_body_temp_path, so a spool that does not exist yet, or is root's
# with mode 755, takes batches; files a run with other workers left are
# handed over too. A path that cannot be made usable fails `nginx -t` and
# the start, naming the directive and the path. Needs root (to be the
# master that runs workers as another user).
use strict;
use warnings;

use lib 't/lib';
use Test::Nginx::Recording;
use File::Path qw(make_path remove_tree);

plan(skip_all => 'the master must be root to run workers as another user') unless $> == 0;

my $WORKER_UID = getpwnam('nobody');
my $ROOT = servroot();

sub enable_site { redis_cmd('HSET', 'recording:site:1', 'enabled', 1, 'sample_rate', 1) }

sub spool_http { return "recording_spool $_[0];\n" . ($_[1] // '') }

sub start_with_spool {
    my ($dir) = @_;
    start_nginx(error_log_level => 'info', http_config => spool_http($dir),
                config => ingest_location('recording_redis_connect_timeout 300ms; recording_redis_read_timeout 1s;'));
}

sub post_batch {
    my ($session, $seq) = @_;
    return http_request(method => 'POST', uri => '/v1/sites/1/recordings',
                        body => qq({"session_id":"$session","seq":$seq,"events":[{"type":3,"timestamp":1}]}),
                        timeout => 15);
}

sub owner { my @st = stat $_[0]; return @st ? $st[4] : -1 }

sub queued_sessions {
    my @sessions;
    for my $key (sort @{ redis_cmd('KEYS', 'recording:queue:*') }) {
        push @sessions, map { /"session_id":"([^"]+)","seq":(\d+)/ ? "$1/$2" : '?' }
            @{ redis_cmd('LRANGE', $key, 0, -1) };
    }
    return join ' ', sort @sessions;
}

# Redis down (the site cached by a first batch), batches go to the spool:
# each is answered 202 only once its record is in the spool file, so a 202
# here means the worker user wrote it. Redis back: all of them replayed.
sub spool_takes_batches {
    my ($t, $dir, $session) = @_;
    redis_cmd('FLUSHALL');
    enable_site();
    is(post_batch("$session-warm", 0)->{status}, 202, "$t: 202 while Redis is up (site cached)");
    redis_stop();
    my @status = map { post_batch($session, $_)->{status} // 'none' } 0 .. 2;
    is("@status", '202 202 202', "$t: Redis down: every batch 202, from the spool");
    ok(-e "$dir/recording.spool", "$t: ... which holds them");
    is(owner("$dir/recording.spool"), $WORKER_UID, "$t: ... in a file of the worker user's");
    unlike(error_log_text(), qr/recording: spool: .*failed/, "$t: no spool write failed");
    redis_start();
    ok(poll_until(20, sub { !-e "$dir/recording.spool" }), "$t: Redis back: the spool replayed");
    # (Redis restarts empty: the warm-up batch went with it.)
    is(queued_sessions(), "$session/0 $session/1 $session/2", "$t: ... every spooled batch in Redis");
}

# ---------------------------------------------------------------------------
# 1. A spool directory that does not exist: nginx makes it, the worker's.
# ---------------------------------------------------------------------------
{
    my $t = 'missing directory';
    my $dir = "$ROOT/spool-new";
    remove_tree($dir);
    start_with_spool($dir);
    ok(-d $dir, "$t: nginx made it");
    is(owner($dir), $WORKER_UID, "$t: ... and gave it to the worker user");
    spool_takes_batches($t, $dir, 'made');
    ok(stop_nginx(), "$t: nginx stops");
}

# ---------------------------------------------------------------------------
# 2. root's directory, mode 755 (what `mkdir` as root makes): handed over.
# ---------------------------------------------------------------------------
{
    my $t = "root's directory";
    my $dir = "$ROOT/spool-root";
    remove_tree($dir);
    make_path($dir);
    chown 0, 0, $dir;
    chmod 0755, $dir;
    start_with_spool($dir);
    is(owner($dir), $WORKER_UID, "$t: given to the worker user at start");
    spool_takes_batches($t, $dir, 'root-dir');

    # 3. Records left in files root owns (written by workers that ran as
    #    root, 0600 as workers make them): handed over at the next start,
    #    replayed, and the spool goes on taking batches.
    $t = "root's spool files";
    redis_cmd('FLUSHALL');
    enable_site();
    post_batch('left-warm', 0);
    redis_stop();
    is(post_batch('left', 0)->{status}, 202, "$t: a batch spooled");
    ok(stop_nginx(), "$t: nginx stops with it in the spool");
    ok(-e "$dir/recording.spool", "$t: the record waits in the spool");
    for my $file ("$dir/recording.spool", "$dir/replay.lock") {
        next unless -e $file;
        chown 0, 0, $file;
        chmod 0600, $file;
    }
    start_with_spool($dir);
    is(owner("$dir/recording.spool"), $WORKER_UID, "$t: the spool file given to the worker user");
    unlike(error_log_text(), qr/\[(?:emerg|alert)\]/, "$t: nginx started without complaint");
    redis_start();
    ok(poll_until(20, sub { !-e "$dir/recording.spool" }), "$t: Redis back: the left record replayed");
    like(queued_sessions(), qr{\bleft/0\b}, "$t: ... into Redis");
    spool_takes_batches($t, $dir, 'after-left');
    ok(stop_nginx(), "$t: nginx stops");
}

# ---------------------------------------------------------------------------
# 4. Paths that cannot be made usable: `nginx -t` fails and says why,
#    naming the directive and the path; so does a start.
# ---------------------------------------------------------------------------
sub refused {
    my ($t, $dir, $why, $extra) = @_;
    my ($code, $out) = nginx_test(http_config => spool_http($dir, $extra), config => ingest_location());
    isnt($code, 0, "$t: nginx -t fails");
    like($out, $why, "$t: ... saying why") or diag($out);
    # The start, run here to its end: nginx listens before its modules'
    # init_module runs, so "accepts connections" cannot tell a refusal.
    # (nginx_test wrote the configuration; timeout: a start that worked.)
    my $nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    my $started = `timeout 60 $nginx -p $ROOT/ -c conf/nginx.conf -e logs/error.log 2>&1`;
    is($? >> 8, 1, "$t: nginx does not start");
    like($started, $why, "$t: ... saying why");
}

{
    refused('missing parent', "$ROOT/no-such-parent/spool",
            qr{\[emerg\].*"recording_spool" "\Q$ROOT\E/no-such-parent/spool" cannot be created: its parent "\Q$ROOT\E/no-such-parent" is not a directory.*No such file or directory});

    my $file = "$ROOT/spool-is-a-file";
    open my $fh, '>', $file or die "$file: $!";
    close $fh;
    refused('a file', $file, qr{\[emerg\].*"recording_spool" "\Q$file\E" is not a directory});

    # Made by the master (root) but out of the workers' reach: a parent
    # that only root may enter.
    my $private = "$ROOT/private";
    remove_tree($private);
    make_path($private);
    chmod 0700, $private;
    refused('parent only root enters', "$private/spool",
            qr{\[emerg\].*"recording_spool" "\Q$private\E/spool": the worker user "nobody" cannot create files in it.*Permission denied});

    # The spool sharing a directory with nginx's temporary files.
    refused('shared with client_body_temp_path', "$ROOT/client_body_temp",
            qr{\[emerg\].*the same path name "\Q$ROOT\E/client_body_temp" used in});
}

# ---------------------------------------------------------------------------
# 5. A reload cannot be refused from init_module: the same failure is an
#    alert there, and nginx goes on answering.
# ---------------------------------------------------------------------------
{
    my $t = 'reload';
    my $parent = "$ROOT/reload-parent";
    remove_tree($parent);
    make_path($parent);
    chmod 0755, $parent;
    start_with_spool("$parent/spool");
    chmod 0700, $parent;
    ok(reload_nginx(), "$t: nginx reloads");
    like(error_log_text(), qr{\[alert\].*"recording_spool" "\Q$parent\E/spool": the worker user "nobody" cannot create files in it},
         "$t: the spool the workers cannot use is an alert");
    enable_site();
    is(post_batch('after-reload', 0)->{status}, 202, "$t: nginx still answers");
    chmod 0755, $parent;
    ok(stop_nginx(), "$t: nginx stops");
}

SKIP: {
    my $ro = "$ROOT/read-only";
    make_path($ro);
    skip 'cannot mount a read-only tmpfs here', 4
        unless system('mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', $ro) == 0;
    refused('read-only file system', "$ro/spool",
            qr{\[emerg\].*"recording_spool" "\Q$ro\E/spool" is on a read-only file system});
    system('umount', $ro);
}

Test::More::done_testing();
