# The module beside the legacy Lua layer (../shared/legacy-lua), both on one
# Redis: the same answers, the same sampling decisions and the same queue
# keys for the same requests, so both can serve one fleet during migration.
use lib 't/lib';
use Test::Nginx::Recording;
use Cwd ();
use File::Basename ();
use JSON::PP ();
use IO::Socket::INET;

my $repo = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/..');
my $legacy_dir = $ENV{RECORDING_LEGACY_DIR} // "$repo/../shared/legacy-lua";
plan(skip_all => "no legacy layer at $legacy_dir") unless -x "$legacy_dir/run";
plan(skip_all => 'the legacy layer needs libnginx-mod-http-lua')
    unless -e '/usr/lib/nginx/modules/ngx_http_lua_module.so';
plan('no_plan');

# recording_max_depth 1000: the legacy layer's limit (the default is 128).
start_nginx(config => <<'CONF');
    location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings$" {
        recording_ingest;
        recording_site_id $site_id;
        recording_queue_shards 4;
        recording_country $http_cloudfront_viewer_country;
        recording_max_depth 1000;
    }
CONF

my $legacy_port = do {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0) or die $!;
    my $p = $s->sockport;
    close $s;
    $p;
};
chomp(my $legacy_prefix = `"$legacy_dir/run" $legacy_port ${\ redis_port()}`);
die "the legacy layer did not start\n" unless $? == 0 && -d $legacy_prefix;
END {
    if ($legacy_prefix && open my $fh, '<', "$legacy_prefix/nginx.pid") {
        chomp(my $pid = <$fh>);
        kill 'QUIT', $pid if $pid;
    }
}
for (1 .. 50) {
    last if IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $legacy_port);
    select undef, undef, undef, 0.1;
}

sub queue_lengths { join ',', map { redis_cmd('LLEN', "recording:queue:$_") } 0 .. 3 }

