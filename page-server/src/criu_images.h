// What the lazy restore needs from CRIU's other images: which memory of a process CRIU may
// restore lazily (mm-<pid>.img), and where each thread's stack is (core-<tid>.img), whose page
// CRIU always restores eagerly. Both are read from untrusted bytes (a checkpoint on disk).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "elsa/status.h"

namespace elsa::page_server {

// [start, end) address ranges, ascending.
using LazyRanges = std::vector<std::pair<uint64_t, uint64_t>>;

// The VMAs of an mm image that CRIU's vma_entry_can_be_lazy() accepts: anonymous private
// memory that is not locked, huge-page, vdso, vvar or vsyscall. `what` names the image in errors.
Result<LazyRanges> LazyRangesFromMm(std::span<const uint8_t> bytes, const std::string& what);

// The stack pointer of each thread in a core image (x86-64: core_entry.thread_info.gpregs.sp).
Result<std::vector<uint64_t>> StackPointersFromCore(std::span<const uint8_t> bytes, const std::string& what);

}  // namespace elsa::page_server
