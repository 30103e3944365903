#include "elsa/engine/criu_driver.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <sstream>

#include "criu/criu_options.h"
#include "elsa/child_process.h"
#include "elsa/file_util.h"
#include "elsa/unique_fd.h"

namespace elsa {
namespace {

constexpr int kRpcTimeoutMs = 10 * 60 * 1000;  // a dump of tens of GiB still fits

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// One `criu swrk` child and our end of its RPC socket. Killed and reaped if still running when
// destroyed, so a failed call never leaves CRIU behind.
class SwrkProcess {
 public:
  static Result<SwrkProcess> Start(const std::string& binary, std::vector<int> pass_fds,
                                   const SwrkLauncher& launcher = {}) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      return Status::FromErrno("socketpair for criu swrk", errno);
    UniqueFd ours(sv[0]), theirs(sv[1]);
    pass_fds.push_back(theirs.get());
    const std::vector<std::string> argv = {binary, "swrk", std::to_string(theirs.get())};
    if (launcher) {
      ELSA_ASSIGN_OR_RETURN(std::function<int()> wait, launcher(argv, pass_fds));
      return SwrkProcess(ChildProcess(), std::move(wait), std::move(ours));
    }
    ELSA_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(argv, pass_fds));
    return SwrkProcess(std::move(child), {}, std::move(ours));
  }

  Status Send(const criu_req& req) {
    std::string bytes;
    if (!req.SerializeToString(&bytes)) return Status::Internal("cannot encode CRIU request");
    if (::send(sock_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))
      return Status::FromErrno("send to criu swrk", errno);
    return Status::Ok();
  }

  // Next response; an Unavailable status when CRIU closed the socket (it exited).
  Result<criu_resp> Receive() {
    pollfd p{sock_.get(), POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, kRpcTimeoutMs); while (r < 0 && errno == EINTR);
    if (r == 0) return Status::Timeout("CRIU did not answer within " + std::to_string(kRpcTimeoutMs / 1000) + " s");
    if (r < 0) return Status::FromErrno("poll criu socket", errno);
    std::string buf(1 << 20, '\0');
    ssize_t n = ::recv(sock_.get(), buf.data(), buf.size(), MSG_TRUNC);
    if (n < 0) return Status::FromErrno("recv from criu", errno);
    if (n == 0) return Status::Unavailable("criu exited without answering");
    if (static_cast<size_t>(n) > buf.size()) return Status::Internal("CRIU response larger than 1 MiB");
    criu_resp resp;
    if (!resp.ParseFromArray(buf.data(), static_cast<int>(n)))
      return Status::Corruption("cannot decode CRIU's RPC response");
    return resp;
  }

  // Reaps CRIU (or asks whoever launched it); returns its wait status.
  int Wait() { return launched_wait_ ? launched_wait_() : child_.Wait(); }

 private:
  SwrkProcess(ChildProcess child, std::function<int()> launched_wait, UniqueFd sock)
      : child_(std::move(child)), launched_wait_(std::move(launched_wait)), sock_(std::move(sock)) {}
  ChildProcess child_;
  std::function<int()> launched_wait_;
  UniqueFd sock_;
};

std::string LogPath(int work_dir_fd, const char* name) {
  return "/proc/self/fd/" + std::to_string(work_dir_fd) + "/" + name;
}

// Sends `req` and runs the conversation to its final response, answering notifications.
Result<CriuOutcome> Converse(const std::string& binary, const criu_req& req,
                             const std::vector<int>& pass_fds, int work_dir_fd,
                             const char* log_name, const char* what, const CriuNotifyFn& notify,
                             const SwrkLauncher& launcher = {}) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };

  auto fail = [&](Status status) -> Status {
    std::string msg = "criu " + std::string(what) + " failed: " + status.message();
    if (work_dir_fd >= 0) {
      auto log = ReadFile(LogPath(work_dir_fd, log_name));
      if (log.ok()) {
        std::string summary = SummarizeCriuLog(*log);
        if (!summary.empty()) msg += "\nfrom CRIU's log (" + std::string(log_name) + "):\n" + summary;
      }
    }
    return Status(status.code() == StatusCode::kOk ? StatusCode::kExternalFailure : status.code(), msg);
  };

  ELSA_ASSIGN_OR_RETURN(SwrkProcess criu, SwrkProcess::Start(binary, pass_fds, launcher));
  if (Status s = criu.Send(req); !s.ok()) return fail(s);

  CriuOutcome outcome;
  for (;;) {
    Result<criu_resp> resp = criu.Receive();
    if (!resp.ok()) {
      if (resp.status().code() == StatusCode::kUnavailable)
        return fail(Status::ExternalFailure("criu " + DescribeWaitStatus(criu.Wait())));
      return fail(resp.status());
    }
    if (resp->type() == NOTIFY) {
      const std::string& event = resp->notify().script();
      outcome.notifications.emplace_back(event, elapsed());
      if (notify) notify(event);
      criu_req ack;
      ack.set_type(NOTIFY);
      ack.set_notify_success(true);
      if (Status s = criu.Send(ack); !s.ok()) return fail(s);
      continue;
    }
    if (!resp->success()) {
      std::string detail = resp->has_cr_errmsg() ? resp->cr_errmsg() : "no reason given";
      if (resp->has_cr_errno() && resp->cr_errno() != 0)
        detail += " (" + std::string(std::strerror(resp->cr_errno())) + ")";
      return fail(Status::ExternalFailure(detail));
    }
    if (resp->type() == RESTORE) outcome.restored_pid = resp->restore().pid();
    outcome.seconds = elapsed();
    criu.Wait();
    return outcome;
  }
}

}  // namespace

