# Configuration: the block operators use works as written, and nginx -t
# rejects bad values with a message naming the directive.
use lib 't/lib';
use Test::Nginx::Recording;

run_tests();

__DATA__

=== TEST 1: the documented configuration block works as written
--- config
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_queue_shards 4;
        recording_country $http_cloudfront_viewer_country;
    }
--- redis_setup
HSET recording:site:1 enabled 1
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}
--- error_code: 202
--- response_body: {"status":"queued"}
--- redis_check
LLEN recording:queue:2
--- redis_check_result
1



=== TEST 2: recording_ingest needs recording_site_id
--- config
    location /r {
        recording_ingest;
    }
--- must_die
--- error_log
"recording_ingest" requires "recording_site_id"



=== TEST 3: recording_site_id may come from an enclosing level
--- http_config
    recording_site_id $arg_site;
--- config
    location /r {
        recording_ingest;
    }
--- redis_setup
HSET recording:site:5 enabled 1
--- request
POST /r?site=5
{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}
--- error_code: 202



=== TEST 4: recording_ingest takes no arguments
--- config
    location /r {
        recording_ingest on;
        recording_site_id 1;
    }
--- must_die
--- error_log
invalid number of arguments in "recording_ingest" directive



=== TEST 5: recording_ingest belongs in a location
--- config
    recording_ingest;
--- must_die
--- error_log
"recording_ingest" directive is not allowed here



=== TEST 6: queue shards must be at least 1
--- config
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_queue_shards 0;
    }
--- must_die
--- error_log
"recording_queue_shards" must be between 1 and 65536, not "0"



=== TEST 7: queue shards must be a number
--- config
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_queue_shards four;
    }
--- must_die
--- error_log
"recording_queue_shards" directive invalid number



=== TEST 8: queue shards have an upper bound
--- config
    location /r {
        recording_queue_shards 65537;
    }
--- must_die
--- error_log
"recording_queue_shards" must be between 1 and 65536, not "65537"



=== TEST 9: the decoded-size limit must be a size
--- config
    location /r {
        recording_max_decoded_size 2x;
    }
--- must_die
--- error_log
"recording_max_decoded_size" directive invalid value



=== TEST 10: the decoded-size limit cannot be zero
--- config
    location /r {
        recording_max_decoded_size 0;
    }
--- must_die
--- error_log
"recording_max_decoded_size" must be between 1 and 1073741824, not "0"



=== TEST 11: timeouts must be times
--- http_config
    recording_redis_read_timeout soon;
--- must_die
--- error_log
"recording_redis_read_timeout" directive invalid value



=== TEST 12: timeouts cannot be zero
--- http_config
    recording_redis_connect_timeout 0s;
--- must_die
--- error_log
"recording_redis_connect_timeout" must be at least 1, not "0s"



=== TEST 13: the depth limit leaves room for events
--- config
    location /r {
        recording_max_depth 2;
    }
--- must_die
--- error_log
"recording_max_depth" must be between 3 and 100000, not "2"



=== TEST 14: the events limit must be positive
--- config
    location /r {
        recording_max_events 0;
    }
--- must_die
--- error_log
"recording_max_events" must be between 1 and 1000000, not "0"



=== TEST 15: a bad Redis port
--- config
    location /r {
        recording_redis 127.0.0.1:99999;
    }
--- must_die
--- error_log
invalid port in "recording_redis" address "127.0.0.1:99999"



=== TEST 16: a Redis host that does not resolve
--- config
    location /r {
        recording_redis redis.invalid:6379;
    }
--- must_die
--- error_log
host not found in "recording_redis" address "redis.invalid:6379"



=== TEST 17: recording_redis twice at one level
--- config
    location /r {
        recording_redis 127.0.0.1:6379;
        recording_redis 127.0.0.1:6380;
    }
--- must_die
--- error_log
"recording_redis" directive is duplicate



=== TEST 18: the site cache zone has a minimum size
--- http_config
    recording_site_cache_size 4k;
