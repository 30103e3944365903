#include "session/session_monitor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "elsa/fd_io.h"
#include "elsa/file_util.h"

namespace elsa {
namespace {

constexpr int kStartTimeoutMs = 30000;

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

struct Pipe {
  UniqueFd read_end, write_end;
  static Result<Pipe> Create() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
    return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  }
};

// One line the monitor reported ("pid 123"), without its newline.
Result<std::string> ReadReport(int fd, int timeout_ms) {
  std::string line;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms); while (r < 0 && errno == EINTR);
    if (r == 0) return Status::Timeout("elsa-monitor did not report within " + std::to_string(timeout_ms / 1000) + " s");
    if (r < 0) return Status::FromErrno("poll elsa-monitor", errno);
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::ExternalFailure("elsa-monitor ended without reporting" + (line.empty() ? "" : ": " + line));
    if (c == '\n') return line;
    if (line.size() > 4096) return Status::ProtocolError("elsa-monitor's report is too long");
    line += c;
  }
}

// "pid 123 START_TICKS" -> the session's identity; "error ..." -> that error.
Result<ProcessIdentity> SessionFromReport(const std::string& report) {
  if (report.rfind("error ", 0) == 0) return Status::ExternalFailure(report.substr(6));
  int pid = 0;
  unsigned long long start_ticks = 0;
  if (std::sscanf(report.c_str(), "pid %d %llu", &pid, &start_ticks) != 2 || pid <= 0 || start_ticks == 0)
    return Status::ProtocolError("elsa-monitor reported '" + report + "', not a pid and its start time");
  return ProcessIdentity{pid, start_ticks};
}

Status WriteLine(int fd, const std::string& line) {
  return WriteFully(fd, line + "\n", "a line to elsa-monitor");
}

std::string FdArg(int fd) { return std::to_string(fd); }

}  // namespace

bool ProcessIdentity::Alive() const {
  auto now = IdentifyProcess(pid);
  return now.ok() && now->start_ticks == start_ticks;
}

double ProcessIdentity::AgeSeconds() const {
  auto uptime = ReadFile("/proc/uptime", 256);
  if (!uptime.ok()) return 0;
  const double since_boot = std::strtod(uptime->c_str(), nullptr);
  const double started = static_cast<double>(start_ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  return since_boot > started ? since_boot - started : 0;
}

Result<ProcessIdentity> IdentifyProcess(pid_t pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return Status::NotFound("no process " + std::to_string(pid));
  // The command name in parentheses may hold spaces and parentheses: count fields after the last ')'.
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return Status::Corruption("unreadable /proc/" + std::to_string(pid) + "/stat");
  std::istringstream fields(stat->substr(close + 2));
  std::string field;
  uint64_t start = 0;
  for (int i = 3; i <= 22 && fields >> field; ++i)
    if (i == 22) start = std::strtoull(field.c_str(), nullptr, 10);
  if (start == 0) return Status::Corruption("no start time in /proc/" + std::to_string(pid) + "/stat");
  return ProcessIdentity{pid, start};
}

Status WriteSessionExit(const std::string& path, const SessionExit& exit) {
  std::string text = "code " + std::to_string(exit.exit_code) + "\nsignal " + std::to_string(exit.signal) + "\n";
  if (!exit.note.empty()) text += "note " + exit.note + "\n";
  return WriteFileAtomic(path, text);
}

Result<std::optional<SessionExit>> ReadSessionExit(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0) return std::optional<SessionExit>();
  ELSA_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 64 * 1024));
  SessionExit exit;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("code ", 0) == 0) exit.exit_code = std::atoi(line.c_str() + 5);
    else if (line.rfind("signal ", 0) == 0) exit.signal = std::atoi(line.c_str() + 7);
    else if (line.rfind("note ", 0) == 0) exit.note = line.substr(5);
  }
  return std::optional<SessionExit>(exit);
}

