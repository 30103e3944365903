// A Channel that forwards to another one and injects the faults a test asks for, in the manner of
// LevelDB's FaultInjectionTestEnv (an Env wrapper that drops what was not synced): the code under
// test sees an ordinary Channel, the test decides which message goes wrong and how.
//
//   FaultInjectionChannel faulty(*pair.client);
//   faulty.AddFault({.action = FaultAction::kDrop, .match = IsPages, .skip = 2});  // the 3rd batch
//   RunTheSender(faulty);
//   for (const FaultRecord& r : faulty.Log()) ...                                    // what went by
//
// Faults apply to what this end sends (Direction::kSend: the peer never sees the original) or to
// what it receives (kReceive: the code under test sees the faulted message). A real channel never
// drops or reorders silently and detects corruption on the wire by checksum (kCorruption breaks
// it): these faults are what the layers above must survive when a peer, not the wire, misbehaves.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "elsa/transport/transport.h"

namespace elsa::transport::testing {

enum class Direction { kSend, kReceive };

enum class FaultAction {
  kDrop,     // the message is lost; the channel goes on
  kCorrupt,  // one byte flipped: of a data message (at `corrupt_at`), of a batch's first page (or its address)
  kDelay,    // held for `delay`, then passed on
  kHold,     // a send blocks until Release() (a receive is not held)
  kClose,    // the channel is closed instead (Close, `close_timeout`); every later send fails
};

// A message as a fault rule sees it.
struct MessageView {
  Message::Kind kind = Message::Kind::kData;
  int stream = -1;                             // -1: a send on the next stream in turn
  const std::vector<uint8_t>* data = nullptr;  // kData
  const PageBatch* pages = nullptr;            // kPages
};

inline bool IsPages(const MessageView& m) { return m.kind == Message::Kind::kPages; }
inline bool IsData(const MessageView& m) { return m.kind == Message::Kind::kData; }

struct FaultRule {
  Direction direction = Direction::kSend;
  FaultAction action = FaultAction::kDrop;
  std::function<bool(const MessageView&)> match = {};  // none: every message
  int skip = 0;                                        // matching messages let through before the first one faulted
  int times = 1;                                       // matching messages faulted after those; -1: all of them
  static constexpr size_t kMiddle = std::numeric_limits<size_t>::max();
  size_t corrupt_at = kMiddle;                   // kCorrupt: the byte flipped (the middle one by default)
  bool corrupt_address = false;                  // kCorrupt of a page batch: flip its first address's top byte instead
  std::chrono::milliseconds delay{0};            // kDelay
  std::chrono::milliseconds close_timeout{200};  // kClose: how long Close waits for the peer's close
};

// One message that went by, faulted or not.
struct FaultRecord {
  Direction direction = Direction::kSend;
  Message::Kind kind = Message::Kind::kData;
  int stream = -1;
  std::vector<uint8_t> data;        // kData: as the peer (send) or the caller (receive) got it
  std::vector<uint64_t> addresses;  // kPages: every page's address, as passed on
  bool faulted = false;
  FaultAction action = FaultAction::kDrop;  // if faulted
  size_t receive_call = 0;                  // kReceive: which call of Receive (1, 2, ...) returned it
};

class FaultInjectionChannel final : public Channel {
 public:
  explicit FaultInjectionChannel(Channel& inner) : inner_(inner) {}
  ~FaultInjectionChannel() override { Release(); }

