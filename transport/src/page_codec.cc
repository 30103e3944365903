#include "page_codec.h"

#include <lz4.h>

#include <cstring>
#include <string>

namespace elsa::transport {
namespace {

void PutU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }  // the wire is little-endian, as is x86-64
void PutU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t GetU32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
uint64_t GetU64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "page payloads are written in host order");

}  // namespace

PageBatch::PageBatch(size_t reserve_pages) {
  addresses_.reserve(reserve_pages);
  data_.reserve(reserve_pages * kPageSize);
}

PageBatch::PageBatch(const PageBatch& other) : addresses_(other.addresses_) {
  data_.resize(other.data_.size());
  if (!data_.empty()) std::memcpy(data_.data(), other.data_.data(), data_.size());
}

PageBatch& PageBatch::operator=(const PageBatch& other) {
  if (this != &other) {
    addresses_ = other.addresses_;
    data_.resize(other.data_.size());
    if (!data_.empty()) std::memcpy(data_.data(), other.data_.data(), data_.size());
  }
  return *this;
}

uint8_t* PageBatch::AddPage(uint64_t address) {
  addresses_.push_back(address & ~kPageEntryFlagMask);
  data_.resize(data_.size() + kPageSize);
  return data_.data() + data_.size() - kPageSize;
}

void PageBatch::AddPage(uint64_t address, const void* bytes) { std::memcpy(AddPage(address), bytes, kPageSize); }

bool IsZeroPage(const uint8_t* page) {
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize; i += 64) {
    uint64_t w[8];
    std::memcpy(w, page + i, 64);
    acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
    if (acc) return false;
  }
  return true;
}

PagePayloadPlan PlanPagePayload(const PageBatch& batch) {
  PagePayloadPlan plan;
  plan.table.resize(8 + batch.size() * 8);
  PutU32(plan.table.data(), static_cast<uint32_t>(batch.size()));
  PutU32(plan.table.data() + 4, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    uint64_t entry = batch.address(i);
    if (IsZeroPage(batch.page(i))) entry |= kPageEntryZero;
    else plan.nonzero.push_back(static_cast<uint32_t>(i));
    PutU64(plan.table.data() + 8 + i * 8, entry);
  }
  return plan;
}

void AppendPagePayloadIov(const PageBatch& batch, const PagePayloadPlan& plan, std::vector<iovec>* iov) {
  iov->push_back({const_cast<uint8_t*>(plan.table.data()), plan.table.size()});
  for (size_t k = 0; k < plan.nonzero.size();) {
    size_t run = 1;  // consecutive pages are contiguous in the batch: one iovec per run
    while (k + run < plan.nonzero.size() && plan.nonzero[k + run] == plan.nonzero[k] + run) ++run;
    iov->push_back({const_cast<uint8_t*>(batch.page(plan.nonzero[k])), run * kPageSize});
    k += run;
  }
}

std::vector<uint8_t> FlattenPagePayload(const PageBatch& batch, const PagePayloadPlan& plan) {
  std::vector<uint8_t> out(plan.payload_bytes());
  std::memcpy(out.data(), plan.table.data(), plan.table.size());
  uint8_t* p = out.data() + plan.table.size();
  for (uint32_t i : plan.nonzero) {
    std::memcpy(p, batch.page(i), kPageSize);
    p += kPageSize;
  }
  return out;
}

Result<PageBatch> DecodePagePayload(std::span<const uint8_t> payload, size_t max_pages) {
  if (payload.size() < 8) return Status::ProtocolError("page payload shorter than its header");
  const uint32_t count = GetU32(payload.data());
  if (count > max_pages)
    return Status::ProtocolError("page payload of " + std::to_string(count) + " pages: at most " +
                                 std::to_string(max_pages) + " fit a frame");
  if (GetU32(payload.data() + 4) != 0) return Status::ProtocolError("page payload: reserved field is not zero");
  const size_t table_bytes = 8 + static_cast<size_t>(count) * 8;
  if (payload.size() < table_bytes) return Status::ProtocolError("page payload: table runs past the frame");
  size_t nonzero = 0;
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t entry = GetU64(payload.data() + 8 + i * 8);
    if (entry & kPageEntryFlagMask & ~kPageEntryZero)
      return Status::ProtocolError("page payload: unknown flags in entry " + std::to_string(i));
    if (!(entry & kPageEntryZero)) ++nonzero;
  }
  if (payload.size() != table_bytes + nonzero * kPageSize)
    return Status::ProtocolError("page payload: " + std::to_string(payload.size()) + " bytes for " +
                                 std::to_string(count) + " pages of which " + std::to_string(nonzero) + " carry data");
  PageBatch batch(count);
  const uint8_t* data = payload.data() + table_bytes;
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t entry = GetU64(payload.data() + 8 + i * 8);
    uint8_t* page = batch.AddPage(entry & ~kPageEntryFlagMask);
    if (entry & kPageEntryZero) {
      std::memset(page, 0, kPageSize);
    } else {
      std::memcpy(page, data, kPageSize);
      data += kPageSize;
    }
  }
  return batch;
}

std::vector<uint8_t> CompressIfSmaller(std::span<const uint8_t> raw) {
  if (raw.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) return {};
  std::vector<uint8_t> out(static_cast<size_t>(LZ4_compressBound(static_cast<int>(raw.size()))));
  int n = LZ4_compress_default(reinterpret_cast<const char*>(raw.data()), reinterpret_cast<char*>(out.data()),
                               static_cast<int>(raw.size()), static_cast<int>(out.size()));
  if (n <= 0 || static_cast<size_t>(n) > raw.size() - raw.size() / 16) return {};
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::vector<uint8_t>> Decompress(std::span<const uint8_t> wire, size_t raw_length) {
  std::vector<uint8_t> out(raw_length);
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(wire.data()), reinterpret_cast<char*>(out.data()),
                              static_cast<int>(wire.size()), static_cast<int>(out.size()));
  if (n < 0 || static_cast<size_t>(n) != raw_length)
    return Status::ProtocolError("lz4 payload does not decompress to its stated " + std::to_string(raw_length) + " bytes");
  return out;
}

}  // namespace elsa::transport
