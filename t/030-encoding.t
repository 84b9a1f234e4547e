# Content-Encoding: identity, gzip and deflate (zlib), with the contract's
# rules on what decodes; bodies in memory and in temporary files.
use lib 't/lib';
use Test::Nginx::Recording;

our $location = <<'CONF';
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
    }
CONF

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(config => $location) unless defined $block->config;
    $block->set_value(redis_setup => "HSET recording:site:1 enabled 1\n");
});

our $batch = '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1,"data":{"adds":[]}}]}';

# A batch of about $size bytes, with a payload that compresses poorly, so
# that the gzip body too is larger than client_body_buffer_size.
sub big_batch {
    my ($size) = @_;
    srand(7);
    my $pad = join '', map { chr(97 + int(rand(26))) } 1 .. $size;
    return qq({"session_id":"big","seq":1,"events":[{"type":2,"timestamp":5,"data":{"pad":"$pad"}}]});
}

sub post { "POST /v1/sites/1/recordings\n" . $_[0] }
sub element_like { qr/\A\Q${\ substr($_[0], 0, -1)}\E,"_ingest":\{"site_id":1,[^{}]*\}\}\z/ }

run_tests();

__DATA__

=== TEST 1: gzip
--- request eval
main::post(main::gzip_bytes($main::batch))
--- more_headers
Content-Encoding: gzip
--- error_code: 202
--- redis_check
LRANGE recording:queue:0 0 -1
--- redis_check_like eval
main::element_like($main::batch)



=== TEST 2: deflate is the zlib-wrapped stream
--- request eval
main::post(main::deflate_bytes($main::batch))
--- more_headers
Content-Encoding: deflate
--- error_code: 202
--- redis_check
LRANGE recording:queue:0 0 -1
--- redis_check_like eval
main::element_like($main::batch)



=== TEST 3: a gzip stream sent as deflate decodes
--- request eval
main::post(main::gzip_bytes($main::batch))
--- more_headers
Content-Encoding: deflate
--- error_code: 202



=== TEST 4: a zlib stream sent as gzip decodes
--- request eval
main::post(main::deflate_bytes($main::batch))
--- more_headers
Content-Encoding: gzip
--- error_code: 202



=== TEST 5: a raw deflate stream does not decode
--- request eval
main::post(main::raw_deflate_bytes($main::batch))
--- more_headers
Content-Encoding: deflate
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 6: a truncated gzip stream does not decode
--- request eval
my $gz = main::gzip_bytes($main::batch);
main::post(substr($gz, 0, length($gz) - 5))
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 7: a bad gzip checksum does not decode
--- request eval
my $gz = main::gzip_bytes($main::batch);
substr($gz, -8, 1) = chr(ord(substr($gz, -8, 1)) ^ 0xff);
main::post($gz)
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 8: a bad zlib checksum does not decode
--- request eval
my $z = main::deflate_bytes($main::batch);
substr($z, -1, 1) = chr(ord(substr($z, -1, 1)) ^ 0xff);
main::post($z)
--- more_headers
Content-Encoding: deflate
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 9: several gzip members decode as their concatenation
--- request eval
main::post(main::gzip_bytes(substr($main::batch, 0, 20)) . main::gzip_bytes(substr($main::batch, 20, 30))
           . main::gzip_bytes(substr($main::batch, 50)))
--- more_headers
Content-Encoding: gzip
--- error_code: 202
--- redis_check
LRANGE recording:queue:0 0 -1
--- redis_check_like eval
main::element_like($main::batch)



=== TEST 10: bytes after the end of the stream that are not a gzip member
--- request eval
main::post(main::gzip_bytes($main::batch) . "garbage")
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 11: a zlib stream after a gzip member is not another gzip member
--- request eval
main::post(main::gzip_bytes(substr($main::batch, 0, 20)) . main::deflate_bytes(substr($main::batch, 20)))
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 12: an empty gzip body does not decode
--- request
POST /v1/sites/1/recordings
--- more_headers
Content-Encoding: gzip
--- error_code: 400
--- response_body: {"error":"invalid_encoding"}



=== TEST 13: a body over client_body_buffer_size goes through a temporary file
--- http_config
    client_body_buffer_size 16k;
    client_max_body_size 4m;
--- request eval
main::post(main::big_batch(200_000))
--- error_code: 202
--- redis_check
LRANGE recording:queue:0 0 -1
--- redis_check_like eval
main::element_like(main::big_batch(200_000))
--- error_log
a client request body is buffered to a temporary file



=== TEST 14: a gzip body in a temporary file
--- http_config
    client_body_buffer_size 16k;
    client_max_body_size 4m;
--- request eval
main::post(main::gzip_bytes(main::big_batch(300_000)))
--- more_headers
Content-Encoding: gzip
--- error_code: 202
--- redis_check
LRANGE recording:queue:0 0 -1
--- redis_check_like eval
main::element_like(main::big_batch(300_000))
--- error_log
a client request body is buffered to a temporary file



=== TEST 15: the decoded-size limit holds for a body in a temporary file
--- http_config
    client_body_buffer_size 16k;
    client_max_body_size 4m;
--- config
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_max_decoded_size 100k;
    }
--- request eval
main::post(main::gzip_bytes(main::big_batch(300_000)))
--- more_headers
Content-Encoding: gzip
--- error_code: 413
--- response_body: {"error":"payload_too_large"}