# Sends one request to an implementation; returns its status, body and the
# queue it pushed to, if any.
sub ask {
    my ($port, %req) = @_;
    my $before = queue_lengths();
    my $res = http_request(%req, port => $port);
    my $after = queue_lengths();
    my @b = split /,/, $before;
    my @a = split /,/, $after;
    my ($queue) = grep { $a[$_] != $b[$_] } 0 .. 3;
    return ($res, $queue // '-');
}

my $json = JSON::PP->new->canonical;
sub same_answer {
    my ($name, %req) = @_;
    $req{method} //= 'POST';
    my ($old, $old_queue) = ask($legacy_port, %req);
    my ($new, $new_queue) = ask(server_port(), %req);
    my $old_body = eval { $json->encode($json->decode($old->{body})) } // $old->{body};
    my $new_body = eval { $json->encode($json->decode($new->{body})) } // $new->{body};
    my $same = $old->{status} == $new->{status} && $old_body eq $new_body && $old_queue eq $new_queue;
    ok($same, "$name: same answer") or diag("legacy: $old->{status} $old_body queue $old_queue; "
                                          . "module: $new->{status} $new_body queue $new_queue");
    return ($old, $new);
}

sub batch { qq({"session_id":"$_[0]","seq":0,"events":[{"type":3,"timestamp":1}]}) }

my @sites = (
    [101, [enabled => 1, sample_rate => '0.5']],
    [102, [enabled => 1, sample_rate => '0.123456789012345678']],
    [103, [enabled => 1, sample_rate => ' 0.25 ']],
    [104, [enabled => 1, sample_rate => '0x1']],
    [105, [enabled => 1, sample_rate => 'abc']],
    [106, [enabled => 1, sample_rate => '1e-1']],
    [107, [enabled => 1, sample_rate => '-3']],
    [108, [enabled => 1]],
    [109, [enabled => 0, sample_rate => 1]],
    [110, [enabled => 'yes']],
    [111, [name => 'shop']],
    [112, []],
);
for my $s (@sites) {
    my ($site, $fields) = @$s;
    redis_cmd('HSET', "recording:site:$site", @$fields) if @$fields;
}

my $disagree = 0;
for my $s (@sites) {
    my $site = $s->[0];
    for my $i (1 .. 25) {
        my ($old, $new) = same_answer("site $site session p$i",
            uri => "/v1/sites/$site/recordings", body => batch("p$i"));
    }
}

my $uri = '/v1/sites/101/recordings';
same_answer('GET', method => 'GET', uri => $uri);
same_answer('bad session_id', uri => $uri, body => '{"session_id":"a.b","seq":0,"events":[{"type":3,"timestamp":1}]}');
same_answer('session_id too long', uri => $uri, body => batch('x' x 65));
same_answer('fractional seq', uri => $uri, body => '{"session_id":"abc","seq":1.5,"events":[{"type":3,"timestamp":1}]}');
same_answer('whole seq as 2.0', uri => $uri, body => '{"session_id":"p1","seq":2.0,"events":[{"type":3,"timestamp":1}]}');
same_answer('event type 7', uri => $uri, body => '{"session_id":"abc","seq":0,"events":[{"type":7,"timestamp":1}]}');
same_answer('no events', uri => $uri, body => '{"session_id":"abc","seq":0,"events":[]}');
same_answer('timestamp not a number', uri => $uri, body => '{"session_id":"abc","seq":0,"events":[{"type":1,"timestamp":"1"}]}');
same_answer('not JSON', uri => $uri, body => '{"session_id":');
same_answer('br', uri => $uri, body => batch('p1'), headers => ['Content-Encoding' => 'br']);
same_answer('garbage as gzip', uri => $uri, body => 'xyz', headers => ['Content-Encoding' => 'gzip']);
same_answer('gzip', uri => $uri, body => gzip_bytes(batch('p2')), headers => ['Content-Encoding' => 'gzip']);
same_answer('deflate', uri => $uri, body => deflate_bytes(batch('p3')), headers => ['Content-Encoding' => 'deflate']);

# Nesting: with recording_max_depth 1000, both accept 1000 levels
# (lua-cjson's limit) and refuse 1001.
sub nested_batch {
    my ($levels) = @_;   # the batch object is level 1, events 2, the event 3
    my $inner = '[' x ($levels - 3) . ']' x ($levels - 3);
    return qq({"session_id":"p4","seq":0,"events":[{"type":3,"timestamp":1,"data":$inner}]});
}
my (undef, $deep) = same_answer('1000 levels', uri => '/v1/sites/108/recordings', body => nested_batch(1000));
is($deep->{status}, 202, '1000 levels: queued');
(undef, $deep) = same_answer('1001 levels', uri => '/v1/sites/108/recordings', body => nested_batch(1001));
is($deep->{status}, 400, '1001 levels: invalid_json');

# The preflight and CORS headers.
my ($old, $new) = same_answer('OPTIONS', method => 'OPTIONS', uri => $uri, headers => [Origin => 'https://a.example']);
for my $h (qw(access-control-allow-origin access-control-allow-credentials vary access-control-allow-methods
              access-control-allow-headers access-control-max-age)) {
    is($new->{headers}{$h}, $old->{headers}{$h}, "OPTIONS: $h as the legacy layer");
}

# What lands in Redis means the same (the legacy layer re-encodes it).
redis_cmd('DEL', map { "recording:queue:$_" } 0 .. 3);
my @headers = ('User-Agent' => 'ua/2', 'CloudFront-Viewer-Country' => 'FR');
http_request(method => 'POST', uri => '/v1/sites/108/recordings', body => batch('same'), headers => \@headers,
             port => $legacy_port);
http_request(method => 'POST', uri => '/v1/sites/108/recordings', body => batch('same'), headers => \@headers);
my ($queue) = grep { redis_cmd('LLEN', "recording:queue:$_") == 2 } 0 .. 3;
ok(defined $queue, 'both pushed to the same queue');
my ($from_old, $from_new) = map { JSON::PP->new->decode($_) } @{ redis_cmd('LRANGE', "recording:queue:" . ($queue // 0), 0, -1) };
for my $f (qw(site_id ip user_agent country)) {
    is($from_new->{_ingest}{$f}, $from_old->{_ingest}{$f}, "_ingest.$f as the legacy layer");
}
ok(abs($from_new->{_ingest}{received_at} - $from_old->{_ingest}{received_at}) < 5000, '_ingest.received_at in the same unit');
delete $_->{_ingest} for $from_old, $from_new;
is_deeply($from_new, $from_old, 'the rest of the element holds the same data');

stop_nginx();
