// elsa-monitor: one per session, started by elsad (engine/src/session/session_monitor.h says
// why). It is the parent of the session's root, drains its output into the log, and writes its
// exit status to a file before it ends. It outlives the agent that started it.
//
//   elsa-monitor --status-fd S --lease-fd L --log PATH --exit-file PATH
//       --run --env-fd E --workdir DIR -- CMD ARGS...      starts CMD in a new PID namespace
//       --restore --output-fd R [--pass-fd N]... -- CRIU swrk FD
//                                                         runs CRIU; the tree it restores is ours
//
// Reports on S, one line each: "criu STATUS" (restore), then "pid PID START_TICKS" or
// "error TEXT". Reads on L: "adopt PID" (restore), "settle"; L closing before "settle" means the
// agent died while the session still needed it, and the session is ended.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "elsa/unique_fd.h"
#include "session/session_monitor.h"

namespace elsa {
namespace {

struct Options {
  int status_fd = -1, lease_fd = -1, env_fd = -1, output_fd = -1;
  std::string log_path, exit_path, workdir = "/";
  bool run = false, restore = false;
  std::vector<int> pass_fds;
  std::vector<std::string> command;
};

std::optional<Options> Parse(int argc, char** argv) {
  Options o;
  auto fd = [](const char* s) { return static_cast<int>(std::strtol(s, nullptr, 10)); };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--") {
      for (++i; i < argc; ++i) o.command.emplace_back(argv[i]);
      break;
    }
    if (a == "--run") o.run = true;
    else if (a == "--restore") o.restore = true;
    else if (!has_value) return std::nullopt;
    else if (a == "--status-fd") o.status_fd = fd(argv[++i]);
    else if (a == "--lease-fd") o.lease_fd = fd(argv[++i]);
    else if (a == "--env-fd") o.env_fd = fd(argv[++i]);
    else if (a == "--output-fd") o.output_fd = fd(argv[++i]);
    else if (a == "--pass-fd") o.pass_fds.push_back(fd(argv[++i]));
    else if (a == "--log") o.log_path = argv[++i];
    else if (a == "--exit-file") o.exit_path = argv[++i];
    else if (a == "--workdir") o.workdir = argv[++i];
    else return std::nullopt;
  }
  if (o.run == o.restore || o.status_fd < 0 || o.lease_fd < 0 || o.log_path.empty() || o.exit_path.empty() ||
      o.command.empty() || (o.run && o.env_fd < 0) || (o.restore && o.output_fd < 0))
    return std::nullopt;
  return o;
}

void Report(int fd, const std::string& line) {
  const std::string bytes = line + "\n";
  ssize_t ignored = ::write(fd, bytes.data(), bytes.size());  // the agent may be gone: fine
  (void)ignored;
}

// One line from the lease; nullopt at its end (the agent closed it, or died).
std::optional<std::string> ReadLeaseLine(int fd) {
  std::string line;
  for (;;) {
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    if (c == '\n') return line;
    if (line.size() < 256) line += c;
  }
}

std::vector<std::string> ReadEnvironment(int fd) {
  std::vector<std::string> env;
  std::string block;
  char buf[65536];
  for (off_t at = 0;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    block.append(buf, static_cast<size_t>(n));
    at += n;
  }
  for (size_t start = 0; start < block.size();) {
    size_t end = block.find('\0', start);
    if (end == std::string::npos) end = block.size();
    env.push_back(block.substr(start, end - start));
    start = end + 1;
  }
  return env;
}

bool IsOurChild(pid_t pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return false;
  const size_t close = stat->rfind(')');
  int ppid = 0;
  char state;
  return close != std::string::npos && std::sscanf(stat->c_str() + close + 1, " %c %d", &state, &ppid) == 2 &&
         ppid == ::getpid();
}

