// Bytes off the network: a frame header, then a page payload, must decode or fail cleanly.
#include <cstddef>
#include <cstdint>
#include <span>

#include "frame.h"
#include "page_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::transport;
  if (size >= kFrameHeaderSize) {
    auto header = DecodeFrameHeader(data, 16u << 20);
    if (header.ok() && header->wire_length > (16u << 20)) __builtin_trap();
  }
  std::span<const uint8_t> rest(data, size);
  // What a frame decodes to is bounded by what a frame may carry: zero-page entries (8 bytes
  // each on the wire, 4 KiB decoded) cannot blow a small frame up into gigabytes.
  constexpr size_t kMaxFrame = 16u << 20;
  auto batch = DecodePagePayload(rest, MaxPagesPerFrame(kMaxFrame));
  if (batch.ok() && batch->bytes() != batch->size() * kPageSize) __builtin_trap();
  if (batch.ok() && batch->bytes() > kMaxFrame) __builtin_trap();
  if (size > 4) {  // and as an lz4 block claiming some raw size
    auto raw = Decompress(rest.subspan(4), static_cast<size_t>(data[0] | (data[1] << 8)));
    (void)raw;
  }
  return 0;
}
