# What a worker holds for snapshots Redis has not taken yet (issue 13): the
# RPUSH of each, and not a second copy of it in the Redis connection's
# output queue (core's SendQueue refers to a large command the batch keeps
# until its reply). Redis is stopped (SIGSTOP: connected, reading nothing)
# while 64 snapshots are posted; the worker's RSS then grows by about one
# document per snapshot, where it grew by about two. Counted in bytes, not
# timed. When Redis goes on, every one of them is in its queue, intact.
use lib 't/lib';
use Test::Nginx::Recording;
use JSON::PP ();

Test::More::plan(skip_all => 'RSS is valgrind\'s own under valgrind') if use_valgrind();

my $SNAPSHOTS = 64;

start_nginx(http_config => "    client_body_buffer_size 1m;\n    client_max_body_size 4m;\n"
                         . "    recording_pending_limit 512m;\n",
            config => <<'CONF');
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_redis_read_timeout 60s;
    }
    location = /status { recording_status; }
CONF
redis_cmd(qw(HSET recording:site:1 enabled 1 sample_rate 1));

# A snapshot-like batch, as t/180's: 720 KB of JSON in many small nodes.
my $nodes = join ',', map { qq({"type":2,"tagName":"div","attributes":{"class":"card c$_"},"childNodes":[{"type":3,"textContent":"product $_ in stock"}],"id":$_}) } 1 .. 6000;
my $doc = qq({"session_id":"pending","seq":0,"events":[{"type":2,"timestamp":1700000000000,"data":{"node":{"type":0,"childNodes":[$nodes]}}}]});
my $body = gzip_bytes($doc);
my $raw = "POST /v1/sites/1/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    my ($kb) = map { /^VmRSS:\s+(\d+)/ ? $1 : () } <$fh>;
    return $kb // 0;
}

sub status {
    my $res = http_request(method => 'GET', uri => '/status');
    return eval { JSON::PP->new->decode($res->{body} // '') } || {};
}

my ($worker) = nginx_worker_pids();
# The heap grows to what snapshots one at a time need.
my @warm = map {
    my $res = http_request(method => 'POST', uri => '/v1/sites/1/recordings', body => $body,
                           headers => ['Content-Type' => 'application/json', 'Content-Encoding' => 'gzip']);
    $res->{status} // 0
} 1 .. 5;
is_deeply(\@warm, [(202) x 5], 'five snapshots to warm up: 202');
redis_cmd('DEL', 'recording:queue:0');
my $before = rss_kb($worker);

kill STOP => redis_pid();
my $held;
my $peak = 0;
my $pending_kb = 0;
my $ok = eval {
    # The clients give up after 3 s; their batches stay with the worker.
    my @answers = concurrent_requests(3, ($raw) x $SNAPSHOTS);
    is(scalar(grep { defined } @answers), 0, "no answer while Redis is stopped");
    $held = poll_until(10, sub { (status()->{pending_bytes} // 0) >= $SNAPSHOTS * length $doc });
    $pending_kb = int((status()->{pending_bytes} // 0) / 1024);
    $peak = rss_kb($worker);
    1;
};
my $err = $@;
kill CONT => redis_pid();
die $err unless $ok;

ok($held, "the worker holds the $SNAPSHOTS snapshots' elements ($pending_kb kB pending)");
my $grew = $peak - $before;
my $per = $grew / $SNAPSHOTS;
my $doc_kb = length($doc) / 1024;
Test::More::note(sprintf "worker RSS %d kB warm, %d kB with %d snapshots of %.0f kB held (+%.0f kB each, %.2f documents)",
                 $before, $peak, $SNAPSHOTS, $doc_kb, $per, $per / $doc_kb);
cmp_ok($per, '<', 1.4 * $doc_kb,
       "each held snapshot costs the worker less than 1.4 documents of RSS (+$per kB each, a document $doc_kb kB)");

ok(poll_until(30, sub { (redis_cmd('LLEN', 'recording:queue:0') // 0) == $SNAPSHOTS }),
   "once Redis goes on, the $SNAPSHOTS snapshots are in its queue");
ok(poll_until(10, sub { (status()->{pending_bytes} // -1) == 0 }), 'and the worker holds nothing more');
# Each went out in pieces (the document from the decoder's buffer, the
# rest copied), through writes cut short by a full socket: the element is
# still the document plus `_ingest`, byte for byte.
my $prefix = substr($doc, 0, length($doc) - 1);
my @bad = grep { !(index($_, $prefix) == 0 && substr($_, length $prefix) =~ /^,"_ingest":\{[^{}]*\}\}$/) }
          @{ redis_cmd('LRANGE', 'recording:queue:0', 0, -1) };
is(scalar @bad, 0, "every element is the document and its _ingest, byte for byte");
no_crash('pending snapshots');
ok(stop_nginx(), 'nginx stops gracefully');
Test::More::done_testing();