// Supervises `pid` (our child) until it exits, ending it if the lease closes unsettled; records
// its exit. Returns the monitor's exit code.
int Supervise(const Options& o, pid_t pid, UniqueFd output, UniqueFd lease, UniqueFd status) {
  // Named now, while it cannot have been reaped (we reap it): a session that ends at once is
  // still told apart from a later process with its pid.
  auto identity = IdentifyProcess(pid);
  if (!identity.ok()) {
    Report(status.get(), "error " + identity.status().message());
    return 1;
  }
  UniqueFd exited(::eventfd(0, EFD_CLOEXEC));
  std::mutex mu;
  SessionExit result;
  auto supervisor = SessionSupervisor::Start(pid, std::move(output), o.log_path, [&](int code, int signal) {
    std::lock_guard lock(mu);
    result.exit_code = code;
    result.signal = signal;
    uint64_t one = 1;
    ssize_t ignored = ::write(exited.get(), &one, sizeof one);
    (void)ignored;
  });
  if (!supervisor.ok()) {
    ::kill(pid, SIGKILL);  // unwatched, it would be a stray tree
    Report(status.get(), "error " + supervisor.status().message());
    return 1;
  }
  Report(status.get(), "pid " + std::to_string(pid) + " " + std::to_string(identity->start_ticks));
  status.Reset();
  std::string note;
  for (;;) {
    pollfd fds[2] = {{exited.get(), POLLIN, 0}, {lease ? lease.get() : -1, POLLIN, 0}};
    int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || fds[0].revents) break;
    if (fds[1].revents) {
      std::optional<std::string> line = ReadLeaseLine(lease.get());
      if (line && *line == "settle") {
        lease.Reset();
      } else if (!line) {
        // Its pages, or its migration's outcome, were the agent's to give: without them it
        // must not run on (a lazy page never delivered reads as zeroes).
        note = "ended by its monitor: the agent died while the session still depended on it "
               "(a lazy restore paging in, or a migration not yet settled)";
        ::kill(pid, SIGKILL);
        lease.Reset();
      }
    }
  }
  supervisor->reset();  // drains the last output, joins
  std::lock_guard lock(mu);
  result.note = note;
  return WriteSessionExit(o.exit_path, result).ok() ? 0 : 1;
}

int Run(const Options& o) {
  UniqueFd status(o.status_fd), lease(o.lease_fd), env(o.env_fd);
  auto pipe = OutputPipe::Create();
  if (!pipe.ok()) {
    Report(status.get(), "error " + pipe.status().message());
    return 1;
  }
  SpawnSpec spec{o.command, ReadEnvironment(env.get()), o.workdir};
  env.Reset();
  auto pid = SpawnInPidNamespace(spec, *pipe);
  if (!pid.ok()) {
    Report(status.get(), "error " + pid.status().message());
    return 1;
  }
  pipe->write_end.Reset();  // the session holds the only write ends now
  return Supervise(o, *pid, std::move(pipe->read_end), std::move(lease), std::move(status));
}

int Restore(const Options& o) {
  UniqueFd status(o.status_fd), lease(o.lease_fd), output(o.output_fd);
  auto criu = ChildProcess::Spawn(o.command, o.pass_fds);
  // CRIU has its own copies now; ours would keep the session's output pipe open for ever.
  for (int fd : o.pass_fds) ::close(fd);
  if (!criu.ok()) {
    Report(status.get(), "criu " + std::to_string(W_EXITCODE(127, 0)));
    Report(status.get(), "error " + criu.status().message());
    return 1;
  }
  Report(status.get(), "criu " + std::to_string(criu->Wait()));
  std::optional<std::string> line = ReadLeaseLine(lease.get());
  int pid = 0;
  if (!line || std::sscanf(line->c_str(), "adopt %d", &pid) != 1) return 1;  // the restore failed
  if (!IsOurChild(pid)) {
    Report(status.get(), "error the restored root (pid " + std::to_string(pid) + ") is not elsa-monitor's child");
    return 1;
  }
  return Supervise(o, pid, std::move(output), std::move(lease), std::move(status));
}

}  // namespace
}  // namespace elsa

int main(int argc, char** argv) {
  auto options = elsa::Parse(argc, argv);
  if (!options) {
    std::fprintf(stderr,
                 "elsa-monitor is started by elsad, one per session; it is not meant to be run by hand.\n"
                 "usage: elsa-monitor --status-fd S --lease-fd L --log PATH --exit-file PATH\n"
                 "         (--run --env-fd E --workdir DIR | --restore --output-fd R [--pass-fd N]...) -- COMMAND...\n");
    return 2;
  }
  // Its own session: a terminal's ^C or a signal to the agent's process group is not for it.
  ::setsid();
  ::signal(SIGPIPE, SIG_IGN);  // the agent's end of the status pipe may be gone
  ::signal(SIGHUP, SIG_IGN);
  return options->run ? elsa::Run(*options) : elsa::Restore(*options);
}
