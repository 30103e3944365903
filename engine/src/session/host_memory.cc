#include "session/host_memory.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <sstream>

#include "elsa/file_util.h"

namespace elsa {
namespace {

std::string MiB(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

MemoryRoom RoomForMemory() {
  MemoryRoom room;
  if (auto meminfo = ReadFile("/proc/meminfo"); meminfo.ok()) {
    std::istringstream lines(*meminfo);
    for (std::string line; std::getline(lines, line);) {
      unsigned long long kib = 0;
      if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kib) == 1) {
        room = {kib * 1024, "the host's available memory"};
        break;
      }
    }
  }
  auto self = ReadFile("/proc/self/cgroup");
  if (!self.ok()) return room;
  // cgroup v2 ("0::/path": memory.max, "max" when unlimited) or v1 ("N:memory:/path":
  // memory.limit_in_bytes, a huge number when unlimited).
  std::string v2_path, v1_path;
  std::istringstream lines(*self);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("0::", 0) == 0) v2_path = line.substr(3);
    const size_t first = line.find(':');
    if (first != std::string::npos && line.compare(first + 1, 7, "memory:") == 0) v1_path = line.substr(first + 8);
  }
  auto visit = [&](const std::string& mount, std::string path, const char* limit_file, const char* usage_file) {
    for (;;) {
      const std::string dir = mount + (path == "/" ? std::string() : path);
      auto max = ReadFile(dir + "/" + limit_file);
      auto current = ReadFile(dir + "/" + usage_file);
      if (max.ok() && current.ok() && !max->empty() && std::isdigit(static_cast<unsigned char>((*max)[0]))) {
        const uint64_t limit = std::stoull(*max), used = std::stoull(*current);
        const uint64_t left = limit > used ? limit - used : 0;
        if (limit < (1ull << 62) && left < room.bytes)
          room = {left, "cgroup " + path + " (memory limit " + MiB(limit) + ", " + MiB(used) + " used)"};
      }
      if (path == "/" || path.empty()) return;
      const size_t slash = path.rfind('/');
      path = slash == 0 ? "/" : path.substr(0, slash);
    }
  };
  // `ip netns exec` (a simulated host) mounts a fresh /sys without the cgroup filesystems; the
  // host's are still there through init's root.
  const std::string cgroup_root =
      ::access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 || ::access("/sys/fs/cgroup/memory", F_OK) == 0
          ? "/sys/fs/cgroup"
          : "/proc/1/root/sys/fs/cgroup";
  if (!v2_path.empty()) visit(cgroup_root, v2_path, "memory.max", "memory.current");
  if (!v2_path.empty()) visit(cgroup_root + "/unified", v2_path, "memory.max", "memory.current");
  if (!v1_path.empty()) visit(cgroup_root + "/memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes");
  return room;
}

}  // namespace elsa
