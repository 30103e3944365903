#include "criu_images.h"

#include <sys/mman.h>

#include <algorithm>

#include "protobuf_wire.h"

namespace elsa::page_server {
namespace {

constexpr uint32_t kMmMagic = 0x57492820;
constexpr uint32_t kCoreMagic = 0x55053847;
// VmaEntry.status bits (criu/include/image.h) of mappings CRIU never restores lazily.
constexpr uint64_t kVmaAreaVsyscall = 1u << 2, kVmaAreaVdso = 1u << 3, kVmaAreaVvar = 1u << 12;

// The bytes of the last length-delimited field `number` of `msg` (empty if none).
std::span<const uint8_t> Submessage(std::span<const uint8_t> msg, uint64_t number) {
  std::span<const uint8_t> found;
  wire::ForEachField(msg, [&](const wire::Field& f) {
    if (f.number == number && f.wire_type == 2) found = f.bytes;
  });
  return found;
}

}  // namespace

Result<LazyRanges> LazyRangesFromMm(std::span<const uint8_t> bytes, const std::string& what) {
  ELSA_ASSIGN_OR_RETURN(auto records, wire::ImageRecords(bytes, kMmMagic, what));
  if (records.size() != 1) return Status::Corruption(what + " should hold one mm_entry");
  LazyRanges ranges;
  bool vmas_ok = true;
  const bool mm_ok = wire::ForEachField(records[0], [&](const wire::Field& f) {
    if (f.number != 14 || f.wire_type != 2) return;  // mm_entry.vmas
    uint64_t start = 0, end = 0, flags = 0, status = 0;
    vmas_ok &= wire::ForEachField(f.bytes, [&](const wire::Field& v) {
      if (v.wire_type != 0) return;
      if (v.number == 1) start = v.varint;
      if (v.number == 2) end = v.varint;
      if (v.number == 6) flags = v.varint;
      if (v.number == 7) status = v.varint;
    });
    const bool lazy = (flags & MAP_ANONYMOUS) && (flags & MAP_PRIVATE) && !(flags & MAP_LOCKED) &&
                      !(flags & MAP_HUGETLB) && !(status & (kVmaAreaVsyscall | kVmaAreaVdso | kVmaAreaVvar));
    if (lazy && start < end) ranges.emplace_back(start, end);
  });
  if (!mm_ok || !vmas_ok) return Status::Corruption(what + ": malformed mm_entry");
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

Result<std::vector<uint64_t>> StackPointersFromCore(std::span<const uint8_t> bytes, const std::string& what) {
  ELSA_ASSIGN_OR_RETURN(auto records, wire::ImageRecords(bytes, kCoreMagic, what));
  std::vector<uint64_t> sps;
  for (const auto& core : records) {
    const auto gpregs = Submessage(Submessage(core, 2), 2);  // thread_info, gpregs
    if (!wire::ForEachField(gpregs, [&](const wire::Field& f) {
          if (f.number == 20 && f.wire_type == 0) sps.push_back(f.varint);  // sp
        }))
      return Status::Corruption(what + ": malformed registers");
  }
  return sps;
}

}  // namespace elsa::page_server