  void AddFault(FaultRule rule) {
    std::lock_guard lock(mu_);
    rules_.push_back({std::move(rule), 0, 0});
  }
  void ClearFaults() {
    std::lock_guard lock(mu_);
    rules_.clear();
  }
  // Lets every held send (and every later one a kHold rule matches) through.
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  // True once `n` sends have reached a kHold fault.
  bool WaitUntilHeld(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return held_ >= n; });
  }
  // True once the code under test has called Receive `n` times.
  bool WaitForReceiveCalls(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return receive_calls_ >= n; });
  }
  // True once `pred(Log())` holds.
  bool WaitForLog(const std::function<bool(const std::vector<FaultRecord>&)>& pred, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(log_); });
  }
  std::vector<FaultRecord> Log() const {
    std::lock_guard lock(mu_);
    return log_;
  }
  int faults_fired() const {
    std::lock_guard lock(mu_);
    return fired_;
  }
  size_t receive_calls() const {
    std::lock_guard lock(mu_);
    return receive_calls_;
  }

  int streams() const override { return inner_.streams(); }
  std::string peer_agent() const override { return inner_.peer_agent(); }

  Status Send(std::vector<uint8_t> data, int stream = -1) override {
    MessageView view{Message::Kind::kData, stream, &data, nullptr};
    const Fate fate = Decide(Direction::kSend, view);
    if (fate.closed) return Closed();
    if (fate.rule) Apply(*fate.rule, &data, nullptr);
    Record(Direction::kSend, view, fate);
    if (fate.rule && fate.rule->action == FaultAction::kDrop) return Status::Ok();
    if (fate.rule && fate.rule->action == FaultAction::kClose) return Closed();
    return inner_.Send(std::move(data), stream);
  }

  Status SendPages(PageBatch pages, int stream = -1) override {
    MessageView view{Message::Kind::kPages, stream, nullptr, &pages};
    const Fate fate = Decide(Direction::kSend, view);
    if (fate.closed) return Closed();
    if (fate.rule) Apply(*fate.rule, nullptr, &pages);
    Record(Direction::kSend, view, fate);
    if (fate.rule && fate.rule->action == FaultAction::kDrop) return Status::Ok();
    if (fate.rule && fate.rule->action == FaultAction::kClose) return Closed();
    return inner_.SendPages(std::move(pages), stream);
  }

  Result<Message> Receive(std::chrono::milliseconds timeout) override {
    size_t call;
    {
      std::lock_guard lock(mu_);
      call = ++receive_calls_;
      cv_.notify_all();
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      ELSA_ASSIGN_OR_RETURN(Message message, inner_.Receive(std::max(left, std::chrono::milliseconds(0))));
      MessageView view{message.kind, message.stream, &message.data, &message.pages};
      const Fate fate = Decide(Direction::kReceive, view);
      if (fate.rule) Apply(*fate.rule, &message.data, &message.pages);
      Record(Direction::kReceive, view, fate, call);
      if (fate.rule && fate.rule->action == FaultAction::kDrop) continue;
      if (fate.rule && fate.rule->action == FaultAction::kClose) return Closed();
      return message;
    }
  }

  Status Flush(std::chrono::milliseconds timeout) override { return inner_.Flush(timeout); }
  Status Close(std::chrono::milliseconds timeout) override {
    Release();
    return inner_.Close(timeout);
  }
  ChannelStats Stats() const override { return inner_.Stats(); }

 private:
  struct Rule {
    FaultRule fault;
    int seen = 0;
    int fired = 0;
  };
  struct Fate {
    std::optional<FaultRule> rule;  // the fault to apply (a copy: rules may change meanwhile)
    bool closed = false;            // a fault closed the channel before: sends fail
  };

  static Status Closed() { return Status::PeerClosed("the channel was closed by fault injection"); }

  // Which fault, if any, `view` meets (the first rule that fires; every matching rule counts it).
  Fate Decide(Direction direction, const MessageView& view) {
    std::lock_guard lock(mu_);
    Fate fate;
    if (direction == Direction::kSend && closed_) {
      fate.closed = true;
      return fate;
    }
    for (Rule& r : rules_) {
      if (r.fault.direction != direction || (r.fault.match && !r.fault.match(view))) continue;
      const int index = r.seen++;
      if (fate.rule || index < r.fault.skip || (r.fault.times >= 0 && r.fired >= r.fault.times)) continue;
      r.fired++;
      fired_++;
      fate.rule = r.fault;
    }
    return fate;
  }

  // Does to the message what `rule` says (whether it goes on is the caller's).
  void Apply(const FaultRule& rule, std::vector<uint8_t>* data, PageBatch* pages) {
    switch (rule.action) {
      case FaultAction::kDrop: return;
      case FaultAction::kDelay: std::this_thread::sleep_for(rule.delay); return;
      case FaultAction::kHold: {
        std::unique_lock lock(mu_);
        held_++;
        cv_.notify_all();
        cv_.wait(lock, [&] { return released_; });
        return;
      }
      case FaultAction::kClose: {
        {
          std::lock_guard lock(mu_);
          closed_ = true;
        }
        (void)inner_.Close(rule.close_timeout);
        return;
      }
      case FaultAction::kCorrupt: {
        if (pages && !pages->empty() && (!data || data->empty())) {
          if (rule.corrupt_address) {
            // A copy with the first page's address changed (a batch's addresses are not mutable).
            PageBatch changed(pages->size());
            for (size_t i = 0; i < pages->size(); ++i)
              changed.AddPage(i == 0 ? pages->address(0) ^ (0xffull << 56) : pages->address(i), pages->page(i));
            *pages = std::move(changed);
          } else {
            const size_t at = rule.corrupt_at == FaultRule::kMiddle ? kPageSize / 2 : rule.corrupt_at % kPageSize;
            pages->page(0)[at] ^= 0xff;
          }
        } else if (data && !data->empty()) {
          const size_t at = rule.corrupt_at == FaultRule::kMiddle ? data->size() / 2 : rule.corrupt_at % data->size();
          (*data)[at] ^= 0xff;
        }
        return;
      }
    }
  }

  void Record(Direction direction, const MessageView& view, const Fate& fate, size_t receive_call = 0) {
    FaultRecord r;
    r.receive_call = receive_call;
    r.direction = direction;
    r.kind = view.kind;
    r.stream = view.stream;
    if (view.kind == Message::Kind::kData && view.data) r.data = *view.data;
    if (view.kind == Message::Kind::kPages && view.pages)
      for (size_t i = 0; i < view.pages->size(); ++i) r.addresses.push_back(view.pages->address(i));
    r.faulted = fate.rule.has_value();
    if (fate.rule) r.action = fate.rule->action;
    std::lock_guard lock(mu_);
    log_.push_back(std::move(r));
    cv_.notify_all();
  }

  Channel& inner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Rule> rules_;
  std::vector<FaultRecord> log_;
  bool released_ = false;
  bool closed_ = false;
  int held_ = 0;
  int fired_ = 0;
  size_t receive_calls_ = 0;
};

}  // namespace elsa::transport::testing
