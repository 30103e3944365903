// Page store segments are read back from disk, where a crash can tear them and a bad disk or a
// careless hand can damage them: opening a store over any bytes must index only intact records,
// never crash, and leave a store that still stores and serves pages.
// The input is one segment file; with its first byte odd, it is split into two (an older and the
// newest), which Open treats differently.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "elsa/page_server/page_store.h"

namespace {

void WriteSegment(const std::string& path, const uint8_t* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  ::close(fd);
}

// One scratch directory per fuzzing process, removed when it exits (libFuzzer ends with exit(),
// which runs static destructors).
struct ScratchDir {
  std::string path;
  ScratchDir() {
    char tmpl[] = "/tmp/elsa-fuzz-page-store-XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::page_server;
  static const ScratchDir root;
  const std::string dir = root.path + "/store";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  if (size > 0 && (data[0] & 1)) {
    const size_t split = size * data[0] / 256;
    WriteSegment(dir + "/seg-000001.pack", data, split);
    WriteSegment(dir + "/seg-000002.pack", data + split, size - split);
  } else {
    WriteSegment(dir + "/seg-000001.pack", data, size);
  }
  auto store = PageStore::Open(dir);
  if (!store.ok()) return 0;
  // Whatever was indexed, the store goes on working.
  std::vector<uint8_t> page(4096), back(4096);
  for (size_t i = 0; i < page.size(); ++i) page[i] = static_cast<uint8_t>(i * 31 + size);
  auto hash = (*store)->Put(page.data());
  if (hash.ok()) {
    if (!(*store)->Get(*hash, back.data()).ok() || back != page) __builtin_trap();
  }
  (void)(*store)->Sync();
  return 0;
}
