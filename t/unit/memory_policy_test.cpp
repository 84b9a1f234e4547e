// The worker's allocator policy, checked by counting page faults (not by
// timing): with it, one snapshot after another reuses the pages of the one
// before.
#include "memory_policy.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "batch_validator.h"
#include "body_decoder.h"
#include "enrichment.h"
#include "redis_protocol.h"

namespace {

long minor_faults()
{
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
}

// A valid batch of about `size` bytes.
std::string big_batch(size_t size)
{
    std::string doc = R"({"session_id":"s","seq":0,"events":[{"type":3,"timestamp":1700000000000,"data":{"t":")";
    doc.append(size, 'x');
    doc += R"("}}]})";
    return doc;
}

// A batch's way through the core, as a worker takes it: decoded into a
// buffer of its own, validated, and encoded into its RPUSH.
size_t one_batch(const std::string &doc)
{
    recording::BodyDecoder decoder(recording::ContentEncoding::identity, 2 << 20);
    decoder.expect_input(doc.size());
    decoder.feed(doc.data(), doc.size());
    decoder.finish();
    recording::ValidatedBatch batch = recording::validate_batch(decoder.decoded(), recording::ValidationLimits{});
    recording::QueueElement element(decoder.decoded(), batch, R"("_ingest":{})");
    return recording::format_rpush("recording:queue:0", element).size();
}

// In a child process, so that neither the policy nor glibc's own
// adjustment of its thresholds carries over from other tests: the faults of
// `rounds` batches (with the policy first when `keep`).
long faults_in_child(bool keep, const std::string &doc, int rounds)
{
    int fds[2];
    if (pipe(fds) != 0) {
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (keep && !recording::keep_freed_memory()) {
            _exit(1);
        }
        size_t sink = one_batch(doc);  // the heap grows once
        long before = minor_faults();
        for (int i = 0; i < rounds; i++) {
            sink += one_batch(doc);
        }
        long faults = minor_faults() - before + static_cast<long>(sink == 0);
        ssize_t n = write(fds[1], &faults, sizeof(faults));
        _exit(n == sizeof(faults) ? 0 : 1);
    }
    close(fds[1]);
    long faults = -1;
    if (read(fds[0], &faults, sizeof(faults)) != sizeof(faults)) {
        faults = -1;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return faults;
}

TEST(MemoryPolicy, OneSnapshotAfterAnotherReusesItsPages)
{
    const std::string doc = big_batch(721 * 1024);
    constexpr int kRounds = 20;
    const long pages = static_cast<long>(doc.size() / 4096);

    // Valgrind replaces the allocator (and its page faults are its own).
    const char *preload = std::getenv("LD_PRELOAD");
    if ((preload != nullptr && std::strstr(preload, "vgpreload") != nullptr) || !recording::keep_freed_memory()) {
        GTEST_SKIP() << "the allocator is not glibc's here";
    }
    long with = faults_in_child(true, doc, kRounds);
    ASSERT_GE(with, 0) << "the policy could not be applied";
    // Kept: fewer than one document's pages in all 20 rounds. (glibc's
    // defaults may do as well on this simple pattern; the worker's pattern,
    // where they fault ~580 pages per snapshot, is t/180-page-faults.t.)
    EXPECT_LT(with, pages);
}

}  // namespace
