// The payload of a PAGES frame, before compression:
//   u32 count, u32 reserved (0), count x u64 (page address | flags), then the bytes of every page
//   that is not all zeros, in order. Flag bit 0 of an entry marks a zero page: it costs 8 bytes,
//   not 4 KiB. Addresses are page-aligned, so the low 12 bits are free for flags.
//
// Uncompressed page frames go out as an iovec list pointing into the PageBatch (no copy);
// compressed ones are laid out contiguously first, because lz4 wants one input block.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <vector>

#include "elsa/status.h"
#include "elsa/transport/transport.h"

namespace elsa::transport {

inline constexpr uint64_t kPageEntryZero = 1;
inline constexpr uint64_t kPageEntryFlagMask = kPageSize - 1;

bool IsZeroPage(const uint8_t* page);

// The table part of a page payload, and which pages need their bytes sent.
struct PagePayloadPlan {
  std::vector<uint8_t> table;  // count, reserved, entries
  std::vector<uint32_t> nonzero;  // indexes into the batch
  size_t payload_bytes() const { return table.size() + nonzero.size() * kPageSize; }
};
PagePayloadPlan PlanPagePayload(const PageBatch& batch);

// Appends iovecs for the plan's payload (the table, then runs of consecutive non-zero pages).
void AppendPagePayloadIov(const PageBatch& batch, const PagePayloadPlan& plan, std::vector<iovec>* iov);
// The same payload as one contiguous buffer.
std::vector<uint8_t> FlattenPagePayload(const PageBatch& batch, const PagePayloadPlan& plan);

// Untrusted bytes in: a batch, or a protocol error naming what is wrong.
// At most `max_pages` pages: zero pages take 8 bytes on the wire and 4 KiB decoded, so without a
// bound a 64 KiB frame could ask for gigabytes. The channel passes what its max_frame_bytes
// allows a sender (MaxPagesPerFrame).
Result<PageBatch> DecodePagePayload(std::span<const uint8_t> payload, size_t max_pages);
// The most pages one frame of `max_frame_bytes` may carry, each with its 8-byte entry.
inline size_t MaxPagesPerFrame(size_t max_frame_bytes) {
  return max_frame_bytes < 8 ? 0 : (max_frame_bytes - 8) / (8 + kPageSize);
}

// lz4 of `raw`; empty when it would not shrink by at least 1/16.
std::vector<uint8_t> CompressIfSmaller(std::span<const uint8_t> raw);
Result<std::vector<uint8_t>> Decompress(std::span<const uint8_t> wire, size_t raw_length);

}  // namespace elsa::transport
