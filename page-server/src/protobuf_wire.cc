#include "protobuf_wire.h"

#include <string>

namespace elsa::page_server::wire {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "CRIU writes host order; we assume x86-64/arm64 LE");

void PutVarint(std::vector<uint8_t>* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<uint8_t>(v));
}

void PutU32(std::vector<uint8_t>* out, uint32_t v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  out->insert(out->end(), b, b + 4);
}

void PutRecord(std::vector<uint8_t>* out, const std::vector<uint8_t>& message) {
  PutU32(out, static_cast<uint32_t>(message.size()));
  out->insert(out->end(), message.begin(), message.end());
}

bool Cursor::U32(uint32_t* v) {
  if (left() < 4) return false;
  std::memcpy(v, b_.data() + pos_, 4);
  pos_ += 4;
  return true;
}

bool Cursor::Varint(uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos_ >= b_.size()) return false;
    uint8_t byte = b_[pos_++];
    *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

bool Cursor::Skip(size_t n) {
  if (left() < n) return false;
  pos_ += n;
  return true;
}

std::span<const uint8_t> Cursor::Take(size_t n) {
  auto s = b_.subspan(pos_, n);
  pos_ += n;
  return s;
}

Result<std::vector<std::span<const uint8_t>>> ImageRecords(std::span<const uint8_t> bytes, uint32_t type_magic,
                                                           const std::string& what, uint32_t first_magic) {
  Cursor c(bytes);
  uint32_t magic1, magic2;
  if (!c.U32(&magic1) || !c.U32(&magic2) || magic1 != first_magic || magic2 != type_magic)
    return Status::Corruption(what + " is not the CRIU image it should be (bad magic)");
  std::vector<std::span<const uint8_t>> records;
  while (!c.done()) {
    uint32_t len;
    if (!c.U32(&len) || len > kMaxRecord || len > c.left())
      return Status::Corruption(what + ": truncated or oversized record at byte " + std::to_string(c.pos()));
    records.push_back(c.Take(len));
  }
  return records;
}

}  // namespace elsa::page_server::wire
