# One list of source files feeds both builds: src/sources.txt names every
# .cpp and .h of the module, and neither CMake nor nginx's `config` names a
# source file of its own.
use strict;
use warnings;

use Test::More;

sub slurp { open my $f, '<', $_[0] or die "$_[0]: $!"; local $/; return <$f> }

my %listed;
for (split /\n/, slurp('src/sources.txt')) {
    next if /^\s*(#|$)/;
    my ($part, $path) = /^(core|glue|header) (\S+)$/ or do { fail("src/sources.txt: cannot read \"$_\""); next };
    ok(-f $path, "listed $path exists");
    $listed{$path} = $part;
}
for my $file (glob('src/core/*.cpp'), glob('src/*.cpp')) {
    ok($listed{$file}, "$file is in src/sources.txt");
}
for my $file (glob('src/*.h')) {
    is($listed{$file} // 'missing', 'header', "$file is in src/sources.txt as a header");
}
ok(!(grep { m{^src/core/} && $listed{$_} ne 'core' } keys %listed), 'src/core/ holds only core files');
for my $build ('CMakeLists.txt', 'cmake/nginx.cmake', 'config') {
    unlike(slurp($build), qr{src/\S+\.cpp}, "$build names no source file (it reads src/sources.txt)");
}
done_testing();
