// A lazy dump's pagemaps arrive from the source during a post-copy migration: the destination
// derives its LazyPlan from them. Any bytes must give a plan or an error, never a crash, and a
// plan is bounded and self-consistent: within user space, within the page bound the destination
// sets, every run found again by Locate. With its first byte odd, the input is split into two
// processes' pagemaps.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_scratch.h"
#include "migrate/lazy_plan.h"

namespace {

constexpr uint64_t kMaxPages = 1u << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static elsa::fuzz::ScratchDir scratch("lazy-plan");
  std::error_code ignored;
  std::filesystem::remove(scratch.path + "/pagemap-2.img", ignored);
  if (size > 1 && (data[0] & 1)) {
    const size_t half = 1 + (size - 1) / 2;
    elsa::fuzz::WriteFileOrDie(scratch.path + "/pagemap-1.img", data + 1, half - 1);
    elsa::fuzz::WriteFileOrDie(scratch.path + "/pagemap-2.img", data + half, size - half);
  } else {
    elsa::fuzz::WriteFileOrDie(scratch.path + "/pagemap-1.img", data, size);
  }
  auto plan = elsa::LazyPlan::FromImages(scratch.path, kMaxPages);
  if (!plan.ok()) return 0;
  if (plan->pages() > kMaxPages) __builtin_trap();
  uint64_t total = 0;
  for (const auto& run : plan->runs()) {
    if (run.pages == 0 || run.vaddr % 4096 != 0 || run.vaddr >= elsa::kUserSpaceEnd ||
        run.pages > (elsa::kUserSpaceEnd - run.vaddr) / 4096)
      __builtin_trap();
    auto place = plan->Locate(run.task, run.vaddr);
    if (!place || place->index != run.first || place->left != run.pages) __builtin_trap();
    total += run.pages;
  }
  if (total != plan->pages()) __builtin_trap();
  return 0;
}
