// How a worker's allocator (glibc's malloc) keeps the memory of large blocks
// it frees. By default a block above 128 KB (a snapshot's decoded document,
// its RPUSH) is mmap'd and unmapped again, and a freed top of the heap
// beyond twice the last such size is handed back: the next snapshot then
// touches fresh pages, one page fault per 4 KB, which on a virtual machine
// cost more than inflating and validating the snapshot (BENCHMARKS.md,
// "Page faults"). Kept, the memory is reused from one batch to the next;
// the price is that a worker's RSS stays near its peak, less what is above
// kKeptFreeBytes.
#pragma once

#include <cstddef>

namespace recording {

// Blocks up to this size come from the heap (glibc's largest threshold).
constexpr size_t kLargestHeapBlock = 32u << 20;
// The free top of the heap is handed back to the system beyond this.
constexpr size_t kKeptFreeBytes = 64u << 20;

// Applies the two to this process (a worker, at its start). False where
// the allocator is not glibc's, or it refused.
bool keep_freed_memory() noexcept;

}  // namespace recording
