// A child process we started. Killed (SIGKILL) and reaped if still running when destroyed, so
// an error path never leaves a stray process behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "elsa/status.h"

namespace elsa {

class ChildProcess {
 public:
  // Runs argv[0] (a path) with `argv`. Descriptors in `keep_fds` stay open in the child; with a
  // `log_path`, its stdout and stderr go there (appended), else they are inherited.
  static Result<ChildProcess> Spawn(const std::vector<std::string>& argv, const std::vector<int>& keep_fds = {},
                                    const std::string& log_path = "");

  ChildProcess() = default;  // no process
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Its wait status if it has ended (reaping it), nullopt while it runs.
  std::optional<int> TryWait();
  // Waits for it to end; its wait status.
  int Wait();
  // Waits up to `timeout`; Timeout (and it keeps running) if it has not ended by then.
  Result<int> WaitFor(std::chrono::milliseconds timeout);
  void Signal(int signal) const;
  // Lets it run on, ours no more: for a process meant to outlive its owner (a session's
  // monitor). Whoever is its parent then reaps it.
  pid_t Release() { return std::exchange(pid_, -1); }

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  void KillAndReap();
  pid_t pid_ = -1;
};

// "exited with status 1", "killed by signal Killed".
std::string DescribeWaitStatus(int status);

}  // namespace elsa
