# A snapshot after another reuses the worker's memory (issue 13): large
# blocks (the decoded document, its RPUSH) come from a heap that keeps them
# (core's memory_policy), not from fresh mappings whose every page faults.
# Counted, not timed: the worker's minor page faults per snapshot, read from
# /proc/PID/stat.
use lib 't/lib';
use Test::Nginx::Recording;

Test::More::plan(skip_all => 'page faults are not the allocator\'s under valgrind') if use_valgrind();

start_nginx(http_config => "    client_body_buffer_size 1m;\n    client_max_body_size 4m;\n", config => <<'CONF');
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
    }
CONF
redis_cmd(qw(HSET recording:site:1 enabled 1));

# A snapshot-like batch: 720 KB of JSON in many small nodes, as rrweb's.
my $nodes = join ',', map { qq({"type":2,"tagName":"div","attributes":{"class":"card c$_"},"childNodes":[{"type":3,"textContent":"product $_ in stock"}],"id":$_}) } 1 .. 6000;
my $doc = qq({"session_id":"faults","seq":0,"events":[{"type":2,"timestamp":1700000000000,"data":{"node":{"type":0,"childNodes":[$nodes]}}}]});
my $body = gzip_bytes($doc);
my $pages = int(length($doc) / 4096);

sub worker_pid { return (nginx_worker_pids())[0] }

sub minor_faults {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return undef;
    my $stat = <$fh>;
    $stat =~ s/^.*\)\s+//s;          # past "pid (comm) "
    return (split ' ', $stat)[7];    # field 10, minflt
}

sub post_snapshot {
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => $body,
                           headers => ['Content-Type' => 'application/json', 'Content-Encoding' => 'gzip']);
    redis_cmd('DEL', 'recording:queue:0');
    return $res->{status} // 0;
}

my $worker = worker_pid();
ok($worker, "the worker ($worker)");
my @warm = map { post_snapshot() } 1 .. 5;   # the heap grows to what a snapshot needs
is_deeply(\@warm, [(202) x 5], 'five snapshots to warm up: 202');
my $before = minor_faults($worker);
my @statuses = map { post_snapshot() } 1 .. 30;
my $faults = minor_faults($worker) - $before;
is_deeply(\@statuses, [(202) x 30], '30 snapshots: 202');
Test::More::note(sprintf "%d page faults in 30 snapshots of %d KB (%.1f each; %d pages in a document)",
     $faults, length($doc) / 1024, $faults / 30, $pages);
cmp_ok($faults / 30, '<', $pages / 10,
       "fewer than a tenth of a document's $pages pages fault per snapshot");

ok(stop_nginx(), 'nginx stops gracefully');
Test::More::done_testing();
