// The receiving role: `criu dump --page-server --address A --port P` sends a tree's memory here,
// and we write pagemap and pages images that `criu restore` accepts, into a directory of the
// caller's choosing: a drop-in for `criu page-server`. Given a PageStore, pages go into the store
// instead and each pages image becomes a refs file (see paged_images.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "elsa/page_server/page_store.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa::page_server {

struct ReceiverStats {
  uint64_t requests = 0;
  uint64_t pagemaps = 0;        // images opened (one per process or shmem segment)
  uint64_t pages_present = 0;   // pages whose bytes arrived
  uint64_t pages_lazy = 0;      // pages marked for lazy restore (bytes not sent)
  uint64_t pages_in_parent = 0;
  uint64_t pages_new = 0;       // with a store: pages it did not hold before
  double seconds = 0;           // from accept until the images are durable
  double sync_seconds = 0;      // of which after CLOSE, making them durable (CRIU is done by then)
};

class PageReceiver {
 public:
  // Listens on address:port (port 0: any; see port()) and writes into `images_dir`. Page bytes
  // go to `sink` when one is given (it must outlive the receiver), and each pagemap gets a refs
  // file naming its pages by hash instead of a pages image.
  static Result<std::unique_ptr<PageReceiver>> Listen(const std::string& address, uint16_t port,
                                                      const std::string& images_dir, PageSink* sink = nullptr);
  // Serves the one connection given, whose other end is CRIU's (see loopback.h): nobody else can
  // reach this receiver.
  static Result<std::unique_ptr<PageReceiver>> OnConnection(UniqueFd connection, const std::string& images_dir,
                                                            PageSink* sink = nullptr);
  uint16_t port() const { return port_; }  // 0 on a given connection

  // Ends a ServeOne in progress on another thread (CRIU failed before it said CLOSE).
  void Hangup();

  // Serves one connection to its CLOSE, as `criu page-server` does. A connection that breaks
  // the protocol is ended with the reason; the next call serves the next connection.
  Result<ReceiverStats> ServeOne(std::chrono::milliseconds accept_timeout,
                                 std::chrono::milliseconds idle_timeout = std::chrono::minutes(5));

  PageReceiver(UniqueFd listen_fd, uint16_t port, UniqueFd connection, UniqueFd images_dir, PageSink* sink);

 private:
  UniqueFd listen_fd_;
  uint16_t port_;
  UniqueFd connection_;
  UniqueFd dir_;
  uint32_t next_pages_id_;
  PageSink* sink_;
};

}  // namespace elsa::page_server
