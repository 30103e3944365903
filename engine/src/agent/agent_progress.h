// Small helpers the agent's long operations (checkpoint, restore, migration) share.
#pragma once

#include <chrono>
#include <string>

#include "elsa/engine/agent.h"

namespace elsa {

using AgentClock = std::chrono::steady_clock;

inline double SecondsSince(AgentClock::time_point t) {
  return std::chrono::duration<double>(AgentClock::now() - t).count();
}

// Reports a phase to the caller's progress display, if it has one.
inline void Report(const ProgressFn& progress, const std::string& phase, const std::string& detail) {
  if (progress) progress(phase, detail);
}

}  // namespace elsa
