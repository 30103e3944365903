// A session as the agent reports it: a process tree it started or restored, and its state.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace elsa {

enum class SessionState {
  kRunning,
  kCheckpointed,  // dumped and ended by a checkpoint (its tree is gone)
  kExited,        // its root process exited (code or signal in SessionInfo)
};
std::string_view SessionStateName(SessionState state);  // "running", "checkpointed", "exited"

struct SessionInfo {
  std::string name;
  pid_t pid = 0;
  SessionState state = SessionState::kRunning;
  std::vector<std::string> command;
  std::string workdir;
  std::string started_at;
  double uptime_seconds = 0;
  int processes = 0;
  uint64_t rss_bytes = 0;
  std::string log_path;
  std::string restored_from;    // checkpoint id, when restored
  std::string last_checkpoint;  // newest checkpoint id taken of it
  int exit_code = 0;            // when exited
  int exit_signal = 0;
  std::string exit_note;        // why it ended, when not by itself (e.g. its monitor ended it)
  // After a lazy restore: pages still arriving in the background, then how that went.
  bool paging_in = false;
  uint64_t lazy_pages_served = 0;
  double lazy_seconds = 0;      // from restore to the last page delivered
  std::string lazy_error;
};

}  // namespace elsa
