// The per-host agent's core: its sessions, its checkpoint store, and CRIU. Thread-safe; the API
// server calls it from one thread per client.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "elsa/engine/checkpoint_store.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/engine/manifest.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

class SessionSupervisor;
class CheckpointPages;
class LazyPageSupply;

struct AgentConfig {
  std::string state_dir = "/var/lib/elsa";
  CriuLocation criu;
};

struct RunRequest {
  std::string name;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string workdir;
};

struct SessionInfo {
  std::string name;
  pid_t pid = 0;
  std::string state;  // "running", "checkpointed", "exited"
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
  // After a lazy restore: pages still arriving in the background, then how that went.
  bool paging_in = false;
  uint64_t lazy_pages_served = 0;
  double lazy_seconds = 0;      // from restore to the last page delivered
  std::string lazy_error;
};

struct CheckpointReport {
  Manifest manifest;
  double dump_seconds = 0;    // CRIU: freeze, dump, (kill)
  double commit_seconds = 0;  // checksums, fsync, rename
  double total_seconds = 0;
  std::vector<std::pair<std::string, double>> criu_events;
};

struct RestoreOptions {
  std::string name;   // the restored session's name; empty: the checkpointed session's
  bool lazy = false;  // start before the memory is in: `criu lazy-pages` fed by our lazy server
};

struct RestoreReport {
  SessionInfo session;
  std::string checkpoint_id;
  bool lazy = false;
  uint64_t pages_materialized = 0;  // written into pages images before CRIU ran
  uint64_t pages_lazy = 0;          // left to arrive after the session runs
  double verify_seconds = 0;
  double materialize_seconds = 0;
  double restore_seconds = 0;
  double total_seconds = 0;
  std::vector<std::pair<std::string, double>> criu_events;
};

// Long operations report phases as they start ("verify", "dump", ...), for progress displays.
using ProgressFn = std::function<void(const std::string& phase, const std::string& detail)>;

class Agent {
 public:
  explicit Agent(AgentConfig config);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Prepares the state directory and the store. A missing CRIU is not fatal here (sessions can
  // run without it); checkpoint and restore report it.
  Status Open();
  // Where CRIU is, or why it is not usable.
  Result<std::string> CriuBinary() const;

  Result<SessionInfo> Run(const RunRequest& request);
  std::vector<SessionInfo> Sessions();
  Result<SessionInfo> GetSession(const std::string& name);
  // Ends a running session (SIGTERM, then SIGKILL after `timeout_s`) and forgets it.
  Status Stop(const std::string& name, int timeout_s);

  Result<CheckpointReport> Checkpoint(const std::string& name, bool leave_running, const ProgressFn& progress);
  Result<RestoreReport> Restore(const std::string& checkpoint_id, const RestoreOptions& options,
                                const ProgressFn& progress);
  Result<std::vector<Manifest>> Checkpoints() const;
  // Removes the checkpoint, then reclaims the pages no other checkpoint names.
  Result<CollectReport> RemoveCheckpoint(const std::string& checkpoint_id);
  Result<Manifest> VerifyCheckpoint(const std::string& checkpoint_id) const;
  // Reclaims page-store space no checkpoint names (what `rm` does after removing).
  Result<CollectReport> CollectGarbage();
  struct PageStoreReport {
    uint64_t unique_pages = 0;
    uint64_t stored_bytes = 0;
  };
  PageStoreReport PageStoreStats() const;

  const AgentConfig& config() const { return config_; }

 private:
  struct Session;

  std::string LogPathFor(const std::string& name) const;
  // Registers a running tree (started or restored) under `info.name` and supervises it.
  // Called with mu_ held; an exited session of the same name is replaced, and handed back in
  // `replaced` so it can be destroyed after the lock is released.
  Result<SessionInfo> AdoptLocked(SessionInfo info, UniqueFd output_read_end,
                                  std::unique_ptr<Session>* replaced);
  SessionInfo Describe(const Session& session) const;
  void OnExit(uint64_t serial, int exit_code, int signal);
  // Waits until the session with `serial` has been reaped, up to `timeout_s`.
  bool WaitForExit(std::unique_lock<std::mutex>& lock, uint64_t serial, int timeout_s);
  Session* FindLocked(const std::string& name);

  // A lazily restored session's pages keep arriving after Restore returns; this waits for
  // them in the background and records the outcome on the session.
  void FinishPagingIn(uint64_t serial, std::unique_ptr<LazyPageSupply> supply, std::string staging);

  AgentConfig config_;
  CheckpointStore store_;
  std::unique_ptr<CheckpointPages> pages_;

  mutable std::mutex mu_;
  std::mutex dump_mu_;  // serialises CRIU dumps (see Checkpoint)
  std::condition_variable exited_cv_;
  std::map<std::string, std::unique_ptr<Session>> sessions_;
  std::set<std::string> reserved_names_;  // names being restored into
  uint64_t next_serial_ = 1;
  std::vector<std::thread> paging_threads_;  // joined on destruction: pages are never cut off
};

}  // namespace elsa
