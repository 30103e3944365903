// The destination's side of post-copy (PostcopyPages). The source's side is postcopy_pusher.cc.
#include <algorithm>
#include <filesystem>

#include "store/checkpoint_pages.h"
#include "elsa/file_util.h"
#include "elsa/page_server/protocol.h"
#include "migrate/postcopy.h"

namespace elsa {
namespace {

using page_server::PageHash;

enum PageState : uint8_t { kMissing = 0, kWanted = 1, kArrived = 2 };

}  // namespace

PostcopyPages::PostcopyPages(LazyPlan plan, CheckpointPages& store, WantFn want, std::chrono::milliseconds patience)
    : plan_(std::move(plan)), store_(store), want_(std::move(want)), patience_(patience) {
  hashes_.resize(plan_.pages());
  state_.assign(plan_.pages(), kMissing);
}

Status PostcopyPages::Place(uint64_t address, uint64_t* index) const {
  const auto task = static_cast<uint32_t>(address >> kTaskShift);
  const uint64_t vaddr = address & (kUserSpaceEnd - 1);
  auto place = plan_.Locate(task, vaddr);
  if (!place)
    return Status::ProtocolError("the source sent a page (task " + std::to_string(task) + ", 0x" + HexU64(vaddr) +
                                 ") that is not a lazy page of this session");
  *index = place->index;
  return Status::Ok();
}

Status PostcopyPages::TakePages(const transport::PageBatch& batch) {
  if (batch.empty()) return Status::Ok();
  std::vector<uint64_t> indexes(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) ELSA_RETURN_IF_ERROR(Place(batch.address(i), &indexes[i]));
  // Pages of one batch are consecutive in its buffer: one store write for all of them.
  std::vector<PageHash> hashes(batch.size());
  ELSA_RETURN_IF_ERROR(store_.Put(batch.page(0), batch.size(), hashes.data()).status());
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < batch.size(); ++i) {
    if (state_[indexes[i]] != kArrived) arrived_count_++;
    hashes_[indexes[i]] = hashes[i];
    state_[indexes[i]] = kArrived;
  }
  arrived_.notify_all();
  return Status::Ok();
}

Status PostcopyPages::TakeRefs(std::span<const peer::PageRef> refs) {
  std::vector<uint64_t> indexes(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) ELSA_RETURN_IF_ERROR(Place(refs[i].address, &indexes[i]));
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < refs.size(); ++i) {
    if (state_[indexes[i]] != kArrived) arrived_count_++;
    // The page's bytes may still be on another stream: reads wait until the store has them.
    hashes_[indexes[i]] = PageHash{refs[i].hash_low, refs[i].hash_high};
    state_[indexes[i]] = kArrived;
  }
  arrived_.notify_all();
  return Status::Ok();
}

size_t PostcopyPages::ReadyLocked(uint64_t index, size_t n) const {
  size_t ready = 0;
  while (ready < n && state_[index + ready] == kArrived && store_.Contains(hashes_[index + ready])) ready++;
  return ready;
}

Result<size_t> PostcopyPages::Read(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) {
  Result<size_t> read = ReadOrGiveUp(pid, vaddr, max_pages, out);
  if (!read.ok()) {
    std::function<void()> give_up;
    {
      std::lock_guard lock(mu_);
      give_up = std::move(give_up_);
      give_up_ = nullptr;
    }
    if (give_up) give_up();
  }
  return read;
}

void PostcopyPages::SetGiveUp(std::function<void()> give_up) {
  std::lock_guard lock(mu_);
  give_up_ = std::move(give_up);
}

Result<size_t> PostcopyPages::ReadOrGiveUp(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) {
  auto task = plan_.TaskOf(pid);
  auto place = task ? plan_.Locate(*task, vaddr) : std::nullopt;
  if (!place)
    return Status::ProtocolError("GET for pid " + std::to_string(pid) + " address 0x" + HexU64(vaddr) +
                                 ": not a lazy page of this session");
  const size_t n = static_cast<size_t>(std::min<uint64_t>(max_pages, place->left));
  const auto deadline = std::chrono::steady_clock::now() + patience_;
  std::vector<PageHash> hashes;
  {
    std::unique_lock lock(mu_);
    size_t ready = ReadyLocked(place->index, n);
    if (ready == 0) faults_++;
    while (ready == 0) {
      if (!failed_.ok()) return failed_;
      if (state_[place->index] == kMissing) {
        // Ask for the whole stretch that has not arrived: the session will likely touch it next.
        size_t span = 0;
        const size_t most = std::min<size_t>(n, peer::kMaxWantPages);  // the source answers no more
        while (span < most && state_[place->index + span] == kMissing) state_[place->index + span++] = kWanted;
        wants_++;
        lock.unlock();
        Status asked = want_(*task, vaddr, span);
        lock.lock();
        if (!asked.ok()) return asked.WithContext("asking the source for a page");
      }
      if (arrived_.wait_until(lock, deadline) == std::cv_status::timeout && ReadyLocked(place->index, n) == 0)
        return Status::Timeout("page 0x" + HexU64(vaddr) + " of pid " + std::to_string(pid) +
                               " did not arrive from the source within " +
                               std::to_string(patience_.count() / 1000.0).substr(0, 4) + " s");
      ready = ReadyLocked(place->index, n);
    }
    hashes.assign(hashes_.begin() + static_cast<ptrdiff_t>(place->index),
                  hashes_.begin() + static_cast<ptrdiff_t>(place->index + ready));
  }
  ELSA_RETURN_IF_ERROR(store_.Get(hashes.data(), hashes.size(), out));
  return hashes.size();
}

Status PostcopyPages::CheckComplete() const {
  std::lock_guard lock(mu_);
  if (arrived_count_ != plan_.pages())
    return Status::Corruption("the source pushed " + std::to_string(arrived_count_) + " of " +
                              std::to_string(plan_.pages()) + " lazy pages");
  uint64_t absent = 0;
  for (const PageHash& h : hashes_) absent += store_.Contains(h) ? 0 : 1;
  if (absent)
    return Status::Corruption(std::to_string(absent) + " pages the source named by hash are not in the page store");
  return Status::Ok();
}

void PostcopyPages::Fail(const Status& why) {
  std::lock_guard lock(mu_);
  if (failed_.ok()) failed_ = why;
  arrived_.notify_all();
}

uint64_t PostcopyPages::faults() const {
  std::lock_guard lock(mu_);
  return faults_;
}

uint64_t PostcopyPages::wants() const {
  std::lock_guard lock(mu_);
  return wants_;
}

}  // namespace elsa
