// Helpers for the migration internals' tests: processes whose memory the test knows, pages whose
// bytes say where they belong, hand-built pagemap images.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/file_util.h"
#include "elsa/page_server/protocol.h"
#include "elsa/unique_fd.h"
#include "test_util.h"

namespace elsa::testing {

inline constexpr size_t kPage = 4096;

// 4 KiB that name (seed, index): every word differs from every other page's.
inline std::vector<uint8_t> PatternPage(uint64_t seed, uint64_t index) {
  std::vector<uint8_t> page(kPage);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (index + 1) * 0xBF58476D1CE4E5B9ull;
  for (size_t at = 0; at < kPage; at += 8) {
    x ^= x >> 31;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 29;
    const uint64_t word = x + at;
    std::memcpy(page.data() + at, &word, 8);
  }
  return page;
}

// tests/migrate/memory_holder.c: a process (and optionally its child) holding anonymous regions
// at addresses it reports, untouched until the test writes into them. Killed, and its child
// with it, when this ends, pass or fail.
class MemoryHolder {
 public:
  struct Process {
    pid_t pid = 0;
    std::vector<uint64_t> regions;  // start addresses, in the order asked for
  };

  // `pages`: the holder's regions, in pages; `child_pages`: its child's (none: no child).
  static void Start(const std::vector<size_t>& pages, const std::vector<size_t>& child_pages, MemoryHolder* out) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    std::vector<std::string> argv = {ELSA_MEMORY_HOLDER, std::to_string(write_end.get())};
    for (size_t p : pages) argv.push_back(std::to_string(p));
    if (!child_pages.empty()) {
      argv.push_back("+");
      for (size_t p : child_pages) argv.push_back(std::to_string(p));
    }
    auto child = ChildProcess::Spawn(argv, {write_end.get()});
    ASSERT_TRUE(child.ok()) << child.status().message();
    out->process_ = std::move(*child);
    write_end.Reset();
    const size_t lines = child_pages.empty() ? 1 : 2;
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) < lines) {
      pollfd p{read_end.get(), POLLIN, 0};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      ASSERT_GT(left.count(), 0) << "the memory holder did not report its regions: " << text;
      ASSERT_GE(::poll(&p, 1, static_cast<int>(left.count())), 0);
      char buffer[4096];
      const ssize_t n = ::read(read_end.get(), buffer, sizeof buffer);
      ASSERT_GT(n, 0) << "the memory holder ended before reporting its regions: " << text;
      text.append(buffer, static_cast<size_t>(n));
    }
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      std::istringstream fields(line);
      Process p;
      fields >> p.pid;
      for (std::string hex; fields >> hex;) p.regions.push_back(std::stoull(hex, nullptr, 16));
      if (p.pid == out->process_.pid()) {
        ASSERT_EQ(p.regions.size(), pages.size()) << line;
        out->holder_ = p;
      } else {
        ASSERT_EQ(p.regions.size(), child_pages.size()) << line;
        out->child_ = p;
      }
    }
    ASSERT_EQ(out->holder_.pid, out->process_.pid()) << text;
    ASSERT_EQ(out->child_.pid != 0, !child_pages.empty()) << text;
  }

  MemoryHolder() = default;
  MemoryHolder(const MemoryHolder&) = delete;
  MemoryHolder& operator=(const MemoryHolder&) = delete;
  ~MemoryHolder() {
    if (child_.pid > 0) ::kill(child_.pid, SIGKILL);  // reaped by init once the holder is gone
  }

  const Process& holder() const { return holder_; }
  const Process& child() const { return child_; }

  // Writes `bytes` at `address` of `pid` (one of the two): the page becomes present there.
  static void Write(pid_t pid, uint64_t address, const std::vector<uint8_t>& bytes) {
    iovec local{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    iovec remote{reinterpret_cast<void*>(address), bytes.size()};
    ASSERT_EQ(::process_vm_writev(pid, &local, 1, &remote, 1, 0), static_cast<ssize_t>(bytes.size()))
        << "pid " << pid << " at 0x" << std::hex << address << ": " << std::strerror(errno);
  }
  static std::vector<uint8_t> Read(pid_t pid, uint64_t address, size_t size) {
    std::vector<uint8_t> bytes(size);
    iovec local{bytes.data(), size};
    iovec remote{reinterpret_cast<void*>(address), size};
    EXPECT_EQ(::process_vm_readv(pid, &local, 1, &remote, 1, 0), static_cast<ssize_t>(size));
    return bytes;
  }

  // Stops both (SIGSTOP), as CRIU leaves a dumped tree.
  void Stop() const {
    ::kill(holder_.pid, SIGSTOP);
    if (child_.pid > 0) ::kill(child_.pid, SIGSTOP);
  }

 private:
  ChildProcess process_;  // the holder
  Process holder_;
  Process child_;
};

// Writes `images_dir`/pagemap-`pid`.img with these entries (as CRIU would).
inline void WritePagemap(const std::string& images_dir, uint64_t pid,
                         const std::vector<page_server::PagemapEntry>& entries) {
  const std::vector<uint8_t> bytes = page_server::EncodePagemapImage(1, entries);
  WriteTextFile(images_dir + "/pagemap-" + std::to_string(pid) + ".img", std::string(bytes.begin(), bytes.end()));
}

inline page_server::PagemapEntry Lazy(uint64_t vaddr, uint64_t pages) { return {vaddr, pages, page_server::kPeLazy}; }
inline page_server::PagemapEntry Present(uint64_t vaddr, uint64_t pages) {
  return {vaddr, pages, page_server::kPePresent};
}

}  // namespace elsa::testing
