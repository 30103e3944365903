// Small, durable file-system helpers shared by the components.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 64u << 20);

// Writes `contents` to `path` so that readers see either the old file or the whole new one:
// temp file in the same directory, fsync, rename, fsync of the directory.
Status WriteFileAtomic(const std::string& path, std::string_view contents);

Status FsyncPath(const std::string& path);   // a file or a directory
Status MakeDirs(const std::string& path, unsigned mode = 0755);
Status RemoveTree(const std::string& path);  // like rm -rf; missing is fine

Result<UniqueFd> OpenDirectory(const std::string& path);

// A path (a file or a directory tree) removed when this goes out of scope, unless Keep() hands
// it on: an operation's scratch space, gone on every way out of it.
class ScopedPath {
 public:
  ScopedPath() = default;
  explicit ScopedPath(std::string path) : path_(std::move(path)) {}
  // A fresh, empty directory at `path` (what an earlier run left there is removed first).
  static Result<ScopedPath> MakeDirectory(std::string path, unsigned mode = 0700);
  ScopedPath(ScopedPath&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  ScopedPath& operator=(ScopedPath&& other) noexcept;
  ScopedPath(const ScopedPath&) = delete;
  ScopedPath& operator=(const ScopedPath&) = delete;
  ~ScopedPath();

  const std::string& path() const { return path_; }
  // No longer removed here: its new owner removes it.
  std::string Keep();

 private:
  std::string path_;
};

// xxh3-64 of a whole file, streamed; also returns its size.
struct FileDigest {
  uint64_t size = 0;
  uint64_t xxh3 = 0;
};
Result<FileDigest> DigestFile(const std::string& path, bool fsync_file = false);

std::string HexU64(uint64_t v);            // 16 lowercase hex digits
bool ParseHexU64(std::string_view s, uint64_t* out);

// UTC wall-clock time as ISO 8601 with milliseconds ("2026-11-24T09:01:02.345Z").
std::string NowIso8601();
std::string Hostname();
std::string KernelRelease();

}  // namespace elsa
