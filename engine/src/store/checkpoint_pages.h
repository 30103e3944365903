// The agent's page store and what it does with it: takes in a dump's pages (our receiver
// between `criu dump` and the store), gives them back for a restore (materialized images, or a
// lazy server feeding `criu lazy-pages`), and reclaims pages no checkpoint names any more.
//
// Collection must never run while pages are in the store that no committed checkpoint names yet
// (a checkpoint between its dump and its commit, an incoming migration's pre-copied pages) or
// while a restore reads them: each holds a PagesPin for as long as that lasts, and Collect
// waits until none is held, then lists the checkpoints that are live, under its gate.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/unique_fd.h"
#include "elsa/engine/checkpoint_store.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/page_server/lazy_server.h"
#include "elsa/page_server/page_store.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/receiver.h"
#include "elsa/status.h"

namespace elsa {

// Pins and collections of one page store: any number of pins at once (a thread may hold
// several), or one collection, never both. A collection waits for the pins to go; a pin taken
// while one runs waits for it to end. (Not a shared_mutex: one thread often holds two pins.)
class CollectGate {
 public:
  class Pin {
   public:
    Pin() = default;
    Pin(Pin&& other) noexcept : gate_(other.gate_) { other.gate_ = nullptr; }
    Pin& operator=(Pin&& other) noexcept {
      if (this != &other) {
        Release();
        gate_ = other.gate_;
        other.gate_ = nullptr;
      }
      return *this;
    }
    ~Pin() { Release(); }
    void Release() {
      if (gate_) gate_->Unpin();
      gate_ = nullptr;
    }

   private:
    friend class CollectGate;
    explicit Pin(CollectGate* gate) : gate_(gate) {}
    CollectGate* gate_ = nullptr;
  };

  Pin Hold() {
    std::unique_lock lock(mu_);
    changed_.wait(lock, [&] { return !collecting_; });
    ++pins_;
    return Pin(this);
  }
  // Runs `collect` with no pin held and none taken meanwhile.
  template <typename Fn>
  auto Exclusively(Fn&& collect) {
    {
      std::unique_lock lock(mu_);
      changed_.wait(lock, [&] { return !collecting_ && pins_ == 0; });
      collecting_ = true;
    }
    struct Done {
      CollectGate* gate;
      ~Done() {
        std::lock_guard lock(gate->mu_);
        gate->collecting_ = false;
        gate->changed_.notify_all();
      }
    } done{this};
    return collect();
  }

 private:
  void Unpin() {
    std::lock_guard lock(mu_);
    if (--pins_ == 0) changed_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable changed_;
  uint64_t pins_ = 0;
  bool collecting_ = false;
};
using PagesPin = CollectGate::Pin;

// A dump's pages arriving: start before `criu dump`, give CRIU DumpRequest(), Finish after. CRIU
// is handed its end of a private connection to our receiver: no other process can reach it.
class PageIntake {
 public:
  PageIntake() = default;  // made by CheckpointPages::StartIntake
  ~PageIntake();
  // A dump of `pid` into `dir_fd` with its pages sent to this intake.
  CriuDumpRequest DumpRequest(pid_t pid, int dir_fd) const {
    CriuDumpRequest request;
    request.pid = pid;
    request.images_dir_fd = request.work_dir_fd = dir_fd;
    request.page_server_fd = criu_end_.get();
    return request;
  }
  // The receiver's account once CRIU is done; if the dump failed, the receiver is stopped.
  Result<page_server::ReceiverStats> Finish(bool dump_succeeded);

 private:
  friend class CheckpointPages;
  PagesPin hold_;
  std::unique_ptr<page_server::PageReceiver> receiver_;
  std::future<Result<page_server::ReceiverStats>> serving_;
  UniqueFd criu_end_;
};

// Pages for a lazy restore: our lazy server plus `criu lazy-pages` in `staging`, which must
// already hold the lazy images. Runs until every lazy page has been delivered.
class LazyPageSupply {
 public:
  LazyPageSupply() = default;  // made by CheckpointPages::StartLazySupply
  ~LazyPageSupply();
  // Waits until `criu lazy-pages` has fetched every page and exited.
  Result<page_server::LazyServeStats> Wait();

