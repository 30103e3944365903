#include "elsa/engine/session_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "elsa/file_util.h"

namespace elsa {
namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

std::string FindInPath(const std::string& name, const std::vector<std::string>& env) {
  if (name.find('/') != std::string::npos) return name;
  std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& kv : env)
    if (kv.rfind("PATH=", 0) == 0) path = kv.substr(5);
  std::stringstream dirs(path);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

struct ChildArgs {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* workdir;
  int output_fd;
  int devnull_fd;
  int error_fd;  // CLOEXEC pipe: the child writes errno here if it cannot exec
};

void ChildFail(int error_fd, int stage) {
  int payload[2] = {stage, errno};
  ssize_t ignored = ::write(error_fd, payload, sizeof payload);
  (void)ignored;
  ::_exit(127);
}

// Runs in the new PID namespace as its pid 1. Async-signal-safe calls only: the agent is
// multithreaded.
int ChildMain(void* raw) {
  const ChildArgs* a = static_cast<const ChildArgs*>(raw);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::signal(SIGPIPE, SIG_DFL);
  if (::setsid() < 0) ChildFail(a->error_fd, 1);
  if (::dup2(a->devnull_fd, 0) < 0 || ::dup2(a->output_fd, 1) < 0 || ::dup2(a->output_fd, 2) < 0)
    ChildFail(a->error_fd, 2);
  if (::chdir(a->workdir) != 0) ChildFail(a->error_fd, 3);
  // Everything else the agent had open must not leak into the session (CRIU would dump it).
  ::syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
  ::execve(a->path, a->argv, a->envp);
  ChildFail(a->error_fd, 4);
  return 127;
}

std::vector<char*> CStrings(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

Result<OutputPipe> OutputPipe::Create() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
  OutputPipe p;
  p.read_end.Reset(fds[0]);
  p.write_end.Reset(fds[1]);
  struct stat st {};
  if (::fstat(fds[1], &st) != 0) return Status::FromErrno("fstat pipe", errno);
  p.criu_key = "pipe:[" + std::to_string(st.st_ino) + "]";
  return p;
}

Result<pid_t> SpawnInPidNamespace(const SpawnSpec& spec, const OutputPipe& output) {
  if (spec.argv.empty()) return Status::InvalidArgument("no command given");
  const std::string path = FindInPath(spec.argv[0], spec.env);
  if (path.empty()) return Status::NotFound("command '" + spec.argv[0] + "' not found in PATH");
  struct stat st {};
  if (::stat(spec.workdir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return Status::NotFound("working directory '" + spec.workdir + "' does not exist");

  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!devnull) return Status::FromErrno("open /dev/null", errno);
  int errpipe[2];
  if (::pipe2(errpipe, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
  UniqueFd err_read(errpipe[0]), err_write(errpipe[1]);

  std::vector<char*> argv = CStrings(spec.argv);
  std::vector<char*> envp = CStrings(spec.env);
  ChildArgs args{path.c_str(), argv.data(), envp.data(), spec.workdir.c_str(),
                 output.write_end.get(), devnull.get(), err_write.get()};
  // clone() without CLONE_VM gives the child a copy of our memory, this stack included.
  std::vector<char> stack(256 * 1024);
  pid_t pid = ::clone(ChildMain, stack.data() + stack.size(), CLONE_NEWPID | SIGCHLD, &args);
  if (pid < 0) return Status::FromErrno("clone(CLONE_NEWPID)", errno);
  err_write.Reset();

  int payload[2] = {0, 0};
  ssize_t n;
  do n = ::read(err_read.get(), payload, sizeof payload); while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof payload)) {
    int status;
    ::waitpid(pid, &status, 0);
    const std::string stage = payload[0] == 1   ? "setsid"
                              : payload[0] == 2 ? "redirect output"
                              : payload[0] == 3 ? "chdir to " + spec.workdir
                                                : "exec";
    return Status::ExternalFailure("cannot start '" + path + "': " + stage + ": " + std::strerror(payload[1]));
  }
  return pid;
}

SessionSupervisor::SessionSupervisor(Key, UniqueFd pidfd, UniqueFd output, UniqueFd log, UniqueFd stop,
                                     ExitFn on_exit, std::string log_path, SessionLogLimits limits)
    : pidfd_(std::move(pidfd)), output_(std::move(output)), log_(std::move(log)),
      stop_(std::move(stop)), on_exit_(std::move(on_exit)), log_path_(std::move(log_path)), limits_(limits) {
  struct stat st {};
  if (::fstat(log_.get(), &st) == 0) log_bytes_ = static_cast<uint64_t>(st.st_size);  // a restored session's
  thread_ = std::thread([this] { Run(); });
}

Result<std::unique_ptr<SessionSupervisor>> SessionSupervisor::Start(pid_t pid, UniqueFd output_read_end,
                                                                    const std::string& log_path, ExitFn on_exit,
                                                                    SessionLogLimits limits) {
  if (limits.max_bytes == 0 || limits.keep < 0) return Status::InvalidArgument("session log limits must be positive");
  UniqueFd pidfd(PidfdOpen(pid));
  if (!pidfd) return Status::FromErrno("pidfd_open " + std::to_string(pid), errno);
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!log) return Status::FromErrno("open " + log_path, errno);
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop) return Status::FromErrno("eventfd", errno);
  return std::make_unique<SessionSupervisor>(Key{}, std::move(pidfd), std::move(output_read_end),
                                             std::move(log), std::move(stop), std::move(on_exit), log_path, limits);
}

