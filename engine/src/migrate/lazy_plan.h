// The pages a lazy dump left out of its images, as both agents see them: numbered the same on
// each side from the same images, so a page is named on the wire by its task and address.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "elsa/status.h"

namespace elsa {

// A post-copy page's address on the wire: the process (its task index) above the 48 bits of
// x86-64 user space, the page's virtual address below.
inline constexpr int kTaskShift = 48;
inline constexpr uint64_t kUserSpaceEnd = 1ull << kTaskShift;
uint64_t PostcopyAddress(uint32_t task, uint64_t vaddr);

// The pages a lazy dump left out (PE_LAZY in its process pagemaps), numbered 0..pages()-1 in
// task order, then address order. Both agents derive the same plan from the same images.
class LazyPlan {
 public:
  struct Run {
    uint32_t task = 0;
    uint64_t vaddr = 0;
    uint64_t pages = 0;
    uint64_t first = 0;  // number of its first page
  };
  struct Place {
    uint64_t index = 0;  // the page's number
    uint64_t left = 0;   // pages from it to the end of its run, itself included
  };

  // Corruption if a pagemap cannot be read or its lazy runs overlap or lie outside user space.
  // More than `max_pages` lazy pages is Corruption too: the destination bounds a plan from the
  // network by what its memory could hold (each planned page costs it 17 bytes of bookkeeping).
  static Result<LazyPlan> FromImages(const std::string& images_dir, uint64_t max_pages = UINT64_MAX);

  const std::vector<uint64_t>& pids() const { return pids_; }  // by task: pids in the images
  const std::vector<Run>& runs() const { return runs_; }
  uint64_t pages() const { return pages_; }
  // Pages the dump wrote into the images instead (stacks, vDSO, any mapping CRIU will not serve
  // lazily): they cross during the downtime.
  uint64_t pages_in_images() const { return pages_in_images_; }
  std::optional<uint32_t> TaskOf(uint64_t pid) const;
  std::optional<Place> Locate(uint32_t task, uint64_t vaddr) const;

 private:
  std::vector<uint64_t> pids_;
  std::vector<Run> runs_;  // by task, then vaddr
  std::vector<size_t> task_first_run_;  // per task, index of its first run; one past the end last
  uint64_t pages_ = 0;
  uint64_t pages_in_images_ = 0;
};

}  // namespace elsa
