// What a store-backed checkpoint on disk holds besides pagemaps, all untrusted when read back:
// refs files, the mm and core images the lazy restore reads VMAs and stack pointers from, and
// CRIU's stats-dump.
// Decoding must never crash; refs that decode must survive a round trip.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "criu_images.h"
#include "elsa/page_server/criu_stats.h"
#include "elsa/page_server/paged_images.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::page_server;
  std::span<const uint8_t> bytes(data, size);
  auto refs = DecodeRefs(bytes);
  if (refs.ok()) {
    auto again = EncodeRefs(*refs);
    if (again.size() != size || std::memcmp(again.data(), data, size) != 0) __builtin_trap();
  }
  auto ranges = LazyRangesFromMm(bytes, "mm.img");
  if (ranges.ok())
    for (const auto& [start, end] : *ranges)
      if (start >= end) __builtin_trap();
  (void)StackPointersFromCore(bytes, "core.img");
  (void)ParseCriuDumpStats(bytes);
  return 0;
}
