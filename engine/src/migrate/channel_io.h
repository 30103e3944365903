// The pieces of a migration that are not the agent's bookkeeping: which pages the destination
// holds, forwarding a dump's pages to it, shipping and receiving image files, and handing a
// stopped tree back to its processes when a migration fails.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_set>
#include <variant>

#include "elsa/page_server/page_store.h"
#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "elsa/unique_fd.h"
#include "migrate/protocol.h"

namespace elsa {

// Hashes of the pages the destination holds (or has been sent: the channel delivers in order).
class KnownPages {
 public:
  // True if `hash` was not known before (the caller now owes the destination that page).
  bool Claim(const page_server::PageHash& hash);
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_set<page_server::PageHash, page_server::PageStore::HashOf> known_;
};

// A page sink that sends the destination each page it does not hold yet, as page batches on
// `channel`; pages it holds cost a hash. Counts what it sent.
class ForwardingSink : public page_server::PageSink {
 public:
  ForwardingSink(transport::Channel& channel, KnownPages& known) : channel_(channel), known_(known) {}
  Result<size_t> PutBatch(const uint8_t* pages, size_t count, page_server::PageHash* hashes) override;

 private:
  transport::Channel& channel_;
  KnownPages& known_;
};

// Sends every regular file of `dir` as file chunks. Returns the bytes sent.
Result<uint64_t> SendDirectoryFiles(transport::Channel& channel, const std::string& dir);

// Writes arriving file chunks into a directory: each file in order, no holes, no rewrites.
class FileReceiver {
 public:
  explicit FileReceiver(std::string dir) : dir_(std::move(dir)) {}
  Status Take(const peer::FileChunk& chunk);
  // Every file was completed (its last chunk arrived).
  Status CheckComplete() const;
  uint64_t bytes() const { return bytes_; }

 private:
  struct Open {
    UniqueFd fd;
    uint64_t size = 0;
  };
  std::string dir_;
  std::map<std::string, Open> open_;
  std::unordered_set<std::string> done_;
  uint64_t bytes_ = 0;
};

// The next control message (file chunks and pages are protocol errors here), or the peer's
// "error" turned into a Status carrying its message.
Result<peer::Control> ReceiveControl(transport::Channel& channel, std::chrono::milliseconds timeout);

// Reads a channel on a thread of its own, so messages flow while the caller is busy elsewhere
// (restoring, pushing): page batches and page refs go to the handlers as they arrive (on that
// thread); control messages wait in order for NextControl, unless `intercept` takes them.
class PeerReader {
 public:
  struct Handlers {
    std::function<Status(const transport::PageBatch&)> pages;          // none: pages are an error
    std::function<Status(std::span<const peer::PageRef>)> refs;        // none: refs are an error
    std::function<bool(const peer::Control&)> intercept;               // true: handled
  };
  PeerReader(transport::Channel& channel, Handlers handlers);
  ~PeerReader();
  PeerReader(const PeerReader&) = delete;
  PeerReader& operator=(const PeerReader&) = delete;

  // The next control message; the peer's "error" as ExternalFailure; the channel's or a
  // handler's failure once the messages before it were taken; Timeout once no message of any
  // kind has arrived for `idle` (pages flowing are progress too).
  Result<peer::Control> NextControl(std::chrono::milliseconds idle);

 private:
  void Read();
  Status Dispatch(transport::Message message);

  transport::Channel& channel_;
  Handlers handlers_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<peer::Control> controls_;
  Status failed_ = Status::Ok();
  bool stop_ = false;
  std::chrono::steady_clock::time_point last_message_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

// Lets a tree CRIU left stopped and network-locked (dump with leave_stopped) run again: takes
// its TCP connections out of repair mode, drops CRIU's nftables table, SIGCONTs every process.
Status ResumeStoppedTree(pid_t root, const std::string& network_lock_table);

}  // namespace elsa
