# valgrind_problems(): the check behind TEST_NGINX_USE_VALGRIND=1, on
# synthetic valgrind logs (no nginx, no valgrind needed).  It must blame the
# module for errors and definite leaks with a frame of the module, and let
# nginx's and the libraries' own ones pass.
use lib 't/lib';
use Test::Nginx::Recording;

# Builds a log of process $pid from records given as lists of lines.
sub vglog {
    my ($pid, @records) = @_;
    my $p = "==$pid==";
    my $text = "$p Memcheck, a memory error detector\n"
             . "$p Command: /usr/sbin/nginx -p /tmp/x/ -c conf/nginx.conf\n$p \n";
    for my $rec (@records) {
        $text .= join('', map { "$p $_\n" } @$rec) . "$p \n";
    }
    return $text . "$p ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)\n";
}

my @worker_tail = (
    '   by 0x171A0F: ngx_http_core_content_phase (in /usr/sbin/nginx)',
    '   by 0x16C31C: ngx_http_core_run_phases (in /usr/sbin/nginx)',
    '   by 0x150445: ngx_process_events_and_timers (in /usr/sbin/nginx)',
    '   by 0x15A8B8: ngx_master_process_cycle (in /usr/sbin/nginx)',
    '   by 0x12D3AD: main (in /usr/sbin/nginx)',
);

my $env_leak = [
    '8 bytes in 1 blocks are definitely lost in loss record 1 of 25',
    '   at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x154CFE: ngx_alloc (in /usr/sbin/nginx)',
    '   by 0x12E404: ngx_set_environment (in /usr/sbin/nginx)',
    '   by 0x1594F0: ??? (in /usr/sbin/nginx)',
    '   by 0x158212: ngx_spawn_process (in /usr/sbin/nginx)',
    '   by 0x15A8B8: ngx_master_process_cycle (in /usr/sbin/nginx)',
    '   by 0x12D3AD: main (in /usr/sbin/nginx)',
];
my $pcre_leak = [
    '72 bytes in 1 blocks are definitely lost in loss record 7 of 25',
    '   at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x154CFE: ngx_alloc (in /usr/sbin/nginx)',
    '   by 0x48AAC6E: ??? (in /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0.11.2)',
    '   by 0x48AAD30: pcre2_compile_context_create_8 (in /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0.11.2)',
    '   by 0x169922: ngx_regex_compile (in /usr/sbin/nginx)',
    '   by 0x14360D: ngx_conf_parse (in /usr/sbin/nginx)',
    '   by 0x140C2A: ngx_init_cycle (in /usr/sbin/nginx)',
    '   by 0x12D18D: main (in /usr/sbin/nginx)',
];
my $ssl_leak = [
    '24 bytes in 1 blocks are definitely lost in loss record 3 of 40',
    '   at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x4A1B2C3: CRYPTO_zalloc (in /usr/lib/x86_64-linux-gnu/libcrypto.so.3)',
    '   by 0x4A2C3D4: OPENSSL_init_crypto (in /usr/lib/x86_64-linux-gnu/libcrypto.so.3)',
    '   by 0x13F00A: ngx_ssl_init (in /usr/sbin/nginx)',
    '   by 0x12D18D: main (in /usr/sbin/nginx)',
];
my $nginx_only = vglog(101, $env_leak, $pcre_leak, $ssl_leak);
is_deeply([valgrind_problems($nginx_only)], [],
          'definite leaks wholly inside nginx, pcre2 and OpenSSL pass');

my $so_read = [
    'Invalid read of size 8',
    '   at 0x5475655: ??? (in /work/main/build/ngx_http_recording_module.so)',
    '   by 0x181B9F: ngx_http_read_client_request_body (in /usr/sbin/nginx)',
    @worker_tail,
    ' Address 0x51828d0 is 0 bytes after a block of size 64 alloc\'d',
    '   at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x13A0F1: ngx_palloc (in /usr/sbin/nginx)',
];
my @p = valgrind_problems(vglog(102, $env_leak, $so_read));
is(scalar @p, 1, 'an invalid read in ngx_http_recording_module.so is a problem');
like($p[0] // '', qr/\A==102== Invalid read of size 8\n.*recording_module\.so.*alloc'd/s,
     '... reported as the whole record, with its pid');