--- must_die
--- error_log
"recording_site_cache_size" must be at least 32768, not "4k"



=== TEST 19: the site cache size is an http-level setting
--- config
    location /r {
        recording_site_cache_size 1m;
    }
--- must_die
--- error_log
"recording_site_cache_size" directive is not allowed here



=== TEST 20: a site id that is not 1 to 10 digits is an unknown site
--- config
    location /r {
        recording_ingest;
        recording_site_id $arg_site;
    }
--- request
POST /r?site=12345678901
{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}
--- error_code: 404
--- response_body: {"error":"unknown_site"}



=== TEST 21: the site cache TTL must be a time
--- http_config
    recording_site_cache_ttl soon;
--- must_die
--- error_log
"recording_site_cache_ttl" directive invalid value



=== TEST 22: a unix socket address needs a path
--- config
    location /r {
        recording_redis unix:;
    }
--- must_die
--- error_log
no path in the unix domain socket in "recording_redis" address "unix:"



=== TEST 23: a Redis address needs a host
--- config
    location /r {
        recording_redis :6379;
    }
--- must_die
--- error_log
no host in "recording_redis" address ":6379"



=== TEST 24: recording_status takes no arguments
--- config
    location /s {
        recording_status on;
    }
--- must_die
--- error_log
invalid number of arguments in "recording_status" directive



=== TEST 25: recording_status and recording_ingest do not share a location
--- config
    location /s {
        recording_ingest;
        recording_site_id 1;
        recording_status;
    }
--- must_die
--- error_log
"recording_status" directive cannot share a location with another content handler such as "recording_ingest"



=== TEST 26: batches hold at least one element
--- config
    location /r {
        recording_batch_elements 0;
    }
--- must_die
--- error_log
"recording_batch_elements" must be between 1 and 100000, not "0"



=== TEST 27: a batch size cannot be zero
--- config
    location /r {
        recording_batch_size 0;
    }
--- must_die
--- error_log
"recording_batch_size" must be at least 1, not "0"



=== TEST 28: the pending limit has a minimum of 64k
--- http_config
    recording_pending_limit 1k;
--- must_die
--- error_log
"recording_pending_limit" must be at least 65536, not "1k"



=== TEST 29: the spool directory's parent must exist (nginx makes only the directory)
--- http_config
    recording_spool $TEST_NGINX_SERVROOT/no-such-dir/spool;
--- must_die
--- error_log eval
qr{"recording_spool" "[^"]*/no-such-dir/spool" cannot be created: its parent "[^"]*/no-such-dir" is not a directory that nginx can enter \(2: No such file or directory\)}



=== TEST 30: the spool must be a directory, not a file
--- http_config
    recording_spool $TEST_NGINX_SERVROOT/conf/nginx.conf;
--- must_die
--- error_log eval
qr{"recording_spool" "[^"]*/conf/nginx\.conf" is not a directory}



=== TEST 31: the spool's max_size must be a size
--- http_config
    recording_spool $TEST_NGINX_HTML_DIR max_size=abc;
--- must_die
--- error_log
invalid "max_size=abc" in "recording_spool": a size of at least 1m is expected



=== TEST 32: the spool's max_size is at least 1m
--- http_config
    recording_spool $TEST_NGINX_HTML_DIR max_size=10k;
--- must_die
--- error_log
invalid "max_size=10k" in "recording_spool": a size of at least 1m is expected



=== TEST 33: recording_spool knows only max_size=
--- http_config
    recording_spool $TEST_NGINX_HTML_DIR fsync=on;
--- must_die
--- error_log
unknown parameter "fsync=on" in "recording_spool"



=== TEST 34: recording_spool once
--- http_config
    recording_spool $TEST_NGINX_HTML_DIR;
    recording_spool $TEST_NGINX_SERVROOT/conf;
--- must_die
--- error_log
"recording_spool" directive is duplicate



=== TEST 35: recording_spool is an http-level setting
--- config
    location /r {
        recording_spool $TEST_NGINX_HTML_DIR;
    }
