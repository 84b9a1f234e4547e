# Self-test of t/lib/Test/Nginx/Recording.pm with plain nginx (no module).
use strict;
use warnings;

BEGIN { $ENV{TEST_NGINX_MODULE} = '' }   # '' = no load_module, no recording_redis

use lib 't/lib';
use Test::Nginx::Recording;
use IO::Uncompress::Gunzip ();
use Compress::Zlib ();
use Compress::Raw::Zlib ();

plan tests => planned_tests() + 34;

run_tests();

# ---------------------------------------------------------------------------
# Procedural API
# ---------------------------------------------------------------------------

# Compression helpers round-trip.
my $data = join '', map { chr($_ % 256) } 0 .. 5000;
IO::Uncompress::Gunzip::gunzip(\gzip_bytes($data) => \my $gunzipped);
is($gunzipped, $data, 'gzip_bytes round trip');
is(Compress::Zlib::uncompress(deflate_bytes($data)), $data, 'deflate_bytes round trip');
my $inflater = Compress::Raw::Zlib::Inflate->new(-WindowBits => -Compress::Raw::Zlib::MAX_WBITS());
my $raw = raw_deflate_bytes($data);
$inflater->inflate($raw, my $inflated);
is($inflated, $data, 'raw_deflate_bytes round trip');

# start / request / reload / stop.
ok(start_nginx(config => <<'CONF'), 'start_nginx');
        location = /p {
            add_header X-M a;
            add_header X-M b;
            return 200 "one";
        }
CONF
my $res = http_request(uri => '/p');
is($res->{status}, 200, 'http_request status');
is($res->{body}, 'one', 'http_request body');
is($res->{headers}{'x-m'}, 'a, b', 'repeated headers are joined');
is(scalar(grep { $_->[0] eq 'X-M' } @{ $res->{raw_headers} }), 2, 'raw_headers keeps both');
ok(!defined $res->{error}, 'no error reported');

is(reload_nginx(config => 'location = /p { return 200 "two"; }'), 1, 'reload_nginx ok');
is(http_request(uri => '/p')->{body}, 'two', 'new config active after reload');
is(reload_nginx(config => 'location = /p { no_such_directive; }'), 0,
   'reload_nginx reports a rejected config');
like(error_log_text(), qr/unknown directive "no_such_directive"/, 'error_log_text has the reason');
is(http_request(uri => '/p')->{body}, 'two', 'old config still serves');

# A crashed worker is what the default per-block check looks for.
is(nginx_master_pid(), 0 + do { open my $fh, '<', servroot() . '/logs/nginx.pid' or die $!; <$fh> },
   'nginx_master_pid is the pid nginx wrote');
my @workers = nginx_worker_pids();
is(scalar @workers, 1, 'nginx_worker_pids: the one worker');
my $worker = $workers[0];
ok((grep { $_ == $worker } Test::Nginx::Recording::_children(nginx_master_pid())),
   'found a worker process, a child of the master');
kill SEGV => $worker;
my $until = time + 5;
sleep 1 while time < $until && error_log_text() !~ /exited on signal/;
ok(scalar Test::Nginx::Recording::_crash_lines(error_log_text()), 'worker crash is detected');
is(http_request(uri => '/p')->{status}, 200, 'master respawned the worker');

# Exact request body bytes: keep the body in a file and compare.
start_nginx(config => <<'CONF');
        location = /body {
            client_body_in_file_only on;
            proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/ok;
        }
        location = /ok { return 200 "ok"; }
CONF
my $body = gzip_bytes("binary \r\n\0 body " x 50);
$res = http_request(method => 'POST', uri => '/body', body => $body,
                    headers => ['Content-Type' => 'application/octet-stream']);
is($res->{body}, 'ok', 'proxied body request');
my ($file) = glob(servroot() . '/client_body_temp/*');
is(do { local $/; open my $fh, '<:raw', $file or die "$file: $!"; <$fh> }, $body,
   'request body arrived byte for byte');
ok(stop_nginx(), 'stop_nginx stops gracefully');
ok(defined http_request(uri => '/ok', timeout => 2)->{error}, 'request fails when nginx is down');

# Redis helpers.
is(redis_port(), $ENV{TEST_NGINX_REDIS_PORT}, 'redis_port');
is(redis_cmd('SET', 'k', "v\r\nx"), 'OK', 'SET status reply');
is(redis_cmd('GET', 'k'), "v\r\nx", 'GET bulk reply is binary safe');
is(redis_cmd('GET', 'nokey'), undef, 'nil reply is undef');
is(redis_cmd('INCR', 'n'), 1, 'integer reply');
redis_cmd('RPUSH', 'l', 'a', 'b');
is_deeply(redis_cmd('LRANGE', 'l', 0, -1), ['a', 'b'], 'array reply');
like(redis_cmd_raw('NOPE')->{error}, qr/^ERR unknown command/, 'redis_cmd_raw returns errors');
ok(!eval { redis_cmd('NOPE'); 1 } && $@ =~ /unknown command/, 'redis_cmd dies on errors');