 private:
  friend class CheckpointPages;
  PagesPin hold_;
  std::shared_ptr<page_server::LazyPageSource> source_;  // when the server does not own it
  std::unique_ptr<page_server::LazyPageServer> server_;
  std::future<Result<page_server::LazyServeStats>> serving_;
  ChildProcess daemon_;
  std::string staging_;
};

class CheckpointPages {
 public:
  static Result<std::unique_ptr<CheckpointPages>> Open(const std::string& dir, Logger log = Logger());

  // A dump's pages arriving through our receiver into the store (or into `sink`, e.g. on to
  // another host; refs files are written either way).
  Result<std::unique_ptr<PageIntake>> StartIntake(const std::string& checkpoint_dir,
                                                  page_server::PageSink* sink = nullptr);
  // Stores pages that arrived otherwise (a migration's pre-copy). Returns how many were new.
  Result<size_t> Put(const uint8_t* pages, size_t count);
  // The same, with each page's hash into `hashes` (post-copy records where each page went).
  Result<size_t> Put(const uint8_t* pages, size_t count, page_server::PageHash* hashes);
  bool Contains(const page_server::PageHash& hash) const { return store_->Contains(hash); }
  Status Get(const page_server::PageHash* hashes, size_t count, uint8_t* out) const {
    return store_->GetBatch(hashes, count, out);
  }

  // Makes every page taken in so far durable (before a checkpoint is committed).
  Status Sync();

  // Every page a store-backed checkpoint names is in the store (its refs files are checked by
  // the manifest; this checks what they point to); with `read_every_page`, each is also read
  // back and checked against its hash.
  Status VerifyPages(const std::string& checkpoint_dir, bool read_every_page) const;

  // Writes the images CRIU restores from into `staging` (see page_server::MaterializeImages).
  Result<page_server::MaterializeStats> Materialize(const std::string& checkpoint_dir, const std::string& staging,
                                                    bool lazy) const;

  // Our lazy server plus `criu lazy-pages` in `staging`, which must hold the lazy images.
  Result<std::unique_ptr<LazyPageSupply>> StartLazySupply(const CriuDriver& criu, const std::string& checkpoint_dir,
                                                      const std::string& staging);
  // The same, answering from `source` (post-copy), which the supply keeps until it is done.
  Result<std::unique_ptr<LazyPageSupply>> StartLazySupply(const CriuDriver& criu,
                                                      std::shared_ptr<page_server::LazyPageSource> source,
                                                      const std::string& staging);

  // Holds collection off: pages put into the store meanwhile are kept until it is released,
  // by which time a committed checkpoint names them (or nothing does, and they may go).
  PagesPin Pin() const { return gate_.Hold(); }

  // Drops every page none of the checkpoints `live` lists names, once no pin is held; `live` is
  // asked then, so a checkpoint committed while collection waited is counted. Refuses (deleting
  // nothing) if any of them cannot be read: a page it names might otherwise be lost.
  using LiveCheckpoints = std::function<Result<std::vector<std::string>>()>;
  Result<CollectReport> Collect(const LiveCheckpoints& live);

  page_server::PageStoreStats Stats() const { return store_->Stats(); }

  explicit CheckpointPages(std::unique_ptr<page_server::PageStore> store) : store_(std::move(store)) {}

 private:
  Result<CollectReport> CollectExclusively(const LiveCheckpoints& live);
  Result<std::unique_ptr<LazyPageSupply>> StartSupply(const CriuDriver& criu,
                                                      std::unique_ptr<page_server::LazyPageServer> server,
                                                      UniqueFd criu_end, const std::string& staging);

  std::unique_ptr<page_server::PageStore> store_;
  mutable CollectGate gate_;
};

}  // namespace elsa
