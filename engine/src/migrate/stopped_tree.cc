#include "migrate/stopped_tree.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <vector>

#include "elsa/engine/criu_driver.h"
#include "elsa/unique_fd.h"
#include "session/tree_memory.h"

namespace elsa {

namespace {

// CRIU puts every established TCP connection of a dumped tree into repair mode and, for a tree
// it leaves stopped, never takes them out: resumed as they are, they would neither send nor
// receive. We do what CRIU does on its own rollback, through pidfd_getfd.
Status LeaveRepairMode(const std::vector<pid_t>& pids) {
  std::set<ino_t> done;
  Status first_error = Status::Ok();
  for (pid_t pid : pids) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!pidfd) continue;  // exited
    const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(fd_dir, ec)) {
      std::error_code link_ec;
      const std::string target = std::filesystem::read_symlink(entry.path(), link_ec);
      if (link_ec || target.rfind("socket:", 0) != 0) continue;
      const int number = std::atoi(entry.path().filename().c_str());
      UniqueFd sock(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0)));
      if (!sock) continue;
      struct stat st {};
      if (::fstat(sock.get(), &st) != 0 || !done.insert(st.st_ino).second) continue;
      int protocol = 0, repair = 0;
      socklen_t len = sizeof protocol;
      if (::getsockopt(sock.get(), SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0 || protocol != IPPROTO_TCP) continue;
      len = sizeof repair;
      if (::getsockopt(sock.get(), SOL_TCP, TCP_REPAIR, &repair, &len) != 0 || repair == 0) continue;
      const int off = 0;
      if (::setsockopt(sock.get(), SOL_TCP, TCP_REPAIR, &off, sizeof off) != 0 && first_error.ok())
        first_error = Status::FromErrno("taking a connection of pid " + std::to_string(pid) + " out of repair mode", errno);
    }
  }
  return first_error;
}

}  // namespace

Status ResumeStoppedTree(pid_t root, const std::string& network_lock_table) {
  const std::vector<pid_t> pids = TreePids(root);
  Status repaired = LeaveRepairMode(pids);
  Status unlocked = network_lock_table.empty() ? Status::Ok() : DropCriuNetworkLock(network_lock_table);
  for (pid_t pid : pids) ::kill(pid, SIGCONT);
  return repaired.ok() ? unlocked : repaired;
}

void StoppedTree::Take(pid_t root, std::string network_lock_table) {
  root_ = root;
  lock_table_ = std::move(network_lock_table);
}

void StoppedTree::Settled() {
  if (!record_.empty()) (void)::unlink(record_.c_str());
}

Status StoppedTree::Resume() {
  if (!held()) return Status::Ok();
  const pid_t root = root_;
  root_ = 0;
  Status resumed = ResumeStoppedTree(root, lock_table_);
  Settled();
  return resumed;
}

void StoppedTree::EndKeepingNetworkLock() {
  if (!held()) return;
  ::kill(root_, SIGKILL);
  ::kill(root_, SIGCONT);
  root_ = 0;
  Settled();
}

void StoppedTree::End() {
  if (!held()) return;
  EndKeepingNetworkLock();
  if (!lock_table_.empty())
    if (Status dropped = DropCriuNetworkLock(lock_table_); !dropped.ok())
      log_.Warning("dropping CRIU's network lock " + lock_table_ + ": " + dropped.ToString());
}

StoppedTree::~StoppedTree() {
  if (Status resumed = Resume(); !resumed.ok()) log_.Error("resuming the stopped session: " + resumed.ToString());
}

}  // namespace elsa
