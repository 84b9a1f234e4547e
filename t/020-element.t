# What lands in Redis: the client's JSON text, byte for byte, plus `_ingest`
# (and minus any client `_ingest`), in the right shard.
use lib 't/lib';
use Test::Nginx::Recording 'no_plan';
use JSON::PP ();
use Time::HiRes ();

start_nginx(http_config => <<'HTTP', config => <<'CONF');
    set_real_ip_from 127.0.0.2;
    real_ip_header X-Forwarded-For;
HTTP
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_queue_shards 4;
        recording_country $http_cloudfront_viewer_country;
        add_header X-Request-Id $request_id always;
    }
CONF
redis_cmd(qw(HSET recording:site:1 enabled 1));
redis_cmd(qw(HSET recording:site:007 enabled 1));
redis_cmd(qw(HSET recording:site:9999999999 enabled 1));

my $json = JSON::PP->new->utf8;

# Posts a batch, expects 202 and returns (element, response) from the shard.
sub post {
    my ($body, %opt) = @_;
    my $site = $opt{site} // 1;
    redis_cmd('DEL', map { "recording:queue:$_" } 0 .. 3);
    my $res = http_request(method => 'POST', uri => "/v1/sites/$site/recordings",
                           headers => $opt{headers} // ['User-Agent' => 'ua/1'], body => $body,
                           port => $opt{port});
    is($res->{status}, 202, "$opt{name}: 202") or diag($res->{body});
    my $shard = $opt{shard} // 2;
    my $elements = redis_cmd('LRANGE', "recording:queue:$shard", 0, -1);
    is(scalar @$elements, 1, "$opt{name}: one element in recording:queue:$shard");
    return ($elements->[0] // '', $res);
}

# The element must be exactly $expected_client_text with `,"_ingest":{...}`
# inserted where $marker stands; returns the parsed _ingest.
sub check_element {
    my ($element, $before, $after, $name) = @_;
    like($element, qr/\A\Q$before\E,"_ingest":\{[^{}]*\}\Q$after\E\z/s, "$name: client bytes kept, _ingest added");
    my $doc = eval { $json->decode($element) };
    ok($doc, "$name: element is valid JSON") or diag($@);
    return $doc ? $doc->{_ingest} : {};
}

my $batch = '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}';

{
    my $t0 = int(Time::HiRes::time() * 1000);
    my ($el, $res) = post($batch, name => 'plain', headers => [
        'User-Agent' => 'Mozilla/5.0 (X11) "quoted" \\slash',
        'CloudFront-Viewer-Country' => 'DE',
    ]);
    my $t1 = int(Time::HiRes::time() * 1000);
    my $ingest = check_element($el, substr($batch, 0, -1), '}', 'plain');
    like($el, qr/,"_ingest":\{"site_id":1,"received_at":\d+,"ip":"127\.0\.0\.1","user_agent":"Mozilla\/5\.0 \(X11\) \\"quoted\\" \\\\slash","country":"DE","request_id":"[0-9a-f]{32}"\}\}\z/,
         'plain: _ingest has the six fields in order, escaped');
    is_deeply([sort keys %$ingest], [qw(country ip received_at request_id site_id user_agent)], 'plain: exactly six fields');
    ok($ingest->{received_at} >= $t0 - 1 && $ingest->{received_at} <= $t1 + 1,
       "plain: received_at ($ingest->{received_at}) is when the server took the batch");
    is($ingest->{request_id}, $res->{headers}{'x-request-id'}, 'plain: request_id is $request_id');
}

{
    my ($el) = post($batch, name => 'no headers', headers => []);
    my $ingest = check_element($el, substr($batch, 0, -1), '}', 'no headers');
    like($el, qr/"user_agent":null,"country":null/, 'absent User-Agent and country are null');
}

{
    my ($el) = post($batch, name => 'empty headers', headers => ['User-Agent' => '', 'CloudFront-Viewer-Country' => '']);
    like($el, qr/"user_agent":"","country":null/, 'an empty User-Agent is "", an empty country null');
}

{
    my ($el) = post($batch, name => 'bad bytes', headers => [
        'User-Agent' => "bad \xC0\xAF \xE2\x82 \x01\x7f end \xC3\xA9",
        'CloudFront-Viewer-Country' => "\xFF",
    ]);
    like($el, qr/"user_agent":"bad \x{EF}\x{BF}\x{BD}\x{EF}\x{BF}\x{BD} \x{EF}\x{BF}\x{BD} \\u0001\x7f end \x{C3}\x{A9}","country":"\x{EF}\x{BF}\x{BD}"/,
         'header bytes that are not UTF-8 become U+FFFD, control characters are escaped');
    ok(eval { $json->decode($el); 1 }, 'and the element is valid JSON in valid UTF-8') or diag($@);
}

