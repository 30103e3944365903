// The lazy role: `criu lazy-pages --page-server --address A --port P` asks for the pages a
// lazily restored tree faults on (PS_IOV_GET, pipelined, replies matched strictly in order),
// then for everything else in the background, and we answer from a PageStore. This is what
// post-copy restore runs on.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/page_store.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa::page_server {

struct LazyServeStats {
  uint64_t requests = 0;      // GETs answered
  uint64_t pages_served = 0;
  double seconds = 0;         // from accept to CLOSE
  // Per GET, from its header read to its reply written, microseconds.
  double latency_p50_us = 0;
  double latency_p99_us = 0;
};

// Where a lazy server's pages come from: a checkpoint's pages in a store, or (post-copy) pages
// still on their way from another host.
class LazyPageSource {
 public:
  virtual ~LazyPageSource() = default;
  // Reads up to `max_pages` consecutive pages of process `pid` from `vaddr` into `out`
  // (max_pages * 4096 bytes); returns how many, at least one. An error if `vaddr` is not a page
  // this source has for `pid`, or if it cannot be had (the reason says why).
  virtual Result<size_t> Read(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) = 0;
};

// A checkpoint's pages: `locator` says which, `store` (which must outlive this) has them.
class StorePageSource : public LazyPageSource {
 public:
  StorePageSource(PageLocator locator, const PageStore* store) : locator_(std::move(locator)), store_(store) {}
  Result<size_t> Read(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) override;

 private:
  PageLocator locator_;
  const PageStore* store_;
};

class LazyPageServer {
 public:
  // Answers for the pages `locator` knows, reading them from `store` (which must outlive this).
  static Result<std::unique_ptr<LazyPageServer>> Listen(const std::string& address, uint16_t port,
                                                        PageLocator locator, const PageStore* store);
  // Answers from `source`, which must outlive this.
  static Result<std::unique_ptr<LazyPageServer>> Listen(const std::string& address, uint16_t port,
                                                        LazyPageSource* source);
  // Serve the one connection given, whose other end is `criu lazy-pages`' (see loopback.h):
  // nobody else can read pages from this server.
  static std::unique_ptr<LazyPageServer> OnConnection(UniqueFd connection, PageLocator locator, const PageStore* store);
  static std::unique_ptr<LazyPageServer> OnConnection(UniqueFd connection, LazyPageSource* source);
  uint16_t port() const { return port_; }  // 0 on a given connection

  // Ends a ServeOne in progress on another thread (the restore failed: nothing faults any more).
  void Hangup();

  // Serves one lazy-pages connection until its CLOSE. A GET for a page we do not hold, or
  // anything else the protocol does not allow here, ends that connection with the reason.
  Result<LazyServeStats> ServeOne(std::chrono::milliseconds accept_timeout,
                                  std::chrono::milliseconds idle_timeout = std::chrono::minutes(5));

  LazyPageServer(UniqueFd listen_fd, uint16_t port, UniqueFd connection, LazyPageSource* source,
                 std::unique_ptr<LazyPageSource> owned);

 private:
  UniqueFd listen_fd_;
  uint16_t port_;
  UniqueFd connection_;
  std::unique_ptr<LazyPageSource> owned_;
  LazyPageSource* source_;
};

// The other end of a lazy dump (`criu dump --lazy-pages` serving on the socket it was handed):
// says CLOSE on our end, `connection`, without asking for any page, so CRIU finishes the dump
// and leaves the tree as asked (stopped, for a migration that reads its memory from the tree
// itself).
Status CloseLazyDump(int connection, std::chrono::milliseconds timeout);

}  // namespace elsa::page_server
