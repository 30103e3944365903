// Page store segments are read back from disk, where a crash can tear them and a bad disk or a
// careless hand can damage them: opening a store over any bytes must index only intact records,
// never crash, and leave a store that still stores and serves pages.
// The input is one segment file; with its first byte odd, it is split into two (an older and the
// newest), which Open treats differently.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz_scratch.h"
#include "elsa/page_server/page_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::page_server;
  static const elsa::fuzz::ScratchDir root("page-store");
  const std::string dir = root.path + "/store";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  if (size > 0 && (data[0] & 1)) {
    const size_t split = size * data[0] / 256;
    elsa::fuzz::WriteFileOrDie(dir + "/seg-000001.pack", data, split);
    elsa::fuzz::WriteFileOrDie(dir + "/seg-000002.pack", data + split, size - split);
  } else {
    elsa::fuzz::WriteFileOrDie(dir + "/seg-000001.pack", data, size);
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