{
    my ($el) = post($batch, name => 'forwarded', headers => ['X-Forwarded-For' => '203.0.113.9'], port => undef);
    like($el, qr/"ip":"127\.0\.0\.1"/, 'X-Forwarded-For from an untrusted peer is ignored');
}

SKIP: {
    # realip: the peer 127.0.0.2 is trusted, so its X-Forwarded-For counts.
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                     LocalAddr => '127.0.0.2', Timeout => 5)
        or skip("cannot bind 127.0.0.2: $!", 1);
    close $sock;
    redis_cmd('DEL', map { "recording:queue:$_" } 0 .. 3);
    my $req = "POST /v1/sites/1/recordings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            . "X-Forwarded-For: 203.0.113.9\r\nContent-Length: " . length($batch) . "\r\n\r\n$batch";
    $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                  LocalAddr => '127.0.0.2', Timeout => 5);
    print $sock $req;
    local $/;
    my $answer = <$sock>;
    like($answer, qr{^HTTP/1.1 202}, 'realip: 202');
    my $el = redis_cmd(qw(LINDEX recording:queue:2 0)) // '';
    like($el, qr/"ip":"203\.0\.113\.9"/, 'ip is $remote_addr after realip');
}

{
    my $doc = qq({\n  "session_id": "abc",\n  "seq": 0,\n  "events": [ {"type":3, "timestamp":1} ]\n}\n);
    my ($el) = post($doc, name => 'whitespace');
    is($el, "{\n  \"session_id\": \"abc\",\n  \"seq\": 0,\n  \"events\": [ {\"type\":3, \"timestamp\":1} ]"
            . ($el =~ /(,"_ingest":\{[^{}]*\})/)[0] . "\n}\n", 'white space is kept as sent');
}

{
    # The legacy layer's re-encoding defects: none of them here.
    my $doc = '{"session_id":"abc","z":1,"seq":0,"a":"x/y \u00e9\ud83d\ude00","events":[{"type":3,"timestamp":1.2345678901234567,'
            . '"data":{"adds":[],"removes":{},"n":12345678901234567890,"e":1E+2}}],"m":-0.0}';
    my ($el) = post($doc, name => 'verbatim');
    check_element($el, substr($doc, 0, -1), '}', 'verbatim');
}

for my $case (
    ['first',  '{"_ingest":{"site_id":99},"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}',
               '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}'],
    ['middle', '{"session_id":"abc", "_ingest" : [1,{"a":"}"}] ,"seq":0,"events":[{"type":3,"timestamp":1}]}',
               '{"session_id":"abc" ,"seq":0,"events":[{"type":3,"timestamp":1}]}'],
    ['last',   '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}],"_ingest":"forged"}',
               '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}'],
    ['escaped key', '{"session_id":"abc","\u005fingest":null,"seq":0,"events":[{"type":3,"timestamp":1}]}',
               '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1}]}'],
    ['nested', '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1,"_ingest":1,"data":{"_ingest":2}}]}',
               '{"session_id":"abc","seq":0,"events":[{"type":3,"timestamp":1,"_ingest":1,"data":{"_ingest":2}}]}'],
) {
    my ($name, $sent, $kept) = @$case;
    my ($el) = post($sent, name => "client _ingest $name");
    my $ingest = check_element($el, substr($kept, 0, -1), '}', "client _ingest $name");
    is($ingest->{site_id}, 1, "client _ingest $name: only the server's _ingest survives");
    is(() = $el =~ /"_ingest":\{"site_id"/g, 1, "client _ingest $name: one _ingest");
}

{
    my ($el) = post($batch, name => 'leading zeros', site => '007');
    like($el, qr/"_ingest":\{"site_id":7,/, 'site id 007 is the integer 7 in _ingest');
    my ($el10) = post($batch, name => 'ten digits', site => '9999999999', shard => 3);
    like($el10, qr/"_ingest":\{"site_id":9999999999,/, 'a ten-digit site id beyond 2^32 stays exact');
}

{
    # Shards: bucket % 4, with bucket = CRC-32("<site>:<session>").
    my ($el) = post('{"session_id":"s1","seq":5,"events":[{"type":2,"timestamp":7}]}', name => 'shard 1', shard => 1);
    like($el, qr/^\{"session_id":"s1"/, 'session s1 of site 1 goes to recording:queue:1');
}

stop_nginx();
