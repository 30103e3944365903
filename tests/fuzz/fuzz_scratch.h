// For fuzz targets whose parser reads files: a scratch directory per fuzzing process (removed
// when it exits: libFuzzer ends with exit(), which runs static destructors) and a file writer
// that aborts rather than fuzz on a half-written input.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace elsa::fuzz {

inline void WriteFileOrDie(const std::string& path, const uint8_t* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  ::close(fd);
}

struct ScratchDir {
  std::string path;
  explicit ScratchDir(const char* name) {
    std::string tmpl = std::string("/tmp/elsa-fuzz-") + name + "-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace elsa::fuzz
