// Blocking socket reads and writes with deadlines, for the page-server roles.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

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

}  // namespace elsa::page_server
