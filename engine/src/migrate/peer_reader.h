// Reading the other agent's messages: the next control message on the caller's thread, or a
// reader thread that keeps pages and refs flowing while the caller is busy elsewhere.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "migrate/protocol.h"

namespace elsa {

// The next control message (file chunks and pages are protocol errors here), or the peer's
// "error" turned into a Status carrying its message.
Result<peer::Control> ReceiveControl(transport::Channel& channel, std::chrono::milliseconds timeout);

// Reads a channel on a thread of its own, so messages flow while the caller is busy elsewhere
// (restoring, pushing): page batches and page refs go to the handlers as they arrive (on that
// thread); control messages wait in order for NextControl, unless `intercept` takes them (which
// wakes a caller of NextControlOrIntercepted: that caller has work to do).
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
  // The same, but also returns (nullopt) as soon as `intercept` has taken a message.
  Result<std::optional<peer::Control>> NextControlOrIntercepted(std::chrono::milliseconds idle);

 private:
  Result<std::optional<peer::Control>> Wait(std::chrono::milliseconds idle, bool wake_on_intercept);
  void Read();
  Status Dispatch(transport::Message message);
  Status DispatchCaught(transport::Message message);

  transport::Channel& channel_;
  Handlers handlers_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<peer::Control> controls_;
  Status failed_ = Status::Ok();
  bool stop_ = false;
  bool intercepted_ = false;  // since the last NextControlOrIntercepted
  std::chrono::steady_clock::time_point last_message_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

}  // namespace elsa
