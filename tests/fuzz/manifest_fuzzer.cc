// Manifests come from disk, where they may be damaged or planted: parsing must never crash, and
// whatever it accepts must survive a round trip.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "elsa/engine/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto manifest = elsa::ManifestFromJson(text);
  if (manifest.ok()) {
    auto again = elsa::ManifestFromJson(elsa::ManifestToJson(*manifest));
    if (!again.ok() || again->files.size() != manifest->files.size()) __builtin_trap();
    for (const auto& f : manifest->files)
      if (f.name.find('/') != std::string::npos || f.name == "..") __builtin_trap();
  }
  return 0;
}