Result<std::string> CriuDriver::Locate(const CriuLocation& where) {
  std::vector<std::string> looked;
  if (!where.explicit_binary.empty()) {
    if (IsExecutableFile(where.explicit_binary)) return where.explicit_binary;
    return Status::FailedPrecondition("CRIU binary " + where.explicit_binary +
                                      " (from --criu or $ELSA_CRIU) does not exist or is not executable");
  }
  if (!where.prefix.empty()) {
    std::string candidate = where.prefix + "/sbin/criu";
    if (IsExecutableFile(candidate)) return candidate;
    looked.push_back(candidate);
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env ? path_env : "";
  std::stringstream dirs(path);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/criu";
    if (IsExecutableFile(candidate)) return candidate;
  }
  looked.push_back("$PATH (" + path + ")");
  std::string msg = "CRIU not found; looked at ";
  for (size_t i = 0; i < looked.size(); ++i) msg += (i ? ", " : "") + looked[i];
  msg += ". Run tools/bootstrap as root: it builds CRIU 4.2.1 from Debian's source package into "
         "the project's prefix (or point --criu / $ELSA_CRIU at a CRIU >= 4.2.1).";
  return Status::FailedPrecondition(msg);
}

Result<std::string> CriuDriver::Version() const {
  criu_req req;
  req.set_type(VERSION);
  ELSA_ASSIGN_OR_RETURN(SwrkProcess criu, SwrkProcess::Start(binary_, {}));
  ELSA_RETURN_IF_ERROR(criu.Send(req));
  ELSA_ASSIGN_OR_RETURN(criu_resp resp, criu.Receive());
  if (!resp.success() || !resp.has_version())
    return Status::ExternalFailure("criu (" + binary_ + ") did not report its version");
  const criu_version& v = resp.version();
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict inside
  // `std::to_string(..) + "." + ...` (a known libstdc++ diagnostic bug, GCC PR 105329).
  std::string s = std::to_string(v.major_number());
  s += '.';
  s += std::to_string(v.minor_number());
  if (v.has_sublevel()) {
    s += '.';
    s += std::to_string(v.sublevel());
  }
  return s;
}

Result<CriuOutcome> CriuDriver::Dump(const CriuDumpRequest& request, const CriuNotifyFn& notify) const {
  std::vector<int> fds = {request.images_dir_fd, request.work_dir_fd};
  for (int fd : {request.page_server_fd, request.lazy_pages_fd})
    if (fd >= 0) fds.push_back(fd);
  return Converse(binary_, BuildDumpRequest(request), fds, request.work_dir_fd, kDumpLog, "dump", notify);
}

Result<CriuOutcome> CriuDriver::Restore(const CriuRestoreRequest& request,
                                        const CriuNotifyFn& notify) const {
  std::vector<int> fds = {request.images_dir_fd, request.work_dir_fd};
  for (const auto& [key, fd] : request.inherit_fds) fds.push_back(fd);
  return Converse(binary_, BuildRestoreRequest(request), fds, request.work_dir_fd, kRestoreLog,
                  "restore", notify, request.launcher);
}

std::string CriuNetworkLockTableOf(const std::string& work_dir) {
  Result<std::string> log = ReadFile(work_dir + "/" + CriuDriver::kDumpLog);
  return log.ok() ? CriuNetworkLockTable(*log) : std::string();
}