--- must_die
--- error_log
"recording_spool" directive is not allowed here



=== TEST 36: recording_spool_fsync is on or off
--- http_config
    recording_spool_fsync maybe;
--- must_die
--- error_log
invalid value "maybe" in "recording_spool_fsync" directive, it must be "on" or "off"



=== TEST 37: a Redis database is a number
--- config
    location /r {
        recording_redis 127.0.0.1:6379 db=abc;
    }
--- must_die
--- error_log
invalid "db=abc" in "recording_redis": a database number is expected



=== TEST 38: a Redis database is not negative
--- config
    location /r {
        recording_redis 127.0.0.1:6379 db=-1;
    }
--- must_die
--- error_log
invalid "db=-1" in "recording_redis": a database number is expected



=== TEST 39: a Redis user needs a password
--- config
    location /r {
        recording_redis 127.0.0.1:6379 user=u;
    }
--- must_die
--- error_log
"user=" in "recording_redis" needs "password="



=== TEST 40: an empty Redis password
--- config
    location /r {
        recording_redis 127.0.0.1:6379 password=;
    }
--- must_die
--- error_log
empty "password=" in "recording_redis"



=== TEST 41: two Redis addresses are a cluster's seeds only
--- config
    location /r {
        recording_redis 127.0.0.1:6379 127.0.0.1:6380;
    }
--- must_die
--- error_log
"recording_redis" takes several addresses only as a cluster's seeds (add "cluster")



=== TEST 42: an unknown recording_redis parameter
--- config
    location /r {
        recording_redis 127.0.0.1:6379 foo=1;
    }
--- must_die
--- error_log
unknown parameter "foo=1" in "recording_redis"



=== TEST 43: recording_redis needs an address
--- config
    location /r {
        recording_redis password=x;
    }
--- must_die
--- error_log
"recording_redis" needs an address



=== TEST 44: a cluster with db= is refused
--- config
    location /r {
        recording_redis 127.0.0.1:6379 127.0.0.1:6380 cluster db=1;
    }
--- must_die
--- error_log
"db=" cannot be used with "cluster" in "recording_redis": a cluster has database 0 only



=== TEST 45: the password never shows in the error log
--- config
    location /r {
        recording_redis 127.0.0.1:99999 password=s3cret-word;
    }
--- must_die
--- error_log
invalid port in "recording_redis" address "127.0.0.1:99999"
--- no_error_log
s3cret-word



=== TEST 46: accepted forms of the new directives
password=, user= and db= together; the bounds' own values.
--- http_config
    recording_pending_limit 64k;
    recording_spool_fsync off;
--- config
    location = /s {
        recording_status;
    }
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_redis 127.0.0.1:6379 password=x user=u db=2;
        recording_batch_elements 100000;
        recording_batch_size 1;
        recording_batch_delay 0;
    }
--- request
GET /s
--- error_code: 200
--- response_body_like: "127\.0\.0\.1:6379":\{"connections":0\}



=== TEST 47: a cluster has no database to select
--- config
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_redis 127.0.0.1:7000 cluster db=2;
    }
--- must_die
--- error_log
"db=" cannot be used with "cluster" in "recording_redis": a cluster has database 0 only



=== TEST 48: a cluster's seeds are not unix sockets
--- config
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_redis 127.0.0.1:7000 unix:/run/redis.sock cluster;
    }
--- must_die
--- error_log
"unix:/run/redis.sock" in "recording_redis": a cluster's seeds are host:port, not unix sockets



=== TEST 49: a cluster's seeds, with a password, are accepted; nothing connects until a batch comes
--- config
    location /r {
        recording_ingest;
        recording_site_id 1;
        recording_redis 127.0.0.1:7000 localhost:7001 cluster password=secret;
    }
    location /t {
        return 200 "up";
    }
--- request
GET /t
--- error_code: 200
--- response_body: up
--- no_error_log
recording: redis
