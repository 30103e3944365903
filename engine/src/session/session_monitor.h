// A session's monitor: a small process of its own (elsa-monitor, the role conmon plays for
// podman) that is the parent of the session's root, drains its output into the log and records
// its exit status on disk. The agent holds none of that, so the agent can crash, be killed or be
// upgraded while every session runs on, and a new agent adopts them from what is on disk.
//
// A session is *provisional* while its memory is not all there (a lazy restore paging in, an
// incoming migration before it settles): its pages come from the agent, so its monitor ends it
// if the agent dies first. The agent holds a lease pipe to the monitor and settles it (one byte,
// then closes it) once the session stands on its own; an unsettled lease that closes is the
// agent's death.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/engine/session_process.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

// A process named so that a reused pid is never taken for it: pid and start time.
struct ProcessIdentity {
  pid_t pid = 0;
  uint64_t start_ticks = 0;  // /proc/PID/stat's starttime
  // Whether it is still the same process (running, or a zombie not yet reaped).
  bool Alive() const;
  // How long ago it started, in seconds (from the boot clock, so a new agent tells the same).
  double AgeSeconds() const;
};
// Its identity now; NotFound when no such process runs.
Result<ProcessIdentity> IdentifyProcess(pid_t pid);

// What a monitor keeps on disk for its session.
struct MonitorFiles {
  std::string log_path;   // the session's output (rotated by SessionLogLimits)
  std::string exit_path;  // written once, atomically, when the session's root exits
};

struct SessionExit {
  int exit_code = 0;
  int signal = 0;  // non-zero when killed by a signal
  std::string note;  // why the monitor ended it, when it did ("the agent died while ...")
};
Status WriteSessionExit(const std::string& path, const SessionExit& exit);
// nullopt while the file does not exist (the session has not exited, or was never watched).
Result<std::optional<SessionExit>> ReadSessionExit(const std::string& path);

// A monitor just started, with the session it runs.
struct StartedMonitor {
  ProcessIdentity monitor;
  ProcessIdentity session;
  UniqueFd lease;  // the agent's end of the lease (see above)
};

// Starts `monitor_binary`, which starts spec.argv as the init of a new PID namespace.
Result<StartedMonitor> StartMonitoredSession(const std::string& monitor_binary, const SpawnSpec& spec,
                                             const MonitorFiles& files);

// For a restore: a monitor that runs `criu swrk` as its own child, so that the restored tree
// (CRIU restores it as its sibling) is the monitor's child. Use Launch as a CriuRestoreRequest's
// swrk launcher, then Adopt once CRIU has answered.
class RestoreMonitor {
 public:
  RestoreMonitor(std::string monitor_binary, MonitorFiles files, UniqueFd output_read_end)
      : binary_(std::move(monitor_binary)), files_(std::move(files)), output_(std::move(output_read_end)) {}
  // Starts the monitor running `criu_argv`, with `pass_fds` open in CRIU; returns a function
  // that waits for CRIU to end and gives its wait status.
  Result<std::function<int()>> Launch(const std::vector<std::string>& criu_argv, const std::vector<int>& pass_fds);
  // The restored root, now supervised by the monitor (which must find `restored_pid` its child).
  Result<StartedMonitor> Adopt(pid_t restored_pid);
  pid_t pid() const { return monitor_.pid(); }

 private:
  int WaitForCriu();
  std::string binary_;
  MonitorFiles files_;
  UniqueFd output_;
  ChildProcess monitor_;  // released (left running) once it supervises the tree
  UniqueFd status_;       // the monitor's reports: "criu STATUS", "pid PID", "error TEXT"
  UniqueFd lease_;
  UniqueFd adopt_;        // tells the monitor the restored root's pid
  std::optional<int> criu_status_;
};

// Watches a monitored session from the agent: `on_exit` runs once the session's exit is known
// (the monitor recorded it and ended). If the monitor dies before its session, the session is
// watched directly, its output no longer captured, and its exit code unknown (-1). Stops
// watching, touching nothing, when destroyed.
class MonitorWatch {
 public:
  using ExitFn = std::function<void(const SessionExit& exit)>;
  static Result<std::unique_ptr<MonitorWatch>> Start(const ProcessIdentity& monitor, const ProcessIdentity& session,
                                                     std::string exit_path, ExitFn on_exit);
  ~MonitorWatch();
  MonitorWatch(const MonitorWatch&) = delete;
  MonitorWatch& operator=(const MonitorWatch&) = delete;

 private:
  struct Key {};

 public:
  MonitorWatch(Key, UniqueFd monitor_pidfd, UniqueFd session_pidfd, UniqueFd stop, pid_t monitor_pid,
               std::string exit_path, ExitFn on_exit);

 private:
  void Run();
  UniqueFd monitor_pidfd_, session_pidfd_, stop_;
  pid_t monitor_pid_;
  std::string exit_path_;
  ExitFn on_exit_;
  std::thread thread_;
};

// Settles a lease: the session no longer needs the agent to live.
void SettleLease(UniqueFd& lease);

}  // namespace elsa