void SessionSupervisor::WriteLog(const char* data, size_t size) {
  if (log_bytes_ > 0 && log_bytes_ + size > limits_.max_bytes) RotateLog();
  ssize_t n = ::write(log_.get(), data, size);
  if (n > 0) log_bytes_ += static_cast<uint64_t>(n);  // short or failed (disk full): the rest is dropped
}

void SessionSupervisor::RotateLog() {
  const auto name = [&](int k) { return k == 0 ? log_path_ : log_path_ + "." + std::to_string(k); };
  if (limits_.keep > 0) {
    for (int k = limits_.keep; k >= 1; --k) (void)::rename(name(k - 1).c_str(), name(k).c_str());
    UniqueFd fresh(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (fresh) {
      log_ = std::move(fresh);
      log_bytes_ = 0;
      return;
    }
  }
  // Nothing to keep, or no new file to be had: start the same file over, so the bound holds.
  if (::ftruncate(log_.get(), 0) == 0) log_bytes_ = 0;
}

SessionSupervisor::~SessionSupervisor() {
  uint64_t one = 1;
  ssize_t ignored = ::write(stop_.get(), &one, sizeof one);
  (void)ignored;
  if (thread_.joinable()) thread_.join();
}

void SessionSupervisor::Run() {
  bool exited = false;
  int exit_code = 0, signal = 0;
  char buf[65536];
  for (;;) {
    if (exited && !output_) break;
    pollfd fds[3];
    nfds_t n = 0;
    fds[n++] = {stop_.get(), POLLIN, 0};
    int out_idx = -1, pid_idx = -1;
    if (output_) { out_idx = static_cast<int>(n); fds[n++] = {output_.get(), POLLIN, 0}; }
    if (!exited) { pid_idx = static_cast<int>(n); fds[n++] = {pidfd_.get(), POLLIN, 0}; }
    // Once the root is gone its namespace is gone too; drain what is buffered, but do not
    // wait forever on a writer that escaped the namespace.
    int r = ::poll(fds, n, exited ? 200 : -1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (fds[0].revents) return;  // the agent is stopping; the session keeps running
    if (out_idx >= 0 && fds[out_idx].revents) {
      ssize_t got = ::read(output_.get(), buf, sizeof buf);
      if (got > 0) {
        WriteLog(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        output_.Reset();
      }
    }
    if (pid_idx >= 0 && (fds[pid_idx].revents & POLLIN)) {
      siginfo_t info{};
      if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.get()), &info, WEXITED) == 0) {
        exited = true;
        if (info.si_code == CLD_EXITED) exit_code = info.si_status;
        else signal = info.si_status;
      }
    }
  }
  if (exited && on_exit_) on_exit_(exit_code, signal);
}

TreeStats ProcessTreeStats(pid_t root) {
  std::multimap<pid_t, pid_t> children;
  std::map<pid_t, uint64_t> rss;
  DIR* proc = ::opendir("/proc");
  if (!proc) return {};
  while (dirent* e = ::readdir(proc)) {
    char* end;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    std::ifstream status("/proc/" + std::string(e->d_name) + "/status");
    pid_t ppid = -1;
    uint64_t rss_kb = 0;
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("PPid:", 0) == 0) ppid = static_cast<pid_t>(std::stol(line.substr(5)));
      else if (line.rfind("VmRSS:", 0) == 0) rss_kb = std::stoull(line.substr(6));
    }
    if (ppid < 0) continue;
    children.emplace(ppid, static_cast<pid_t>(pid));
    rss[static_cast<pid_t>(pid)] = rss_kb * 1024;
  }
  ::closedir(proc);
  TreeStats stats;
  if (!rss.count(root)) return stats;
  std::vector<pid_t> todo = {root};
  std::set<pid_t> seen;
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    if (!seen.insert(p).second) continue;
    stats.processes++;
    stats.rss_bytes += rss[p];
    auto [lo, hi] = children.equal_range(p);
    for (auto it = lo; it != hi; ++it) todo.push_back(it->second);
  }
  return stats;
}

std::vector<std::string> OutputPipeKeys(pid_t pid) {
  std::set<std::string> keys;
  for (int fd : {1, 2}) {
    char target[256];
    std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (std::strncmp(target, "pipe:[", 6) == 0) keys.insert(target);
  }
  return {keys.begin(), keys.end()};
}

}  // namespace elsa