my $decoder_leak = [
    '528 bytes in 16 blocks are definitely lost in loss record 14 of 26',
    '   at 0x484320F: operator new[](unsigned long) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x5475649: recording::BodyDecoder::resize_output(unsigned long) [clone .part.0] (body_decoder.cpp:96)',
    '   by 0x5472C1F: ngx_http_recording_decode_body(ngx_http_request_s*, recording::BodyDecoder&) (ngx_http_recording_body.cpp:34)',
    '   by 0x181B9F: ngx_http_read_client_request_body (in /usr/sbin/nginx)',
    @worker_tail,
];
@p = valgrind_problems(vglog(103, $pcre_leak, $decoder_leak, $env_leak));
is(scalar @p, 1, 'a definite leak from operator new in recording::BodyDecoder is a problem');
like($p[0] // '', qr/528 bytes in 16 blocks are definitely lost/, '... that leak record');

# The same stack, but not definitely lost: not a problem.
for my $kind ('possibly lost', 'indirectly lost', 'still reachable') {
    my @rec = @$decoder_leak;
    $rec[0] =~ s/are definitely lost/are $kind/ or $rec[0] =~ s/definitely lost/$kind/;
    is_deeply([valgrind_problems(vglog(104, \@rec))], [], "a block from the module that is $kind passes");
}

my $direct_indirect = [
    '48 (16 direct, 32 indirect) bytes in 1 blocks are definitely lost in loss record 9 of 30',
    '   at 0x484320F: operator new(unsigned long) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x5471111: RedisClient::connect(unsigned long) (ngx_http_recording_redis.cpp:210)',
    '   by 0x5471222: ngx_http_recording_init_process(ngx_cycle_s*) (ngx_http_recording_module.cpp:400)',
    '   by 0x159B2C: ??? (in /usr/sbin/nginx)',
];
is(scalar(() = valgrind_problems(vglog(105, $direct_indirect))), 1,
   'a "(direct, indirect) ... definitely lost" record from RedisClient is a problem');

my $hiredis_uninit = [
    'Conditional jump or move depends on uninitialised value(s)',
    '   at 0x4E51234: ??? (in /usr/lib/x86_64-linux-gnu/libhiredis.so.0.14)',
    '   by 0x4E52345: redisAsyncHandleRead (in /usr/lib/x86_64-linux-gnu/libhiredis.so.0.14)',
    '   by 0x15C4AA: ??? (in /usr/sbin/nginx)',
    '   by 0x150445: ngx_process_events_and_timers (in /usr/sbin/nginx)',
];
is(scalar(() = valgrind_problems(vglog(106, $hiredis_uninit))), 1,
   'an uninitialised value in hiredis (only the module uses it) is a problem');

my $nginx_uninit = [
    'Syscall param epoll_ctl(event) points to uninitialised byte(s)',
    '   at 0x4F90A3E: epoll_ctl (syscall-template.S:120)',
    '   by 0x15BCC1: ??? (in /usr/sbin/nginx)',
    '   by 0x150445: ngx_process_events_and_timers (in /usr/sbin/nginx)',
    ' Address 0x1ffefffb44 is on thread 1\'s stack',
];
is_deeply([valgrind_problems(vglog(107, $nginx_uninit))], [],
          'a memcheck error wholly inside nginx and libc passes');

my $nginx_read_module_block = [
    'Invalid read of size 1',
    '   at 0x4852A12: memcpy@@GLIBC_2.14 (vg_replace_strmem.c:1035)',
    '   by 0x16A0B1: ngx_http_write_filter (in /usr/sbin/nginx)',
    ' Address 0x5a2c040 is 0 bytes inside a block of size 32 free\'d',
    '   at 0x4844B83: operator delete[](void*) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x5475700: recording::BodyDecoder::~BodyDecoder() (body_decoder.cpp:70)',
    ' Block was alloc\'d at',
    '   at 0x484320F: operator new[](unsigned long) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x5475625: recording::BodyDecoder::resize_output(unsigned long) (body_decoder.cpp:89)',
];
is(scalar(() = valgrind_problems(vglog(108, $nginx_read_module_block))), 1,
   'nginx reading a block the module freed is a problem (module frame in the free stack)');

my $mismatch = [
    'Mismatched free() / delete / delete []',
    '   at 0x4844B83: operator delete(void*) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)',
    '   by 0x5479999: (anonymous namespace)::PushCall::~PushCall() (ngx_http_recording_handler.cpp:300)',
];
is(scalar(() = valgrind_problems(vglog(109, $mismatch))), 1, 'a mismatched free in the module is a problem');

# A frame known only by a source file of the module (anonymous namespace,
# inlined): any file under src/ names the module.
my ($src) = map { m{([^/]+)\z} } sort glob('src/core/*.cpp'), glob('src/*.cpp');
my $by_file = [
    'Invalid write of size 4',
    "   at 0x5470001: (anonymous namespace)::helper(int) ($src:12)",
    '   by 0x15C4AA: ??? (in /usr/sbin/nginx)',
];
is(scalar(() = valgrind_problems(vglog(110, $by_file))), 1,
   "a frame in a module source file ($src) is the module's");

my $segv = [
    'Process terminating with default action of signal 11 (SIGSEGV)',
    ' Access not within mapped region at address 0x0',
    '   at 0x15C173: ??? (in /usr/sbin/nginx)',
    '   by 0x150445: ngx_process_events_and_timers (in /usr/sbin/nginx)',
    ' If you believe this happened as a result of a stack',
];
@p = valgrind_problems(vglog(111, $env_leak, $segv));
is(scalar @p, 1, 'a process killed by a signal is a problem, wherever it died');
like($p[0] // '', qr/default action of signal 11/, '... that record');

my $warning = [
    'Warning: noted but unhandled ioctl 0x5401 with no size/direction hints.',
    '   This could cause spurious value errors to appear.',
    '   at 0x4F8A0E3: ioctl (syscall-template.S:120)',
    '   by 0x5472C1F: ngx_http_recording_decode_body(ngx_http_request_s*) (ngx_http_recording_body.cpp:34)',
];
is_deeply([valgrind_problems(vglog(112, $warning))], [], 'valgrind warnings are not problems');

my $thread = ['Thread 2:', @$so_read];
@p = valgrind_problems(vglog(113, $thread));
is(scalar @p, 1, 'an error in another thread ("Thread 2:" line first) is a problem');

# Two processes' logs interleaved: records stay apart by pid.
my @a = split /(?<=\n)/, vglog(201, $decoder_leak);
my @b = split /(?<=\n)/, vglog(202, $env_leak);
my $mixed = '';
while (@a || @b) { $mixed .= shift(@a) // ''; $mixed .= shift(@b) // '' }
@p = valgrind_problems($mixed);
is(scalar @p, 1, 'interleaved logs: one problem');
ok(@p && $p[0] !~ /==202==/ && $p[0] =~ /==201==.*BodyDecoder/s, '... in the right process');

# Summaries, empty and foreign text.
my $summary = <<'LOG';
==300== HEAP SUMMARY:
==300==     in use at exit: 537,762 bytes in 42 blocks
==300==   total heap usage: 7,621 allocs, 7,579 frees, 1,562,012 bytes allocated
==300== 
==300== LEAK SUMMARY:
==300==    definitely lost: 80 bytes in 2 blocks
==300==    indirectly lost: 0 bytes in 0 blocks
==300== 
==300== ERROR SUMMARY: 2 errors from 2 contexts (suppressed: 0 from 0)
LOG
is_deeply([valgrind_problems($summary)], [], 'summaries are not problems');
is_deeply([valgrind_problems('')], [], 'an empty log has no problem');
is_deeply([valgrind_problems("recording::BodyDecoder ngx_http_recording_module.so\n")], [],
          'text outside valgrind records is ignored');

# A log cut short (process killed) still yields its complete records.
(my $cut = vglog(400, $decoder_leak)) =~ s/==400== \n==400== ERROR SUMMARY.*\z//s;
is(scalar(() = valgrind_problems($cut)), 1, 'a record at the end of a cut log counts');

Test::More::done_testing();
