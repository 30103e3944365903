// A stranger's first bytes: HELLO decoding must never crash; what it accepts is well-formed.
#include <cstddef>
#include <cstdint>
#include <span>

#include "handshake.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::transport;
  auto hello = DecodeHello(std::span<const uint8_t>(data, size));
  if (hello.ok()) {
    if (hello->stream_count < 1 || hello->stream_count > kMaxStreams || hello->stream_index >= hello->stream_count)
      __builtin_trap();
    auto again = EncodeHello(*hello);
    for (size_t i = 0; i < again.size(); ++i)
      if (again[i] != data[i]) __builtin_trap();
  }
  return 0;
}
