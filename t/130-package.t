# The Debian package, checked without installing it (scripts/package-check
# installs it on a fresh machine): scripts/package builds it with the
# repository's debian/ (dh --with nginx) and lintian finds no error; the
# working tree stays as it was; the control fields name the nginx ABI it
# was built against and the libraries it links; it ships the module, its
# load file and the documents; its maintainer scripts enable it through
# modules-enabled and disable it on removal; and the packaged .so loads
# into the stock nginx.
use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);

plan(skip_all => 'needs dpkg-buildpackage (scripts/install-deps package)')
    unless -x '/usr/bin/dpkg-buildpackage' && -x '/usr/bin/dh_nginx';

my $PKG = 'libnginx-mod-http-recording';
my $in_git = system('git rev-parse --is-inside-work-tree >/dev/null 2>&1') == 0;
sub tree_state { return $in_git ? scalar `git status --porcelain --ignored=no 2>&1` : '' }

sub slurp {
    my ($path) = @_;
    open my $f, '<', $path or return '';
    local $/;
    return <$f>;
}

# --- build -----------------------------------------------------------------
my $before = tree_state();
my $out = `scripts/package 2>&1`;
is($?, 0, 'scripts/package: built') or diag($out);
is(tree_state(), $before, 'the working tree is as it was (git status)');

my ($version) = `dpkg-parsechangelog -S Version` =~ /(\S+)/;
my ($arch) = `dpkg --print-architecture` =~ /(\S+)/;
my $deb = "build/deb/${PKG}_${version}_${arch}.deb";
ok(-f $deb, "$deb is there") or BAIL_OUT("no package to check");
my ($cmake_version) = slurp('CMakeLists.txt') =~ /project\(\S+ VERSION (\S+)/;
like($version, qr/^\Q$cmake_version\E(?:-|$)/, "the package's version ($version) is the project's ($cmake_version)");
my $lintian = slurp('build/deb/lintian.txt');
unlike($lintian, qr/^E: /m, 'lintian: no error') or diag($lintian);

# --- control fields ----------------------------------------------------------
my %field;
for my $name (qw(Package Version Architecture Depends Section)) {
    ($field{$name}) = `dpkg-deb -f $deb $name` =~ /^(.*?)\s*$/s;
}
is($field{Package}, $PKG, 'Package');
is($field{Version}, $version, 'Version');
is($field{Architecture}, $arch, 'Architecture');
is($field{Section}, 'httpd', 'Section');
my ($abi) = slurp('/usr/share/nginx/src/debian/libnginx-mod.abisubstvars') =~ /^nginx:abi=(\S+)/m;
ok($abi, "nginx-dev names the ABI ($abi)");
my @depends = split /\s*,\s*/, $field{Depends} // '';
ok((grep { $_ eq $abi } @depends), "Depends on $abi, the nginx it was built against") or diag($field{Depends});
# The libraries the module links, as ${shlibs:Depends} gives them.
for my $lib (qw(libhiredis0.14 libsimdjson libdeflate0 zlib1g libstdc\+\+6 libc6)) {
    ok((grep { /^$lib\S* \(>= / } @depends), "Depends on $lib (from the shared libraries it links)")
        or diag($field{Depends});
}

# --- contents ----------------------------------------------------------------
my %files = map { m{\s\./(\S+)$} ? ("/$1" => 1) : () } `dpkg-deb -c $deb`;
my $doc = "/usr/share/doc/$PKG";
for my $path ('/usr/lib/nginx/modules/ngx_http_recording_module.so',
              '/usr/share/nginx/modules-available/mod-http-recording.conf',
              "$doc/README.md.gz", "$doc/copyright", "$doc/changelog.gz",
              "$doc/examples/nginx.conf.example", "$doc/examples/storage-worker") {
    ok($files{$path}, "ships $path");
}
ok(!(grep { m{^/etc/} } keys %files), 'ships nothing under /etc (the modules-enabled link is made on install)');

my $dir = tempdir(CLEANUP => 1);
system('dpkg-deb', '-x', $deb, "$dir/root") == 0 or BAIL_OUT('dpkg-deb -x failed');
system('dpkg-deb', '-e', $deb, "$dir/control") == 0 or BAIL_OUT('dpkg-deb -e failed');
is(slurp("$dir/root/usr/share/nginx/modules-available/mod-http-recording.conf"),
   "load_module modules/ngx_http_recording_module.so;\n", 'the load file loads the module');
like(slurp("$dir/root$doc/copyright"), qr/Redistribution and use in source and binary forms/,
     'the copyright file carries the license');

# --- maintainer scripts (dh_nginx) ------------------------------------------
my $postinst = slurp("$dir/control/postinst");
my $prerm = slurp("$dir/control/prerm");
my $postrm = slurp("$dir/control/postrm");
like($postinst, qr/for confpair in mod-http-recording\.conf:50-mod-http-recording\.conf/,
     'postinst: the load file, at priority 50');
like($postinst, qr{ln -sf /usr/share/nginx/modules-available/\$from\s*\\\s*/etc/nginx/modules-enabled/\$to},
     'postinst: links it into modules-enabled');
like($postinst, qr/dpkg-trigger --no-await nginx-reload/, 'postinst: nginx is reloaded');
like($prerm, qr{"\$1" = "remove".*mv /etc/nginx/modules-enabled/\$to /etc/nginx/modules-enabled/\$to\.removed}s,
     'prerm: on removal the link is set aside (no longer *.conf, so nginx no longer loads it)');
like($postrm, qr{"\$1" = "purge".*rm /etc/nginx/modules-enabled/\$to}s, 'postrm: purge removes it');

# --- the packaged module loads into the stock nginx -------------------------
my $so = "$dir/root/usr/lib/nginx/modules/ngx_http_recording_module.so";
mkdir "$dir/prefix";
open my $c, '>', "$dir/prefix/nginx.conf" or die $!;
print $c <<"CONF";
load_module $so;
error_log $dir/prefix/error.log;
pid $dir/prefix/nginx.pid;
events {}
http {
    server {
        listen 127.0.0.1:1;
        location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
        }
    }
}
CONF
close $c;
my $t = `/usr/sbin/nginx -t -p $dir/prefix -c nginx.conf -e $dir/prefix/error.log 2>&1`;
is($?, 0, 'the packaged module loads into /usr/sbin/nginx, and nginx -t takes a recording location') or diag($t);

done_testing();
