#include "migrate/lazy_plan.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>

#include "elsa/file_util.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/protocol.h"

namespace elsa {
uint64_t PostcopyAddress(uint32_t task, uint64_t vaddr) { return (static_cast<uint64_t>(task) << kTaskShift) | vaddr; }

Result<LazyPlan> LazyPlan::FromImages(const std::string& images_dir, uint64_t max_pages) {
  std::map<uint64_t, std::vector<page_server::PagemapEntry>> lazy_by_pid;
  uint64_t in_images = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(images_dir, ec)) {
    const std::string name = entry.path().filename();
    uint64_t pid = 0;
    // Processes' pagemaps only ("pagemap-<pid>.img"); shared memory is never lazy.
    if (name.rfind("pagemap-", 0) != 0 || name.rfind("pagemap-shmem-", 0) == 0) continue;
    if (std::sscanf(name.c_str(), "pagemap-%lu.img", &pid) != 1 || name != "pagemap-" + std::to_string(pid) + ".img")
      continue;
    ELSA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(entry.path()));
    ELSA_ASSIGN_OR_RETURN(page_server::PagemapImage image,
                          page_server::DecodePagemapImage({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()})
                              .WithContext(name));
    for (const auto& e : image.entries) {
      if (e.flags & page_server::kPeLazy)
        lazy_by_pid[pid].push_back(e);
      else if (e.flags & page_server::kPePresent)
        in_images += e.nr_pages;
    }
  }
  if (ec) return Status::IoError("list " + images_dir + ": " + ec.message());

  LazyPlan plan;
  plan.pages_in_images_ = in_images;
  for (auto& [pid, entries] : lazy_by_pid) {
    const auto task = static_cast<uint32_t>(plan.pids_.size());
    plan.pids_.push_back(pid);
    plan.task_first_run_.push_back(plan.runs_.size());
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.vaddr < b.vaddr; });
    uint64_t end = 0;
    for (const auto& e : entries) {
      if (e.nr_pages == 0 || e.vaddr % page_server::kPageSize != 0 || e.vaddr < end || e.vaddr >= kUserSpaceEnd ||
          e.nr_pages > (kUserSpaceEnd - e.vaddr) / page_server::kPageSize)
        return Status::Corruption("pagemap-" + std::to_string(pid) + ".img: lazy pages at 0x" + HexU64(e.vaddr) +
                                  " overlap, are unaligned, or lie outside user space");
      end = e.vaddr + e.nr_pages * page_server::kPageSize;
      plan.runs_.push_back({task, e.vaddr, e.nr_pages, plan.pages_});
      plan.pages_ += e.nr_pages;
      if (plan.pages_ > max_pages)
        return Status::Corruption("the images' lazy pages exceed " + std::to_string(max_pages) +
                                  " pages, more than this host could hold");
    }
  }
  if (plan.pids_.size() >= (1u << (64 - kTaskShift))) return Status::Corruption("too many processes for post-copy");
  plan.task_first_run_.push_back(plan.runs_.size());
  return plan;
}

std::optional<uint32_t> LazyPlan::TaskOf(uint64_t pid) const {
  auto it = std::lower_bound(pids_.begin(), pids_.end(), pid);
  if (it == pids_.end() || *it != pid) return std::nullopt;
  return static_cast<uint32_t>(it - pids_.begin());
}

std::optional<LazyPlan::Place> LazyPlan::Locate(uint32_t task, uint64_t vaddr) const {
  if (task >= pids_.size()) return std::nullopt;
  auto first = runs_.begin() + static_cast<ptrdiff_t>(task_first_run_[task]);
  auto last = runs_.begin() + static_cast<ptrdiff_t>(task_first_run_[task + 1]);
  // The last run starting at or below vaddr.
  auto it = std::upper_bound(first, last, vaddr, [](uint64_t v, const Run& r) { return v < r.vaddr; });
  if (it == first) return std::nullopt;
  --it;
  const uint64_t offset = (vaddr - it->vaddr) / page_server::kPageSize;
  if (vaddr % page_server::kPageSize != 0 || offset >= it->pages) return std::nullopt;
  return Place{it->first + offset, it->pages - offset};
}

}  // namespace elsa
