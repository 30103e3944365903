// The wire format of one frame: a 32-byte little-endian header, then `wire_length` payload bytes.
//
//   u8  type        u8 flags      u16 stream
//   u32 wire_length (payload bytes on the wire)
//   u32 raw_length  (payload bytes once decompressed)
//   u64 sequence    (per stream, from 1; for ACK frames: the highest sequence acknowledged)
//   u64 payload_xxh3 (of the wire payload)
//   u32 header_check (low 32 bits of xxh3 of the 28 bytes before it)
//
// The header check catches a damaged length before we trust it; the payload checksum catches
// damage to the payload before it is decompressed or delivered.
#pragma once

#include <cstddef>
#include <cstdint>

#include "elsa/status.h"

namespace elsa::transport {

inline constexpr size_t kFrameHeaderSize = 32;

enum class FrameType : uint8_t {
  kData = 1,   // an opaque message
  kPages = 2,  // a page batch (see page_codec.h)
  kAck = 3,    // cumulative acknowledgement of this stream's frames
  kClose = 4,  // the sender will send nothing more on this stream but ACKs
};

enum FrameFlags : uint8_t {
  kFlagCompressed = 1,  // payload is one lz4 block of raw_length bytes
};

struct FrameHeader {
  FrameType type = FrameType::kData;
  uint8_t flags = 0;
  uint16_t stream = 0;
  uint32_t wire_length = 0;
  uint32_t raw_length = 0;
  uint64_t sequence = 0;
  uint64_t payload_xxh3 = 0;
};

void EncodeFrameHeader(const FrameHeader& header, uint8_t out[kFrameHeaderSize]);

// Checks the header's own checksum, its type and flags, and that its lengths are within
// `max_payload`: a header that fails is a protocol error (or corruption), never trusted.
Result<FrameHeader> DecodeFrameHeader(const uint8_t in[kFrameHeaderSize], size_t max_payload);

uint64_t PayloadChecksum(const void* data, size_t size);

}  // namespace elsa::transport