void SettleLease(UniqueFd& lease) {
  if (!lease) return;
  (void)WriteLine(lease.get(), "settle");
  lease.Reset();
}

Result<StartedMonitor> StartMonitoredSession(const std::string& monitor_binary, const SpawnSpec& spec,
                                             const MonitorFiles& files) {
  if (spec.argv.empty()) return Status::InvalidArgument("no command given");
  ELSA_ASSIGN_OR_RETURN(Pipe status, Pipe::Create());
  ELSA_ASSIGN_OR_RETURN(Pipe lease, Pipe::Create());
  // The environment goes in a memory file, not on the command line, where every user's `ps`
  // would read the hub's API token.
  UniqueFd env(static_cast<int>(::syscall(SYS_memfd_create, "elsa-session-env", MFD_CLOEXEC)));
  if (!env) return Status::FromErrno("memfd_create", errno);
  std::string block;
  for (const auto& kv : spec.env) block.append(kv).push_back('\0');
  ELSA_RETURN_IF_ERROR(WriteFully(env.get(), block, "the session's environment"));
  std::vector<std::string> argv = {monitor_binary, "--status-fd", FdArg(status.write_end.get()),
                                   "--lease-fd", FdArg(lease.read_end.get()), "--log", files.log_path,
                                   "--exit-file", files.exit_path, "--env-fd", FdArg(env.get()),
                                   "--workdir", spec.workdir, "--run", "--"};
  argv.insert(argv.end(), spec.argv.begin(), spec.argv.end());
  ELSA_ASSIGN_OR_RETURN(ChildProcess monitor,
                        ChildProcess::Spawn(argv, {status.write_end.get(), lease.read_end.get(), env.get()}, "/dev/null"));
  status.write_end.Reset();
  lease.read_end.Reset();
  ELSA_ASSIGN_OR_RETURN(ProcessIdentity monitor_id, IdentifyProcess(monitor.pid()));
  ELSA_ASSIGN_OR_RETURN(std::string report, ReadReport(status.read_end.get(), kStartTimeoutMs));
  ELSA_ASSIGN_OR_RETURN(ProcessIdentity session, SessionFromReport(report));
  monitor.Release();  // it outlives us by design; MonitorWatch reaps it while we live
  return StartedMonitor{monitor_id, session, std::move(lease.write_end)};
}

Result<std::function<int()>> RestoreMonitor::Launch(const std::vector<std::string>& criu_argv,
                                                    const std::vector<int>& pass_fds) {
  ELSA_ASSIGN_OR_RETURN(Pipe status, Pipe::Create());
  ELSA_ASSIGN_OR_RETURN(Pipe lease, Pipe::Create());
  std::vector<std::string> argv = {binary_, "--status-fd", FdArg(status.write_end.get()),
                                   "--lease-fd", FdArg(lease.read_end.get()), "--log", files_.log_path,
                                   "--exit-file", files_.exit_path, "--output-fd", FdArg(output_.get())};
  std::vector<int> keep = {status.write_end.get(), lease.read_end.get(), output_.get()};
  for (int fd : pass_fds) {
    argv.push_back("--pass-fd");
    argv.push_back(FdArg(fd));
    keep.push_back(fd);
  }
  argv.push_back("--restore");
  argv.push_back("--");
  argv.insert(argv.end(), criu_argv.begin(), criu_argv.end());
  ELSA_ASSIGN_OR_RETURN(monitor_, ChildProcess::Spawn(argv, keep, "/dev/null"));
  output_.Reset();  // the monitor drains it now
  status_ = std::move(status.read_end);
  lease_ = std::move(lease.write_end);
  return std::function<int()>([this] { return WaitForCriu(); });
}

int RestoreMonitor::WaitForCriu() {
  if (criu_status_) return *criu_status_;
  int status = W_EXITCODE(127, 0);
  auto report = ReadReport(status_.get(), 10 * 60 * 1000);
  if (report.ok()) std::sscanf(report->c_str(), "criu %d", &status);
  criu_status_ = status;
  return status;
}

