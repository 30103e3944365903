// A lazy dump's pagemaps arrive from the source during a post-copy migration: the destination
// derives its LazyPlan from them. Any bytes must give a plan or an error, never a crash, and a
// plan is bounded and self-consistent: within user space, within the page bound the destination
// sets, every run found again by Locate. With its first byte odd, the input is split into two
// processes' pagemaps.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "migrate/lazy_plan.h"

namespace {

constexpr uint64_t kMaxPages = 1u << 20;

void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  ::close(fd);
}

// One scratch directory per fuzzing process, removed when it exits.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    char tmpl[] = "/tmp/elsa-fuzz-lazy-plan-XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ScratchDir scratch;
  std::error_code ignored;
  std::filesystem::remove(scratch.path + "/pagemap-2.img", ignored);
  if (size > 1 && (data[0] & 1)) {
    const size_t half = 1 + (size - 1) / 2;
    WriteFile(scratch.path + "/pagemap-1.img", data + 1, half - 1);
    WriteFile(scratch.path + "/pagemap-2.img", data + half, size - half);
  } else {
    WriteFile(scratch.path + "/pagemap-1.img", data, size);
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
