// Drives CRIU through its RPC interface (`criu swrk`), so the engine gets structured results
// and notifications instead of parsing CLI output. Options that Jupyter sessions need
// (established TCP, external unix sockets, nftables network lock, shell job) are always set here.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/status.h"

namespace elsa {

struct CriuLocation {
  std::string explicit_binary;  // --criu, or $ELSA_CRIU
  std::string prefix;           // the bootstrap's build prefix (binary at PREFIX/sbin/criu)
};

struct CriuDumpRequest {
  pid_t pid = 0;                // root of the tree: the session's PID-namespace init
  int images_dir_fd = -1;
  int work_dir_fd = -1;         // where CRIU writes its log
  bool leave_running = false;
  // Leaves the tree stopped (SIGSTOP) and its connections locked: a migration resumes it
  // (ResumeStoppedTree) if the destination fails, or ends it once the destination runs it.
  bool leave_stopped = false;
  // When set, memory goes to the page server at the other end of this connected socket (CRIU's
  // end of a page_server::ConnectedLoopbackPair) instead of into pages images.
  int page_server_fd = -1;
  // When set: `dump --lazy-pages`. Anonymous private memory stays out of the images (marked
  // PE_LAZY); once the images are written CRIU says "status-ready" and serves those pages on
  // this connected socket until the other end sends CLOSE, and only then finishes the dump.
  // RPC cannot hand a lazy dump its socket: `config_file` must say `ps-socket <this fd>`
  // (LazyDumpConfig).
  int lazy_pages_fd = -1;
  // A CRIU configuration file applied over these options.
  std::string config_file;
};

// The configuration file line that hands a lazy dump its page-server socket.
std::string LazyDumpConfig(int lazy_pages_fd);

using SwrkLauncher =
    std::function<Result<std::function<int()>>(const std::vector<std::string>& argv, const std::vector<int>& pass_fds)>;

struct CriuRestoreRequest {
  int images_dir_fd = -1;
  int work_dir_fd = -1;
  // CRIU resources (e.g. "pipe:[123]") replaced by our descriptors on restore.
  std::vector<std::pair<std::string, int>> inherit_fds;
  // Leaves PE_LAZY pages to the `criu lazy-pages` daemon listening in the work directory.
  bool lazy_pages = false;
  // Who runs `criu swrk` (argv, with pass_fds open in it), returning how to wait for its wait
  // status. CRIU restores the tree as its own sibling, so whoever runs it becomes the tree's
  // parent: a session's monitor (session/session_monitor.h). Unset: CRIU is our child.
  SwrkLauncher launcher;
};

struct CriuOutcome {
  double seconds = 0;
  pid_t restored_pid = 0;  // restore only: the tree's root, a child of the caller
  // CRIU's notifications ("network-lock", "post-dump", "post-restore", ...) with the time since
  // the request was sent, for per-phase timing.
  std::vector<std::pair<std::string, double>> notifications;

  // When CRIU reported `event`, in seconds since the request; 0 if it did not.
  double At(const std::string& event) const {
    for (const auto& [name, at] : notifications)
      if (name == event) return at;
    return 0;
  }
};

using CriuNotifyFn = std::function<void(const std::string& event)>;

class CriuDriver {
 public:
  static constexpr const char* kDumpLog = "criu-dump.log";
  static constexpr const char* kRestoreLog = "criu-restore.log";
  static constexpr const char* kLazyPagesLog = "criu-lazy-pages.log";

  // Finds a CRIU binary: the explicit one, else PREFIX/sbin/criu, else `criu` on $PATH. The
  // error names every place looked at and the bootstrap that provides CRIU.
  static Result<std::string> Locate(const CriuLocation& where);

  explicit CriuDriver(std::string binary) : binary_(std::move(binary)) {}
  const std::string& binary() const { return binary_; }

  Result<std::string> Version() const;  // "4.2.1"
  Result<CriuOutcome> Dump(const CriuDumpRequest& request, const CriuNotifyFn& notify = {}) const;
  Result<CriuOutcome> Restore(const CriuRestoreRequest& request,
                              const CriuNotifyFn& notify = {}) const;
  // Starts `criu lazy-pages` on `dir` (its images and work directory), fetching pages from the
  // page server at the other end of `page_server_fd` (CRIU's end of a loopback pair); returns
  // once it listens for a lazy restore in `dir`.
  Result<ChildProcess> StartLazyPages(const std::string& dir, int page_server_fd) const;

 private:
  std::string binary_;
};

// The nftables table ("inet CRIU-...") a successful dump left locking the tree's connections,
// named from the run id in the dump's log; empty if the log names none. CRIU removes it when it
// restores the checkpoint; whoever deletes an unrestored checkpoint must remove it.
std::string CriuNetworkLockTable(const std::string& dump_log_text);
// The same, from the dump log CRIU wrote into `work_dir` (empty if there is none).
std::string CriuNetworkLockTableOf(const std::string& work_dir);

// Removes that table if it is still there.
Status DropCriuNetworkLock(const std::string& table);

// The most telling lines of a CRIU log: its errors, with a little context, at most `max_lines`.
std::string SummarizeCriuLog(const std::string& log_text, size_t max_lines = 12);

}  // namespace elsa
