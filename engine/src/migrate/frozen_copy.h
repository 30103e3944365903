// A tree frozen for a migration must outlive the agent that froze it without being lost: if that
// agent dies, the tree stays stopped with no owner. So the source records it on disk from the
// freeze until it is settled (STATE_DIR/run/frozen-NAME.json), and a new agent on the same state
// directory asks the destination where the session runs, then ends the copy or lets it run.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "elsa/engine/agent.h"
#include "elsa/log.h"
#include "elsa/status.h"
#include "migrate/protocol.h"

namespace elsa {

struct FrozenCopy {
  std::string session;
  pid_t pid = 0;
  uint64_t start_ticks = 0;  // the process's start time: a pid reused since is never taken for it
  std::string lock_table;    // CRIU's nftables lock on its connections ("" until known)
  std::string host;          // the destination, to ask; empty: a checkpoint's (nobody to ask)
  uint16_t port = 0;
  std::string dump_dir;      // where CRIU's dump log is, naming its lock table (if lock_table is "")
  bool commit_sent = false;  // the destination may have made its copy outlive its agent
};

std::string FrozenCopyPath(const std::string& state_dir, const std::string& session);
Status RecordFrozenCopy(const std::string& state_dir, const FrozenCopy& copy);
// The records a previous agent left; unreadable ones are reported to `log` and skipped.
std::vector<FrozenCopy> ReadFrozenCopies(const std::string& state_dir, const Logger& log);
// When `pid` started, in clock ticks after boot (/proc/PID/stat); 0 if it is gone.
uint64_t ProcessStartTicks(pid_t pid);

// One question on a fresh channel: where does `session` run? Until `commit` was sent a refused
// connection is kAbsent: no agent listens there, and the destination's copy (its lease not
// settled) ends with its agent. After `commit` it is an error like any other: the destination
// may have settled its copy, which then runs on without an agent to say so until the next starts.
Result<peer::Outcome> AskWhereSessionRuns(const AgentConfig& config, const std::pair<std::string, uint16_t>& destination,
                                          const std::string& session, bool commit_sent);
// Asks every 5 s until the destination says: true, it runs the session; false, it has none.
// nullopt if `stop` is set first.
std::optional<bool> AskUntilKnown(const AgentConfig& config, const std::pair<std::string, uint16_t>& destination,
                                  const std::string& session, bool commit_sent, const std::atomic<bool>& stop);

// For a new agent: each recorded copy still frozen is settled: a migration's on a thread `start`
// runs (ended if the destination runs the session, else resumed), a checkpoint's at once
// (resumed: its checkpoint was never committed); records of trees that are gone are removed.
void SettleFrozenCopies(const AgentConfig& config, const std::function<void(std::function<void(const std::atomic<bool>&)>)>& start);

}  // namespace elsa
