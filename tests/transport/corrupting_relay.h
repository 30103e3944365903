// A TCP relay between two ends of a channel that flips one byte of the client's traffic: what a
// damaged link or a meddling machine in the middle does to the stream.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>

#include "connection.h"

namespace elsa::transport::testing {

using namespace std::chrono_literals;

// A relay between the two ends that flips one byte of the client's traffic after `flip_at`
// (kNoFlip: none), and keeps a copy of that traffic as it went by.
class CorruptingRelay {
 public:
  static constexpr size_t kNoFlip = static_cast<size_t>(-1);

  CorruptingRelay(uint16_t upstream, size_t flip_at) : upstream_(upstream), flip_at_(flip_at) {
    uint16_t port = 0;
    auto fd = ListenTcp({"127.0.0.1", 0}, &port);
    EXPECT_TRUE(fd.ok());
    listen_ = std::move(*fd);
    port_ = port;
    thread_ = std::thread([this] { Run(); });
  }
  ~CorruptingRelay() {
    stop_ = true;
    thread_.join();
  }
  uint16_t port() const { return port_; }
  // The client's bytes forwarded so far.
  std::string seen() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  void Run() {
    pollfd lp{listen_.get(), POLLIN, 0};
    if (::poll(&lp, 1, 5000) <= 0) return;
    UniqueFd down(::accept(listen_.get(), nullptr, nullptr));
    auto up = ConnectTcp({"127.0.0.1", upstream_}, Clock::now() + 5s);
    if (!up.ok()) return;
    size_t forwarded = 0;
    char buf[65536];
    while (!stop_) {
      pollfd p[2] = {{down.get(), POLLIN, 0}, {up->get(), POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
        ssize_t n = ::recv(p[i].fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        if (i == 0) {
          if (forwarded <= flip_at_ && flip_at_ < forwarded + static_cast<size_t>(n)) buf[flip_at_ - forwarded] ^= 0x10;
          forwarded += static_cast<size_t>(n);
          std::lock_guard lock(mu_);
          seen_.append(buf, static_cast<size_t>(n));
        }
        ::send(i == 0 ? up->get() : down.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL);
      }
    }
  }

  uint16_t upstream_;
  size_t flip_at_;
  UniqueFd listen_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::string seen_;
  std::thread thread_;
};

}  // namespace elsa::transport::testing
