#include "session/tree_memory.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "elsa/file_util.h"
#include "elsa/uninitialized.h"
#include "elsa/unique_fd.h"

namespace elsa {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPresent = 1ull << 63;
constexpr uint64_t kSwapped = 1ull << 62;
constexpr size_t kPagemapChunk = 16384;  // entries read at once: 64 MiB of address space
constexpr size_t kMaxIov = 1024;         // IOV_MAX

// Batches present pages and reads them with one process_vm_readv per batch.
class BatchReader {
 public:
  BatchReader(size_t batch_pages, const std::function<Status(const uint8_t*, size_t)>& consume)
      : batch_pages_(batch_pages), consume_(consume) {
    buffer_.resize(batch_pages * kPage);
  }

  Status Add(pid_t pid, uint64_t address) {
    if (pid != pid_) ELSA_RETURN_IF_ERROR(Flush());
    pid_ = pid;
    if (!remote_.empty() && remote_.back().iov_len < (64u << 20) &&
        reinterpret_cast<uint64_t>(remote_.back().iov_base) + remote_.back().iov_len == address) {
      remote_.back().iov_len += kPage;
    } else {
      if (remote_.size() == kMaxIov) ELSA_RETURN_IF_ERROR(Flush());
      remote_.push_back({reinterpret_cast<void*>(address), kPage});
    }
    if (++pages_ == batch_pages_) return Flush();
    return Status::Ok();
  }

  Status Flush() {
    if (pages_ == 0) return Status::Ok();
    iovec local{buffer_.data(), pages_ * kPage};
    ssize_t n = ::process_vm_readv(pid_, &local, 1, remote_.data(), remote_.size(), 0);
    // A short read means a mapping went away under us: keep what arrived, whole pages only.
    const size_t got = n > 0 ? static_cast<size_t>(n) / kPage : 0;
    Status st = got ? consume_(buffer_.data(), got) : Status::Ok();
    stats.pages_present += got;
    stats.bytes_read += got * kPage;
    remote_.clear();
    pages_ = 0;
    return st;
  }

  TreeScanStats stats;

 private:
  size_t batch_pages_;
  const std::function<Status(const uint8_t*, size_t)>& consume_;
  RawBytes buffer_;
  std::vector<iovec> remote_;
  size_t pages_ = 0;
  pid_t pid_ = 0;
};

}  // namespace

std::vector<MemoryRange> PrivateWritableRanges(const std::string& maps_text) {
  std::vector<MemoryRange> out;
  std::istringstream in(maps_text);
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long start = 0, end = 0;
    char perms[8] = {};
    int name_at = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %*s %*s %*s %n", &start, &end, perms, &name_at) < 3) continue;
    if (start >= end || perms[1] != 'w' || perms[3] != 'p') continue;
    const std::string name = name_at > 0 && static_cast<size_t>(name_at) <= line.size() ? line.substr(name_at) : "";
    if (name == "[vvar]" || name == "[vsyscall]" || name == "[vdso]" || name.rfind("/dev/", 0) == 0) continue;
    out.push_back({start, end});
  }
  return out;
}

std::vector<pid_t> TreePids(pid_t root) {
  std::vector<pid_t> out{root};
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string task_dir = "/proc/" + std::to_string(out[i]) + "/task";
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator(task_dir, ec)) {
      auto children = ReadFile(task.path().string() + "/children", 1 << 20);
      if (!children.ok()) continue;
      std::istringstream in(*children);
      pid_t child;
      while (in >> child) out.push_back(child);
    }
  }
  return out;
}

Result<TreeScanStats> ScanTreeMemory(pid_t root, size_t batch_pages,
                                     const std::function<Status(const uint8_t* pages, size_t count)>& consume) {
  const auto start = std::chrono::steady_clock::now();
  BatchReader reader(batch_pages, consume);
  std::vector<uint64_t> entries(kPagemapChunk);
  for (pid_t pid : TreePids(root)) {
    auto maps = ReadFile("/proc/" + std::to_string(pid) + "/maps", 64u << 20);
    if (!maps.ok()) continue;  // exited meanwhile
    UniqueFd pagemap(::open(("/proc/" + std::to_string(pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
    if (!pagemap) continue;
    for (const MemoryRange& range : PrivateWritableRanges(*maps)) {
      for (uint64_t at = range.start; at < range.end;) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>((range.end - at) / kPage, kPagemapChunk));
        ssize_t n = ::pread(pagemap.get(), entries.data(), want * sizeof(uint64_t),
                            static_cast<off_t>(at / kPage * sizeof(uint64_t)));
        if (n <= 0) break;
        const size_t got = static_cast<size_t>(n) / sizeof(uint64_t);
        for (size_t i = 0; i < got; ++i)
          if (entries[i] & (kPresent | kSwapped)) ELSA_RETURN_IF_ERROR(reader.Add(pid, at + i * kPage));
        at += got * kPage;
      }
    }
    ELSA_RETURN_IF_ERROR(reader.Flush());
  }
  ELSA_RETURN_IF_ERROR(reader.Flush());
  reader.stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return reader.stats;
}

std::map<uint64_t, pid_t> HostPidsByVirtualPid(pid_t root) {
  std::map<uint64_t, pid_t> out;
  for (pid_t pid : TreePids(root)) {
    auto status = ReadFile("/proc/" + std::to_string(pid) + "/status");
    if (!status.ok()) continue;  // exited
    std::istringstream lines(*status);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("NSpid:", 0) != 0) continue;
      std::istringstream fields(line.substr(6));
      uint64_t innermost = 0;
      for (uint64_t v; fields >> v;) innermost = v;
      if (innermost) out[innermost] = pid;
      break;
    }
  }
  return out;
}

uint64_t TreeResidentBytes(pid_t root) {
  uint64_t total = 0;
  for (pid_t pid : TreePids(root)) {
    auto rollup = ReadFile("/proc/" + std::to_string(pid) + "/smaps_rollup");
    if (!rollup.ok()) continue;
    std::istringstream lines(*rollup);
    for (std::string line; std::getline(lines, line);) {
      unsigned long long kib = 0;
      if (std::sscanf(line.c_str(), "Pss: %llu kB", &kib) == 1) {
        total += kib * 1024;
        break;
      }
    }
  }
  return total;
}

}  // namespace elsa
