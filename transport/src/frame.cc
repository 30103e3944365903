#include "frame.h"

#include <xxhash.h>

#include <cstring>
#include <string>

namespace elsa::transport {
namespace {

template <typename T>
void PutLe(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

template <typename T>
T GetLe(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>(v | (static_cast<T>(p[i]) << (8 * i)));
  return v;
}

uint32_t HeaderCheck(const uint8_t* header) {
  return static_cast<uint32_t>(XXH3_64bits(header, kFrameHeaderSize - 4));
}

}  // namespace

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderSize]) {
  out[0] = static_cast<uint8_t>(h.type);
  out[1] = h.flags;
  PutLe<uint16_t>(out + 2, h.stream);
  PutLe<uint32_t>(out + 4, h.wire_length);
  PutLe<uint32_t>(out + 8, h.raw_length);
  PutLe<uint64_t>(out + 12, h.sequence);
  PutLe<uint64_t>(out + 20, h.payload_xxh3);
  PutLe<uint32_t>(out + 28, HeaderCheck(out));
}

Result<FrameHeader> DecodeFrameHeader(const uint8_t in[kFrameHeaderSize], size_t max_payload) {
  if (GetLe<uint32_t>(in + 28) != HeaderCheck(in))
    return Status::Corruption("frame header checksum mismatch (damaged or not an Elsa frame)");
  FrameHeader h;
  h.type = static_cast<FrameType>(in[0]);
  h.flags = in[1];
  h.stream = GetLe<uint16_t>(in + 2);
  h.wire_length = GetLe<uint32_t>(in + 4);
  h.raw_length = GetLe<uint32_t>(in + 8);
  h.sequence = GetLe<uint64_t>(in + 12);
  h.payload_xxh3 = GetLe<uint64_t>(in + 20);
  if (in[0] < static_cast<uint8_t>(FrameType::kData) || in[0] > static_cast<uint8_t>(FrameType::kClose))
    return Status::ProtocolError("unknown frame type " + std::to_string(in[0]));
  if (h.flags & ~kFlagCompressed) return Status::ProtocolError("unknown frame flags " + std::to_string(h.flags));
  if (h.wire_length > max_payload || h.raw_length > max_payload)
    return Status::ProtocolError("frame of " + std::to_string(std::max(h.wire_length, h.raw_length)) +
                                 " bytes exceeds the limit of " + std::to_string(max_payload));
  const bool compressed = h.flags & kFlagCompressed;
  if (!compressed && h.raw_length != h.wire_length)
    return Status::ProtocolError("uncompressed frame with differing raw and wire lengths");
  if ((h.type == FrameType::kAck || h.type == FrameType::kClose) && h.wire_length != 0)
    return Status::ProtocolError("control frame with a payload");
  return h;
}

uint64_t PayloadChecksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

}  // namespace elsa::transport
