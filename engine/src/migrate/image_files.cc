#include "migrate/image_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "elsa/fd_io.h"

namespace elsa {

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
    // The sender finishes one file before it starts the next; a peer that opens file after file
    // without ending them would hold one descriptor each.
    if (open_.size() >= kMaxOpenFiles)
      return Status::ProtocolError("more than " + std::to_string(kMaxOpenFiles) + " image files unfinished at once");
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

}  // namespace elsa
