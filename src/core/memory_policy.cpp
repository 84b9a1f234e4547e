#include "memory_policy.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace recording {

bool keep_freed_memory() noexcept
{
#if defined(__GLIBC__)
    // Setting either threshold also ends glibc's own adjustment of them.
    return mallopt(M_MMAP_THRESHOLD, static_cast<int>(kLargestHeapBlock)) == 1
           && mallopt(M_TRIM_THRESHOLD, static_cast<int>(kKeptFreeBytes)) == 1;
#else
    return false;
#endif
}

}  // namespace recording