std::string CriuNetworkLockTable(const std::string& log_text) {
  // CRIU logs its run id first thing; the dump worker's is the last one. The table name is
  // "CRIU-" + the id cut to fit CRIU's 32-byte buffer (netfilter.c, nftables_get_table).
  static constexpr std::string_view kMarker = "CRIU run id = ";
  size_t at = log_text.rfind(kMarker);
  if (at == std::string::npos) return "";
  size_t start = at + kMarker.size();
  size_t end = log_text.find('\n', start);
  std::string run_id = log_text.substr(start, end == std::string::npos ? std::string::npos : end - start);
  constexpr size_t kTableBuffer = 32;
  std::string table = "inet CRIU-" + run_id;
  if (table.size() > kTableBuffer - 1) table.resize(kTableBuffer - 1);
  for (char c : run_id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return "";
  return table;
}

Status DropCriuNetworkLock(const std::string& table) {
  if (table.rfind("inet CRIU-", 0) != 0) return Status::InvalidArgument("not a CRIU lock table: " + table);
  const std::string name = table.substr(5);
  std::string nft;
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"})
    if (IsExecutableFile(std::string(dir) + "/nft")) {
      nft = std::string(dir) + "/nft";
      break;
    }
  if (nft.empty()) return Status::FailedPrecondition("nft not found: cannot remove CRIU's network lock " + table);
  auto run = [&](const char* verb) -> Result<int> {
    ELSA_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn({nft, verb, "table", "inet", name}, {}, "/dev/null"));
    return child.Wait();
  };
  // A missing table is the usual case (the checkpoint was restored, which removes it): nothing
  // to do. One that is there must go.
  ELSA_ASSIGN_OR_RETURN(int listed, run("list"));
  if (listed != 0) return Status::Ok();
  ELSA_ASSIGN_OR_RETURN(int deleted, run("delete"));
  if (deleted != 0)
    return Status::ExternalFailure("nft delete table " + table + " " + DescribeWaitStatus(deleted) +
                                   ": the session's connections stay blocked until it is removed");
  return Status::Ok();
}

std::string SummarizeCriuLog(const std::string& log_text, size_t max_lines) {
  std::vector<std::string> lines;
  std::stringstream in(log_text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<size_t> picked;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find("Error (") != std::string::npos || lines[i].find("Error:") != std::string::npos) {
      if (i > 0 && (picked.empty() || picked.back() < i - 1)) picked.push_back(i - 1);
      if (picked.empty() || picked.back() < i) picked.push_back(i);
    }
  }
  if (picked.empty()) {  // no error lines: the tail is the best we have
    for (size_t i = lines.size() > 5 ? lines.size() - 5 : 0; i < lines.size(); ++i) picked.push_back(i);
  }
  if (picked.size() > max_lines) picked.erase(picked.begin(), picked.end() - static_cast<long>(max_lines));
  std::string out;
  for (size_t i : picked) out += "  " + lines[i] + "\n";
  return out;
}

}  // namespace elsa

namespace elsa {

Result<ChildProcess> CriuDriver::StartLazyPages(const std::string& dir, int page_server_fd) const {
  ELSA_ASSIGN_OR_RETURN(ChildProcess daemon,
                        ChildProcess::Spawn({binary_, "lazy-pages", "--page-server", "--ps-socket",
                                             std::to_string(page_server_fd), "-D", dir, "-W", dir, "-v4", "-o",
                                             kLazyPagesLog},
                                            {page_server_fd}));
  // It is ready once its socket exists; the restore connects to it there. Woken by the socket's
  // creation (inotify) or the daemon's exit (pidfd), not by a polling tick: this is on a lazy
  // restore's path to a running session.
  const std::string socket_path = dir + "/lazy-pages.socket";
  UniqueFd watch(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!watch || ::inotify_add_watch(watch.get(), dir.c_str(), IN_CREATE | IN_MOVED_TO) < 0)
    return Status::FromErrno("watching " + dir + " for criu lazy-pages' socket", errno);
  UniqueFd exited(static_cast<int>(::syscall(SYS_pidfd_open, daemon.pid(), 0)));
  if (!exited) return Status::FromErrno("pidfd_open for criu lazy-pages", errno);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::access(socket_path.c_str(), F_OK) != 0) {
    if (auto status = daemon.TryWait()) {
      std::string msg = "criu lazy-pages " + DescribeWaitStatus(*status) + " before listening";
      if (auto log = ReadFile(dir + "/" + kLazyPagesLog); log.ok()) msg += "\nfrom its log:\n" + SummarizeCriuLog(*log);
      return Status::ExternalFailure(msg);
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Status::Timeout("criu lazy-pages did not listen in " + dir + " within 30 s");
    pollfd fds[2] = {{watch.get(), POLLIN, 0}, {exited.get(), POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR)
      return Status::FromErrno("waiting for criu lazy-pages", errno);
    char drain[4096];
    while (::read(watch.get(), drain, sizeof drain) > 0) {
    }
  }
  return daemon;
}

}  // namespace elsa
