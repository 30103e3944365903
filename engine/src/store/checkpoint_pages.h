// The agent's page store and what it does with it: takes in a dump's pages (our receiver
// between `criu dump` and the store), gives them back for a restore (materialized images, or a
// lazy server feeding `criu lazy-pages`), and reclaims pages no checkpoint names any more.
//
// Collection must never run while a dump is taking pages in or a lazy restore is reading them:
// both hold a shared lock for as long as they run; Collect takes it exclusively.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/engine/checkpoint_store.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/page_server/lazy_server.h"
#include "elsa/page_server/page_store.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/receiver.h"
#include "elsa/status.h"

namespace elsa {

// A dump's pages arriving: start before `criu dump`, pass CRIU address() and port(), Finish after.
class PageIntake {
 public:
  PageIntake() = default;  // made by CheckpointPages::StartIntake
  ~PageIntake();
  const std::string& address() const { return address_; }
  uint16_t port() const { return port_; }
  // A dump of `pid` into `dir_fd` with its pages sent to this intake.
  CriuDumpRequest DumpRequest(pid_t pid, int dir_fd) const {
    CriuDumpRequest request;
    request.pid = pid;
    request.images_dir_fd = request.work_dir_fd = dir_fd;
    request.page_server_address = address_;
    request.page_server_port = port_;
    return request;
  }
  // The receiver's account once CRIU is done; if the dump failed, the receiver is stopped.
  Result<page_server::ReceiverStats> Finish(bool dump_succeeded);

 private:
  friend class CheckpointPages;
  std::shared_lock<std::shared_mutex> hold_;
  std::unique_ptr<page_server::PageReceiver> receiver_;
  std::future<Result<page_server::ReceiverStats>> serving_;
  std::string address_ = "127.0.0.1";
  uint16_t port_ = 0;
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
  std::shared_lock<std::shared_mutex> hold_;
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

  // Drops every page none of `checkpoint_dirs` names. Refuses (deleting nothing) if any of them
  // cannot be read: a page it names might otherwise be lost.
  Result<CollectReport> Collect(const std::vector<std::string>& checkpoint_dirs);

  page_server::PageStoreStats Stats() const { return store_->Stats(); }

  explicit CheckpointPages(std::unique_ptr<page_server::PageStore> store) : store_(std::move(store)) {}

 private:
  Result<std::unique_ptr<LazyPageSupply>> StartSupply(const CriuDriver& criu,
                                                      std::unique_ptr<page_server::LazyPageServer> server,
                                                      const std::string& staging);

  std::unique_ptr<page_server::PageStore> store_;
  mutable std::shared_mutex collect_mu_;
};

}  // namespace elsa
