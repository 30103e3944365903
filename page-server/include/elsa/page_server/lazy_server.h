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

class LazyPageServer {
 public:
  // Answers for the pages `locator` knows, reading them from `store` (which must outlive this).
  static Result<std::unique_ptr<LazyPageServer>> Listen(const std::string& address, uint16_t port,
                                                        PageLocator locator, const PageStore* store);
  uint16_t port() const { return port_; }

  // Serves one lazy-pages connection until its CLOSE. A GET for a page we do not hold, or
  // anything else the protocol does not allow here, ends that connection with the reason.
  Result<LazyServeStats> ServeOne(std::chrono::milliseconds accept_timeout,
                                  std::chrono::milliseconds idle_timeout = std::chrono::minutes(5));

  LazyPageServer(UniqueFd listen_fd, uint16_t port, PageLocator locator, const PageStore* store);

 private:
  UniqueFd listen_fd_;
  uint16_t port_;
  PageLocator locator_;
  const PageStore* store_;
};

}  // namespace elsa::page_server
