// Blocking socket reads and writes with deadlines, for the page-server roles.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include <sys/socket.h>

#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa::page_server {

using Clock = std::chrono::steady_clock;

// Reads exactly `size` bytes. PeerClosed on EOF (with `at_boundary` set if nothing was read).
Status RecvAll(int fd, void* buf, size_t size, Clock::time_point deadline, bool* at_boundary = nullptr);
Status SendAll(int fd, const void* buf, size_t size, Clock::time_point deadline);
// Waits until `fd` is readable; Timeout at the deadline.
Status WaitReadable(int fd, Clock::time_point deadline);

Result<UniqueFd> ListenOn(const std::string& address, uint16_t port, uint16_t* bound_port);
Result<UniqueFd> AcceptOne(int listen_fd, Clock::time_point deadline);

// The connection a role's ServeOne serves: the one it was given (which stays its owner's, so a
// Hangup from another thread can reach it), or one accepted now on its listener. A given one is
// shut down when the serving ends, however it ends: CRIU, still writing pages into it after we
// stopped reading (a full disk), must see the end rather than block forever.
class ServedSocket {
 public:
  static Result<ServedSocket> Take(const UniqueFd& given, int listen_fd, std::chrono::milliseconds accept_timeout) {
    ServedSocket served;
    if (given) {
      served.fd_ = given.get();
      served.given_ = true;
      return served;
    }
    ELSA_ASSIGN_OR_RETURN(served.accepted_, AcceptOne(listen_fd, Clock::now() + accept_timeout));
    served.fd_ = served.accepted_.get();
    return served;
  }
  ServedSocket(ServedSocket&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), given_(other.given_), accepted_(std::move(other.accepted_)) {}
  ServedSocket& operator=(ServedSocket&&) = delete;
  ~ServedSocket() {
    if (given_ && fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  int get() const { return fd_; }

 private:
  ServedSocket() = default;
  int fd_ = -1;
  bool given_ = false;
  UniqueFd accepted_;
};

}  // namespace elsa::page_server
