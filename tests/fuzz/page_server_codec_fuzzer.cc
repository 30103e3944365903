// What CRIU or a stranger sends a page server, and pagemap images read back from a store:
// decoding must never crash; what it accepts must survive a round trip.
#include <cstddef>
#include <cstdint>
#include <span>

#include "elsa/page_server/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::page_server;
  std::span<const uint8_t> bytes(data, size);
  if (size >= kRequestSize) {
    Request r = DecodeRequest(bytes.first<kRequestSize>());
    auto again = EncodeRequest(r);
    for (size_t i = 0; i < 4; ++i)
      if (again[i] != data[i]) __builtin_trap();
    (void)DecodeDstId(r.dst_id);
  }
  auto image = DecodePagemapImage(bytes);
  if (image.ok()) {
    auto back = DecodePagemapImage(EncodePagemapImage(image->pages_id, image->entries));
    if (!back.ok() || back->entries != image->entries) __builtin_trap();
  }
  return 0;
}
