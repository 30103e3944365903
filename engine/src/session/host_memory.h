// How much memory a session arriving on this host may have, and what limits it.
#pragma once

#include <cstdint>
#include <string>

namespace elsa {

struct MemoryRoom {
  uint64_t bytes = UINT64_MAX;
  std::string limited_by;
};

// What the kernel calls available, and below every memory-limited cgroup above this agent (a
// restored tree starts in the agent's cgroup): cgroup v1 and v2.
MemoryRoom RoomForMemory();

}  // namespace elsa
