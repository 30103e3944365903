// Post-copy: the session runs on the destination before its memory is there. The source dumps
// with CRIU's --lazy-pages (anonymous private memory stays in its stopped tree), the destination
// restores with --lazy-pages, and the pages follow: pushed by the source in the background
// (bytes the destination lacks, a hash for those it already holds from pre-copy), and fetched
// first when the destination's session faults on them. peer_protocol.h has the messages.
//
// What it cannot survive: once the destination runs the session, its memory is split between
// the two hosts until every page is delivered. The source's stopped tree is kept until then, so
// a destination or link failure still resumes the session on the source (losing what it did on
// the destination meanwhile), but the source host dying in that window loses the session.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "elsa/page_server/lazy_server.h"
#include "elsa/page_server/page_store.h"
#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "migrate/lazy_plan.h"
#include "migrate/protocol.h"

namespace elsa {

class CheckpointPages;
class KnownPages;
class PeerReader;

struct PushStats {
  uint64_t pages_sent = 0;        // bytes pushed: the destination lacked them
  uint64_t pages_referenced = 0;  // hash only: it held them already
  uint64_t pages_faulted = 0;     // sent first because the running session waited on them
  uint64_t wants = 0;
  double seconds = 0;             // until the destination had every page
};

using PushProgressFn = std::function<void(uint64_t pages_done, uint64_t pages_total)>;

// The source's half. Made right after asking the destination to restore: the session may fault
// there before its restore is even reported. Reads the stopped tree whose processes `host_pids`
// maps (images' pid -> pid here); `known` holds the hashes the destination has.
class PostcopyPusher {
 public:
  PostcopyPusher(transport::Channel& channel, const LazyPlan& plan, std::map<uint64_t, pid_t> host_pids,
                 KnownPages& known);
  ~PostcopyPusher();

  // The destination's next control message (`restored`); its wants are answered meanwhile.
  Result<peer::Control> AwaitControl(std::chrono::milliseconds timeout);
  // Pushes every page (bytes the destination lacks, a ref for the others), answering wants
  // first, then says `pushed` and waits for `delivered`. Fails if the destination reports an
  // error, goes silent for `patience`, or the channel breaks.
  Result<PushStats> Push(std::chrono::milliseconds patience, const PushProgressFn& progress);

 private:
  struct Want {
    uint32_t task = 0;
    uint64_t vaddr = 0;
    uint64_t pages = 0;
  };
  Status ServeWants();
  // Sends `count` pages of `run` from `offset` not sent yet; `faulted`: all as bytes, first.
  Status Send(const LazyPlan::Run& run, uint64_t offset, uint64_t count, bool faulted);

  transport::Channel& channel_;
  const LazyPlan& plan_;
  const std::map<uint64_t, pid_t> host_pids_;
  KnownPages& known_;
  std::vector<bool> sent_;
  std::vector<uint8_t> buffer_;
  int push_stream_ = 0;
  PushStats stats_;
  std::mutex wants_mu_;
  std::deque<Want> wants_;
  std::unique_ptr<PeerReader> reader_;  // last: its thread uses the members above
};

// The destination's half: what its lazy page server answers from. Pages arrive (TakePages,
// TakeRefs) from the channel; a read of one that has not arrived asks the source for it (`want`)
// and waits, up to `patience`, or until Fail.
class PostcopyPages : public page_server::LazyPageSource {
 public:
  using WantFn = std::function<Status(uint32_t task, uint64_t vaddr, uint64_t pages)>;
  PostcopyPages(LazyPlan plan, CheckpointPages& store, WantFn want, std::chrono::milliseconds patience);

  Result<size_t> Read(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) override;

  Status TakePages(const transport::PageBatch& batch);     // into the store
  Status TakeRefs(std::span<const peer::PageRef> refs);    // pages the store already has
  // Every page arrived and is in the store; otherwise Corruption saying how many did not.
  Status CheckComplete() const;
  // Wakes every waiting read with `why`: its page will not come.
  void Fail(const Status& why);
  // Called once, before the first read fails (to stop the session that needed the page).
  void SetGiveUp(std::function<void()> give_up);

  const LazyPlan& plan() const { return plan_; }
  uint64_t faults() const;  // reads that had to wait for a page
  uint64_t wants() const;

 private:
  // Consecutive pages from `index` that arrived and are in the store (at most `n`).
  size_t ReadyLocked(uint64_t index, size_t n) const;
  Result<size_t> ReadOrGiveUp(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out);
  Status Place(uint64_t address, uint64_t* index) const;

  const LazyPlan plan_;
  CheckpointPages& store_;
  const WantFn want_;
  const std::chrono::milliseconds patience_;
  mutable std::mutex mu_;
  std::condition_variable arrived_;
  std::vector<page_server::PageHash> hashes_;
  std::vector<uint8_t> state_;  // per page: kMissing, kWanted or kArrived
  uint64_t arrived_count_ = 0;
  uint64_t faults_ = 0;
  uint64_t wants_ = 0;
  Status failed_ = Status::Ok();
  std::function<void()> give_up_;
};

}  // namespace elsa
