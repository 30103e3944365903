// Blocking descriptor I/O with deadlines, shared by every component that talks to sockets or
// writes files.
#pragma once

#include <chrono>
#include <string_view>

#include "elsa/status.h"

namespace elsa {

// Writes all of `data`, retrying short writes; the error reads "<what>: <strerror>".
Status WriteFully(int fd, std::string_view data, std::string_view what);

// Milliseconds left until `deadline`, clamped for poll().
int MillisUntil(std::chrono::steady_clock::time_point deadline);

// Waits for `events` on `fd`; Timeout with `timeout_message` if the deadline passes first.
Status PollUntil(int fd, short events, std::chrono::steady_clock::time_point deadline,
                 std::string_view timeout_message);

}  // namespace elsa
