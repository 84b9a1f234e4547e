# CONTRACT.md's response table, row by row, with its CORS headers and the
# order in which the checks run.
use lib 't/lib';
use Test::Nginx::Recording;

our $location = <<'CONF';
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_queue_shards 4;
        recording_country $http_cloudfront_viewer_country;
    }
    location ~ "^/v1/sites/(?<site_id>[^/]+)/loose$" {
        recording_ingest;
        recording_site_id $site_id;
    }
CONF

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(config => $location) unless defined $block->config;
    $block->set_value(redis_setup => "HSET recording:site:1 enabled 1\n")
        unless defined $block->redis_setup;
});

sub batch { qq({"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}) }

# A valid batch of exactly $size bytes.
sub batch_of_size {
    my ($size) = @_;
    my $head = q({"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}],"pad":");
    my $tail = q("});
    return $head . ('x' x ($size - length($head) - length($tail))) . $tail;
}

run_tests();

__DATA__

=== TEST 1: queued: 202, JSON body, CORS headers for an Origin
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Origin: https://shop.example
--- error_code: 202
--- response_body: {"status":"queued"}
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: https://shop.example
Access-Control-Allow-Credentials: true
Vary: Origin
--- redis_check
LLEN recording:queue:2
--- redis_check_result
1



=== TEST 2: no Origin, no CORS headers
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 202
--- response_headers
!Access-Control-Allow-Origin
!Access-Control-Allow-Credentials
!Vary



=== TEST 3: sampled out: 200, nothing queued
--- redis_setup
HSET recording:site:1 enabled 1 sample_rate 0
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Origin: https://shop.example
--- error_code: 200
--- response_body: {"status":"sampled_out"}
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: https://shop.example
--- redis_check
KEYS recording:queue:*
--- redis_check_result



=== TEST 4: CORS preflight: 204, no body, the preflight headers
--- request
OPTIONS /v1/sites/1/recordings
--- more_headers
Origin: https://shop.example
Access-Control-Request-Method: POST
--- error_code: 204
--- response_body:
--- response_headers
Access-Control-Allow-Origin: https://shop.example
Access-Control-Allow-Credentials: true
Vary: Origin
Access-Control-Allow-Methods: POST, OPTIONS
Access-Control-Allow-Headers: Content-Type, Content-Encoding
Access-Control-Max-Age: 86400
!Content-Type



=== TEST 5: preflight comes before the site id check
--- request
OPTIONS /v1/sites/abc/loose
--- error_code: 204
--- response_headers
Access-Control-Allow-Methods: POST, OPTIONS



=== TEST 6: any other method: 405 with Allow
--- request
GET /v1/sites/1/recordings
--- more_headers
Origin: https://shop.example
--- error_code: 405
--- response_body: {"error":"method_not_allowed"}
--- response_headers
Allow: POST, OPTIONS
Content-Type: application/json
Access-Control-Allow-Origin: https://shop.example



=== TEST 7: PUT with a body is 405 too, before anything else
--- request
PUT /v1/sites/abc/loose
not json at all
--- error_code: 405
--- response_body: {"error":"method_not_allowed"}



=== TEST 8: HEAD is 405 without a body
--- request
HEAD /v1/sites/1/recordings
--- error_code: 405
--- response_body:
--- response_headers
Allow: POST, OPTIONS



=== TEST 9: a site id that is not digits is an unknown site, before the body
--- request
POST /v1/sites/12a/loose
not json
--- error_code: 404
--- response_body: {"error":"unknown_site"}



=== TEST 10: no hash for the site: unknown
--- redis_setup
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 404
--- response_body: {"error":"unknown_site"}
--- response_headers
Content-Type: application/json



=== TEST 11: a hash with neither field: unknown
--- redis_setup
HSET recording:site:1 name shop
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 404
--- response_body: {"error":"unknown_site"}



=== TEST 12: disabled site: 403
--- redis_setup
HSET recording:site:1 enabled 0 sample_rate 1
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 403
--- response_body: {"error":"site_disabled"}



=== TEST 13: a rate without "enabled" is a disabled site
--- redis_setup
HSET recording:site:1 sample_rate 1
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 403
--- response_body: {"error":"site_disabled"}



=== TEST 14: enabled must be exactly "1"
--- redis_setup
HSET recording:site:1 enabled true
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 403
--- response_body: {"error":"site_disabled"}



=== TEST 15: an unsupported encoding: 415
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Content-Encoding: br
--- error_code: 415
--- response_body: {"error":"unsupported_encoding"}



=== TEST 16: a list of encodings is unsupported
--- request eval
"POST /v1/sites/1/recordings\n" . main::gzip_bytes(main::batch())
--- more_headers
Content-Encoding: gzip, br
--- error_code: 415
--- response_body: {"error":"unsupported_encoding"}



=== TEST 17: two Content-Encoding headers are a list too
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Content-Encoding: identity
Content-Encoding: identity
--- error_code: 415
--- response_body: {"error":"unsupported_encoding"}



=== TEST 18: encoding names in any letter case
--- request eval
"POST /v1/sites/1/recordings\n" . main::gzip_bytes(main::batch())
--- more_headers
Content-Encoding: GZip
--- error_code: 202



=== TEST 19: IDENTITY in capitals (the legacy layer refused it; the contract does not)
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Content-Encoding: IDENTITY
--- error_code: 202



=== TEST 20: an empty Content-Encoding is identity
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Content-Encoding:
--- error_code: 202



=== TEST 21: a body that does not decode: 400 invalid_encoding
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 22: decoded body of exactly 2 MiB is accepted
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch_of_size(2 * 1024 * 1024)
--- http_config
    client_max_body_size 4m;
--- error_code: 202



=== TEST 23: decoded body one byte over 2 MiB: 413
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch_of_size(2 * 1024 * 1024 + 1)
--- http_config
    client_max_body_size 4m;
--- error_code: 413
--- response_body: {"error":"payload_too_large"}



=== TEST 24: a small gzip body that inflates past the limit: 413
--- request eval
"POST /v1/sites/1/recordings\n" . main::gzip_bytes(main::batch_of_size(3 * 1024 * 1024))
--- more_headers
Content-Encoding: gzip
--- error_code: 413
--- response_body: {"error":"payload_too_large"}



=== TEST 25: the limit is a directive
--- config
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_max_decoded_size 100;
    }
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch_of_size(101)
--- error_code: 413
--- response_body: {"error":"payload_too_large"}



=== TEST 26: above client_max_body_size nginx answers its own 413 page
--- http_config
    client_max_body_size 1k;
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch_of_size(2048)
--- error_code: 413
--- response_body_like: 413 Request Entity Too Large



=== TEST 27: not an object: 400 invalid_json
--- request
POST /v1/sites/1/recordings
[{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}]
--- error_code: 400
--- response_body: {"error":"invalid_json"}



=== TEST 28: an empty body is not JSON
--- request
POST /v1/sites/1/recordings
--- error_code: 400
--- response_body: {"error":"invalid_json"}



=== TEST 29: duplicate top-level keys are not accepted
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":0,"s\u0065q":1,"events":[{"type":3,"timestamp":1}]}
--- error_code: 400
--- response_body: {"error":"invalid_json"}



=== TEST 30: invalid UTF-8 is not JSON
--- request eval
"POST /v1/sites/1/recordings\n" . qq({"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1,"data":"\xC0\xAF"}]})
--- error_code: 400
--- response_body: {"error":"invalid_json"}



=== TEST 31: bad session_id: 400 invalid_session_id
--- request
POST /v1/sites/1/recordings
{"session_id":"a b","seq":0,"events":[{"type":3,"timestamp":1}]}
--- error_code: 400
--- response_body: {"error":"invalid_session_id"}



=== TEST 32: bad seq: 400 invalid_seq
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":-1,"events":[{"type":3,"timestamp":1}]}
--- error_code: 400
--- response_body: {"error":"invalid_seq"}



=== TEST 33: bad events: 400 invalid_events
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":0,"events":[{"type":7,"timestamp":1}]}
--- error_code: 400
--- response_body: {"error":"invalid_events"}
--- error_log
recording: batch refused: invalid_events, site "1", session "abc"



=== TEST 34: Redis unreachable: 503, with CORS headers
--- no_default_redis
--- http_config
    recording_redis 127.0.0.1:1;
--- redis_setup
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- more_headers
Origin: https://shop.example
--- error_code: 503
--- response_body: {"error":"queue_unavailable"}
--- response_headers
Content-Type: application/json
Access-Control-Allow-Origin: https://shop.example



=== TEST 35: order: JSON is checked before the site (unknown site, bad JSON)
--- redis_setup
--- request
POST /v1/sites/1/recordings
{"session_id":
--- error_code: 400
--- response_body: {"error":"invalid_json"}



=== TEST 36: order: the encoding is checked before JSON
--- request
POST /v1/sites/1/recordings
not json
--- more_headers
Content-Encoding: compress
--- error_code: 415



=== TEST 37: order: decoding before size (a bad stream is 400 even when long)
--- http_config
    client_max_body_size 8m;
--- request eval
"POST /v1/sites/1/recordings\n" . ("x" x (3 * 1024 * 1024))
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 38: order: session_id before seq before events
--- request
POST /v1/sites/1/recordings
{"session_id":"","seq":-1,"events":[]}
--- error_code: 400
--- response_body: {"error":"invalid_session_id"}



=== TEST 39: order: seq before events
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":"1","events":[]}
--- error_code: 400
--- response_body: {"error":"invalid_seq"}



=== TEST 40: order: the body is checked before the site settings (disabled site)
--- redis_setup
HSET recording:site:1 enabled 0
--- request
POST /v1/sites/1/recordings
{"session_id":"abc","seq":0,"events":[]}
--- error_code: 400
--- response_body: {"error":"invalid_events"}



=== TEST 41: order: site settings before sampling (disabled beats sampled out)
--- redis_setup
HSET recording:site:1 enabled 0 sample_rate 0
--- request eval
"POST /v1/sites/1/recordings\n" . main::batch()
--- error_code: 403



=== TEST 42: a chunked request body
--- raw_request eval
my $b = main::batch();
"POST /v1/sites/1/recordings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
  . sprintf("%x\r\n%s\r\n", 10, substr($b, 0, 10))
  . sprintf("%x\r\n%s\r\n", length($b) - 10, substr($b, 10))
  . "0\r\n\r\n"
--- error_code: 202
--- redis_check
LLEN recording:queue:2
--- redis_check_result
1
