// Just enough of protobuf's wire format to read and write CRIU's image records without
// generated code: CRIU images are a pair of magics and then u32-length-prefixed messages.
// Everything read here is untrusted (a damaged or hostile checkpoint), so every read is bounded.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "elsa/status.h"

namespace elsa::page_server::wire {

inline constexpr uint32_t kImgCommonMagic = 0x54564319;
inline constexpr size_t kMaxRecord = 1u << 20;

void PutVarint(std::vector<uint8_t>* out, uint64_t v);
void PutU32(std::vector<uint8_t>* out, uint32_t v);
// A length-prefixed record, as CRIU's pb_write_one() writes it.
void PutRecord(std::vector<uint8_t>* out, const std::vector<uint8_t>& message);

class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
  bool done() const { return pos_ >= b_.size(); }
  size_t pos() const { return pos_; }
  size_t left() const { return b_.size() - pos_; }
  bool U32(uint32_t* v);
  bool Varint(uint64_t* v);
  bool Skip(size_t n);
  std::span<const uint8_t> Take(size_t n);  // n <= left()

 private:
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
};

// One field of a message: a varint's value, or a length-delimited field's bytes.
struct Field {
  uint64_t number = 0;
  uint32_t wire_type = 0;  // 0 varint, 1 fixed64, 2 bytes, 5 fixed32
  uint64_t varint = 0;
  std::span<const uint8_t> bytes;
};

// Calls `fn(field)` for each field, skipping nothing; false if the message is malformed.
template <typename Fn>
bool ForEachField(std::span<const uint8_t> msg, Fn fn) {
  Cursor c(msg);
  while (!c.done()) {
    uint64_t key;
    if (!c.Varint(&key)) return false;
    Field f;
    f.number = key >> 3;
    f.wire_type = static_cast<uint32_t>(key & 7);
    switch (f.wire_type) {
      case 0:
        if (!c.Varint(&f.varint)) return false;
        break;
      case 1:
        if (!c.Skip(8)) return false;
        break;
      case 2: {
        uint64_t len;
        if (!c.Varint(&len) || len > c.left()) return false;
        f.bytes = c.Take(len);
        break;
      }
      case 5:
        if (!c.Skip(4)) return false;
        break;
      default:
        return false;
    }
    fn(f);
  }
  return true;
}

// The messages of an image file whose magics are `first_magic` (CRIU's common one, or the
// service one of stats images) and `type_magic`. `what` names the image in errors ("mm-1.img").
Result<std::vector<std::span<const uint8_t>>> ImageRecords(std::span<const uint8_t> bytes, uint32_t type_magic,
                                                           const std::string& what,
                                                           uint32_t first_magic = kImgCommonMagic);

}  // namespace elsa::page_server::wire
