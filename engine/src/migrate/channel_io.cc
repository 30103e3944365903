#include "migrate/channel_io.h"

#include <fcntl.h>
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

#include "elsa/engine/criu_driver.h"
#include "elsa/fd_io.h"
#include "session/tree_memory.h"

namespace elsa {

bool KnownPages::Claim(const page_server::PageHash& hash) {
  std::lock_guard lock(mu_);
  return known_.insert(hash).second;
}

size_t KnownPages::size() const {
  std::lock_guard lock(mu_);
  return known_.size();
}

Result<size_t> ForwardingSink::PutBatch(const uint8_t* pages, size_t count, page_server::PageHash* hashes) {
  transport::PageBatch batch;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* page = pages + i * transport::kPageSize;
    hashes[i] = page_server::HashPage(page);
    // The address field carries the page's place in this batch; the destination stores pages
    // by content and does not need it.
    if (known_.Claim(hashes[i])) batch.AddPage(i * transport::kPageSize, page);
  }
  const size_t sent = batch.size();
  if (sent) ELSA_RETURN_IF_ERROR(channel_.SendPages(std::move(batch)).WithContext("sending pages to the destination"));
  return sent;
}

Result<uint64_t> SendDirectoryFiles(transport::Channel& channel, const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  std::vector<uint8_t> buffer(peer::kMaxChunkBytes);
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename();
    UniqueFd fd(::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return Status::FromErrno("open " + entry.path().string(), errno);
    uint64_t offset = 0;
    for (;;) {
      ssize_t n = ::pread(fd.get(), buffer.data(), buffer.size(), static_cast<off_t>(offset));
      if (n < 0) return Status::FromErrno("read " + entry.path().string(), errno);
      const bool last = static_cast<size_t>(n) < buffer.size();
      ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeFileChunk(name, offset, last,
                                                              {buffer.data(), static_cast<size_t>(n)}),
                                        0));
      offset += static_cast<uint64_t>(n);
      if (last) break;
    }
    total += offset;
  }
  if (ec) return Status::IoError("list " + dir + ": " + ec.message());
  return total;
}

Status FileReceiver::Take(const peer::FileChunk& chunk) {
  if (done_.count(chunk.name)) return Status::ProtocolError("file " + chunk.name + " sent twice");
  auto it = open_.find(chunk.name);
  if (it == open_.end()) {
    if (chunk.offset != 0) return Status::ProtocolError("file " + chunk.name + " does not start at offset 0");
    UniqueFd fd(::open((dir_ + "/" + chunk.name).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return Status::FromErrno("create " + dir_ + "/" + chunk.name, errno);
    it = open_.emplace(chunk.name, Open{std::move(fd), 0}).first;
  }
  if (chunk.offset != it->second.size)
    return Status::ProtocolError("file " + chunk.name + ": chunk at " + std::to_string(chunk.offset) + ", expected " +
                                 std::to_string(it->second.size));
  ELSA_RETURN_IF_ERROR(WriteFully(it->second.fd.get(),
                                  {reinterpret_cast<const char*>(chunk.data.data()), chunk.data.size()},
                                  "write " + chunk.name));
  it->second.size += chunk.data.size();
  bytes_ += chunk.data.size();
  if (chunk.last) {
    open_.erase(it);
    done_.insert(chunk.name);
  }
  return Status::Ok();
}

Status FileReceiver::CheckComplete() const {
  if (!open_.empty()) return Status::ProtocolError("file " + open_.begin()->first + " was not sent to its end");
  if (done_.empty()) return Status::ProtocolError("no image files arrived");
  return Status::Ok();
}

Result<peer::Control> ReceiveControl(transport::Channel& channel, std::chrono::milliseconds timeout) {
  ELSA_ASSIGN_OR_RETURN(transport::Message message, channel.Receive(timeout));
  if (message.kind != transport::Message::Kind::kData)
    return Status::ProtocolError("page data where a control message was expected");
  ELSA_ASSIGN_OR_RETURN(auto decoded, peer::DecodeMessage(message.data));
  auto* control = std::get_if<peer::Control>(&decoded);
  if (!control) return Status::ProtocolError("a file chunk where a control message was expected");
  if (control->op == "error")
    return Status::ExternalFailure("the other agent: " + control->body.value("message", std::string("(no message)")));
  return std::move(*control);
}

PeerReader::PeerReader(transport::Channel& channel, Handlers handlers)
    : channel_(channel), handlers_(std::move(handlers)) {
  thread_ = std::thread([this] { Read(); });
}

PeerReader::~PeerReader() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  thread_.join();
}

Status PeerReader::Dispatch(transport::Message message) {
  if (message.kind == transport::Message::Kind::kPages) {
    if (!handlers_.pages) return Status::ProtocolError("page data where none was expected");
    return handlers_.pages(message.pages);
  }
  ELSA_ASSIGN_OR_RETURN(auto decoded, peer::DecodeMessage(message.data));
  if (auto* refs = std::get_if<std::vector<peer::PageRef>>(&decoded)) {
    if (!handlers_.refs) return Status::ProtocolError("page refs where none were expected");
    return handlers_.refs(*refs);
  }
  auto* control = std::get_if<peer::Control>(&decoded);
  if (!control) return Status::ProtocolError("a file chunk where none was expected");
  if (handlers_.intercept && handlers_.intercept(*control)) return Status::Ok();
  std::lock_guard lock(mu_);
  controls_.push_back(std::move(*control));
  changed_.notify_all();
  return Status::Ok();
}

void PeerReader::Read() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    Result<transport::Message> message = channel_.Receive(std::chrono::milliseconds(100));
    if (message.ok()) {
      std::lock_guard lock(mu_);
      last_message_ = std::chrono::steady_clock::now();
    }
    Status st = message.ok() ? Dispatch(std::move(*message)) : message.status();
    if (!st.ok() && st.code() == StatusCode::kTimeout && !message.ok()) continue;
    if (!st.ok()) {
      std::lock_guard lock(mu_);
      failed_ = st;
      changed_.notify_all();
      return;
    }
  }
}

Result<peer::Control> PeerReader::NextControl(std::chrono::milliseconds idle) {
  std::unique_lock lock(mu_);
  const auto called = std::chrono::steady_clock::now();
  for (;;) {
    const auto since = std::max(called, last_message_);
    if (changed_.wait_until(lock, since + idle, [&] { return !controls_.empty() || !failed_.ok(); })) break;
    if (std::max(called, last_message_) + idle <= std::chrono::steady_clock::now())
      return Status::Timeout("no word from the other agent in " + std::to_string(idle.count() / 1000.0).substr(0, 4) +
                             " s");
  }
  if (controls_.empty()) return failed_;
  peer::Control control = std::move(controls_.front());
  controls_.pop_front();
  if (control.op == "error")
    return Status::ExternalFailure("the other agent: " + control.body.value("message", std::string("(no message)")));
  return control;
}

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

}  // namespace elsa
