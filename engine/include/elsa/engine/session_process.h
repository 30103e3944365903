// A session's process tree on this host: how it is started (as the init of its own PID
// namespace and a session leader, so CRIU can dump and restore it anywhere without PID clashes)
// and how it is supervised (output drained into a log, exit observed).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is resolved against PATH from `env`
  std::vector<std::string> env;   // "K=V"
  std::string workdir;
};

// The agent's end of a session's stdout/stderr. The session writes into a pipe the agent reads;
// a log *file* cannot be used directly because CRIU refuses to restore a file whose size
// changed since the dump. On restore the agent makes a new pipe and hands CRIU its write end
// for the old pipe's key ("pipe:[inode]").
struct OutputPipe {
  UniqueFd read_end;
  UniqueFd write_end;
  std::string criu_key;  // "pipe:[inode]"
  static Result<OutputPipe> Create();
};

// Starts spec.argv in a new PID namespace, with stdin from /dev/null and stdout/stderr into
// `output`. Returns the host pid of the namespace's init. Errors (command not found, bad
// workdir) are reported from the child before exec, so they come back as a Status.
Result<pid_t> SpawnInPidNamespace(const SpawnSpec& spec, const OutputPipe& output);

// How much of a session's output its log keeps: a session printing without end must not fill
// the agent's disk. At `max_bytes` the log is renamed LOG.1 (LOG.1 to LOG.2, ...; the oldest
// beyond `keep` is dropped) and a new LOG begins, so at most (keep + 1) * max_bytes are on disk.
struct SessionLogLimits {
  uint64_t max_bytes = 8u << 20;
  int keep = 2;
};

// Drains a session's output into its log and reports the exit of its root process. One thread;
// stops (without touching the session) when destroyed. Output the log cannot take (a full disk)
// is dropped: the session must never block on its own stdout.
class SessionSupervisor {
 public:
  // exit_code when it exited, signal when it was killed (e.g. SIGKILL by CRIU after a dump).
  using ExitFn = std::function<void(int exit_code, int signal)>;

  static Result<std::unique_ptr<SessionSupervisor>> Start(pid_t pid, UniqueFd output_read_end,
                                                          const std::string& log_path, ExitFn on_exit,
                                                          SessionLogLimits limits = {});
  ~SessionSupervisor();
  SessionSupervisor(const SessionSupervisor&) = delete;
  SessionSupervisor& operator=(const SessionSupervisor&) = delete;

 private:
  struct Key {};  // only Start() constructs, after every resource is acquired

 public:
  SessionSupervisor(Key, UniqueFd pidfd, UniqueFd output, UniqueFd log, UniqueFd stop, ExitFn on_exit,
                    std::string log_path, SessionLogLimits limits);

 private:
  void Run();
  void WriteLog(const char* data, size_t size);
  void RotateLog();

  UniqueFd pidfd_;
  UniqueFd output_;
  UniqueFd log_;
  UniqueFd stop_;  // eventfd: wakes the thread to stop
  ExitFn on_exit_;
  const std::string log_path_;
  const SessionLogLimits limits_;
  uint64_t log_bytes_ = 0;  // in the current log file
  std::thread thread_;
};

struct TreeStats {
  int processes = 0;
  uint64_t rss_bytes = 0;
};
// Processes and resident memory of the tree rooted at `root` (from /proc).
TreeStats ProcessTreeStats(pid_t root);

// The CRIU inherit-fd keys of `pid`'s stdout and stderr, when they are pipes.
std::vector<std::string> OutputPipeKeys(pid_t pid);

}  // namespace elsa
