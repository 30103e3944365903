// Reads the memory of a running process tree for pre-copy: the present pages of every private
// writable mapping of every process, in large batches with process_vm_readv, without stopping
// anything. What changed since the last round is found by hashing (these kernels have no
// soft-dirty): a page whose hash the destination already holds is not sent again.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "elsa/status.h"

namespace elsa {

struct MemoryRange {
  uint64_t start = 0;
  uint64_t end = 0;
};

// The private, writable, non-special mappings in /proc/PID/maps text: where a process's own data
// lives (heap, anonymous memory, writable parts of files). Shared mappings and [vvar]/[vsyscall]
// are left to the dump.
std::vector<MemoryRange> PrivateWritableRanges(const std::string& maps_text);

// Every pid of the tree rooted at `root` (the root first), from /proc/PID/task/*/children.
std::vector<pid_t> TreePids(pid_t root);

// Host pid of each process of the tree, by its pid in the tree's own PID namespace (the pids
// CRIU's images name), from the last field of "NSpid:" in /proc/PID/status.
std::map<uint64_t, pid_t> HostPidsByVirtualPid(pid_t root);

// The tree's memory footprint: the sum of its processes' proportional set sizes (shared pages
// split between their sharers), from /proc/PID/smaps_rollup.
uint64_t TreeResidentBytes(pid_t root);

struct TreeScanStats {
  uint64_t pages_present = 0;  // pages read
  uint64_t bytes_read = 0;
  double seconds = 0;
};

// Calls `consume(pages, count)` with batches of up to `batch_pages` present pages of the tree
// (4 KiB each, contiguous in the buffer). Processes or mappings that vanish mid-read are
// skipped: the tree is running. Stops at the first error `consume` returns.
Result<TreeScanStats> ScanTreeMemory(pid_t root, size_t batch_pages,
                                     const std::function<Status(const uint8_t* pages, size_t count)>& consume);

}  // namespace elsa