redis_restart();
is(redis_cmd('GET', 'k'), undef, 'redis_restart starts empty (no persistence)');
redis_stop();
ok(!eval { redis_cmd('PING'); 1 }, 'redis_cmd fails while redis is stopped');
redis_start();
is(redis_cmd('PING'), 'PONG', 'redis_start brings it back on the same port');

__DATA__

=== TEST 1: plain return with inline body and header checks
--- config
    location = /hi { return 200 "hi"; }
--- request
GET /hi
--- error_code: 200
--- response_body: hi
--- response_headers
Content-Type: text/plain
Content-Length: 2
!X-Foo
--- response_headers_like
Server: ^nginx
--- no_error_log
[error]



=== TEST 2: request body keeps its bytes, only the trailing newline goes
--- config
    location = /len { return 200 "len=$content_length\n"; }
--- request
POST /len
{"a":1}
--- response_body
len=7



=== TEST 3: POST without body sends Content-Length: 0
--- config
    location = /len { return 200 "len=$content_length"; }
--- request
POST /len
--- response_body: len=0



=== TEST 4: more_headers are sent; a Content-Length there is used as is
--- config
    location = /h { return 200 "x=$http_x_custom cl=$content_length"; }
--- request
POST /h
abc
--- more_headers
X-Custom: hello world
Content-Length: 2
--- response_body: x=hello world cl=2



=== TEST 5: 405 with add_header always
--- config
    location = /no {
        add_header X-Foo bar always;
        return 405;
    }
--- request
DELETE /no
--- error_code: 405
--- response_headers
X-Foo: bar
--- response_body_like
405 Not Allowed



=== TEST 6: chunked responses are decoded (ssi drops Content-Length)
--- config
    location = /chunked {
        ssi on;
        ssi_types text/plain;
        return 200 "chunky";
    }
--- request
GET /chunked
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body: chunky



=== TEST 7: redis_setup with quoting, redis_check_result
--- config
    location = /t { return 204; }
--- redis_setup
HSET recording:site:1 enabled 1 sample_rate 1
SET "key with space" 'single "quoted"'
# comments and blank lines are skipped

RPUSH list a b "c\x41d"
SET json {"a":1}
--- request
GET /t
--- error_code: 204
--- redis_check
HGET recording:site:1 sample_rate
GET "key with space"
LRANGE list 0 -1
GET missing
GET json
--- redis_check_result
1
single "quoted"
a
b
cAd
(nil)
{"a":1}



=== TEST 8: redis is flushed between blocks
--- config
    location = /t { return 204; }
--- request
GET /t
--- redis_check
EXISTS recording:site:1
DBSIZE
--- redis_check_like
^0\n0$



=== TEST 9: redis errors show up in redis_check output; no request needed
--- redis_check
INCR
--- redis_check_like: ^\(error\) ERR wrong number



=== TEST 10: error_log and no_error_log
--- config
    location / { root $TEST_NGINX_HTML_DIR; }
--- request
GET /does-not-exist.html
--- error_code: 404
--- error_log
does-not-exist.html" failed
No such file or directory
--- no_error_log
[crit]
[alert]



=== TEST 11: error_log eval with qr// and an arrayref
--- config
    location / { root $TEST_NGINX_HTML_DIR; }
--- request
GET /missing.txt
--- error_log eval
[qr/\[error\].*missing\.txt/, "No such file"]
--- no_error_log eval
qr/\[emerg\]/



=== TEST 12: request eval with gzip_bytes (binary body)
--- config
    location = /len { return 200 "len=$content_length"; }
--- request eval
"POST /len\n" . gzip_bytes("hello " x 100)
--- more_headers
Content-Encoding: gzip
--- response_body eval
"len=" . length(gzip_bytes("hello " x 100))



=== TEST 13: raw_request eval
--- config
    location = /hi { return 200 "hi"; }
--- raw_request eval
"GET /hi HTTP/1.0\r\nHost: x\r\n\r\n"
--- error_code: 200
--- response_body: hi



=== TEST 14: $TEST_NGINX_* variables in config sections
--- config
    location = /ports { return 200 "$TEST_NGINX_REDIS_PORT $TEST_NGINX_SERVER_PORT"; }
--- request
GET /ports
--- response_body eval
"$ENV{TEST_NGINX_REDIS_PORT} $ENV{TEST_NGINX_SERVER_PORT}"



=== TEST 15: main_config (own worker_processes) and http_config placement
--- main_config
worker_processes 2;
--- http_config
    map $uri $tag { default "mapped"; }
--- config
    location = /m { return 200 $tag; }
--- request
GET /m
--- response_body: mapped



=== TEST 16: upstream failure is an [error], not a crash
--- config
    location = /up { proxy_pass http://127.0.0.1:1/; }
--- request
GET /up
--- error_code: 502
--- error_log
connect() failed (111: Connection refused)



=== TEST 17: must_die checks nginx -t output
--- config
    location / { bogus_directive on; }
--- must_die
--- error_log
unknown directive "bogus_directive"
--- no_error_log
test is successful



=== TEST 18: SKIP is honoured
--- config
    location / { return 200; }
--- request
GET /
--- error_code: 999
--- SKIP