Result<StartedMonitor> RestoreMonitor::Adopt(pid_t restored_pid) {
  if (!monitor_.running()) return Status::FailedPrecondition("no monitor was launched for this restore");
  (void)WaitForCriu();
  ELSA_RETURN_IF_ERROR(WriteLine(lease_.get(), "adopt " + std::to_string(restored_pid)));
  ELSA_ASSIGN_OR_RETURN(ProcessIdentity monitor_id, IdentifyProcess(monitor_.pid()));
  ELSA_ASSIGN_OR_RETURN(std::string report, ReadReport(status_.get(), kStartTimeoutMs));
  ELSA_ASSIGN_OR_RETURN(ProcessIdentity session, SessionFromReport(report));
  monitor_.Release();
  return StartedMonitor{monitor_id, session, std::move(lease_)};
}

MonitorWatch::MonitorWatch(Key, UniqueFd monitor_pidfd, UniqueFd session_pidfd, UniqueFd stop, pid_t monitor_pid,
                           std::string exit_path, ExitFn on_exit)
    : monitor_pidfd_(std::move(monitor_pidfd)), session_pidfd_(std::move(session_pidfd)), stop_(std::move(stop)),
      monitor_pid_(monitor_pid), exit_path_(std::move(exit_path)), on_exit_(std::move(on_exit)) {
  thread_ = std::thread([this] { Run(); });
}

Result<std::unique_ptr<MonitorWatch>> MonitorWatch::Start(const ProcessIdentity& monitor, const ProcessIdentity& session,
                                                          std::string exit_path, ExitFn on_exit) {
  // Opened, then checked: a pidfd of a pid reused meanwhile would fail the start-time check.
  UniqueFd monitor_fd(PidfdOpen(monitor.pid));
  if (monitor_fd && !monitor.Alive()) monitor_fd.Reset();
  UniqueFd session_fd(PidfdOpen(session.pid));
  if (session_fd && !session.Alive()) session_fd.Reset();
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop) return Status::FromErrno("eventfd", errno);
  return std::make_unique<MonitorWatch>(Key{}, std::move(monitor_fd), std::move(session_fd), std::move(stop),
                                        monitor.pid, std::move(exit_path), std::move(on_exit));
}

MonitorWatch::~MonitorWatch() {
  uint64_t one = 1;
  ssize_t ignored = ::write(stop_.get(), &one, sizeof one);
  (void)ignored;
  if (thread_.joinable()) thread_.join();
}

void MonitorWatch::Run() {
  // First the monitor: it ends only after recording its session's exit.
  if (monitor_pidfd_) {
    pollfd fds[2] = {{stop_.get(), POLLIN, 0}, {monitor_pidfd_.get(), POLLIN, 0}};
    int r;
    do r = ::poll(fds, 2, -1); while (r < 0 && errno == EINTR);
    if (r < 0 || fds[0].revents) return;
    siginfo_t info{};  // reaped if it is our child (a new agent's adoptee is init's to reap)
    (void)::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(monitor_pidfd_.get()), &info, WEXITED | WNOHANG);
  }
  auto recorded = ReadSessionExit(exit_path_);
  if (recorded.ok() && recorded->has_value()) {
    on_exit_(**recorded);
    return;
  }
  // The monitor died before its session (killed by hand?): watch the session itself.
  if (session_pidfd_) {
    pollfd fds[2] = {{stop_.get(), POLLIN, 0}, {session_pidfd_.get(), POLLIN, 0}};
    int r;
    do r = ::poll(fds, 2, -1); while (r < 0 && errno == EINTR);
    if (r < 0 || fds[0].revents) return;
  }
  on_exit_({-1, 0, "its monitor (pid " + std::to_string(monitor_pid_) + ") ended before it: exit status unknown"});
}

}  // namespace elsa
