// The agent's record of one session (private to the agent's files).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "elsa/engine/agent.h"
#include "elsa/engine/session.h"
#include "elsa/unique_fd.h"
#include "session/session_monitor.h"

namespace elsa {

using Clock = std::chrono::steady_clock;

struct Agent::Session {
  uint64_t serial = 0;
  SessionInfo info;
  Clock::time_point started = Clock::now();
  bool busy = false;    // a checkpoint or stop is in progress
  bool reaped = false;  // the root process has been waited for
  ProcessIdentity root, monitor;
  UniqueFd lease;       // while the session depends on this agent (session_monitor.h)
  std::unique_ptr<MonitorWatch> watch;
};

}  // namespace elsa
