#include "elsa/page_server/protocol.h"

#include <cstring>

namespace elsa::page_server {
namespace {

constexpr uint32_t kImgCommonMagic = 0x54564319;
constexpr uint32_t kPagemapMagic = 0x56084025;
constexpr uint64_t kPsTypeBits = 8;
constexpr size_t kMaxRecord = 1u << 16;

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

// A length-prefixed protobuf record, as pb_write_one() writes it.
void PutRecord(std::vector<uint8_t>* out, const std::vector<uint8_t>& message) {
  PutU32(out, static_cast<uint32_t>(message.size()));
  out->insert(out->end(), message.begin(), message.end());
}

class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
  bool done() const { return pos_ >= b_.size(); }
  size_t pos() const { return pos_; }
  bool U32(uint32_t* v) {
    if (b_.size() - pos_ < 4) return false;
    std::memcpy(v, b_.data() + pos_, 4);
    pos_ += 4;
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= b_.size()) return false;
      uint8_t byte = b_[pos_++];
      *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return true;
    }
    return false;
  }
  bool Skip(size_t n) {
    if (b_.size() - pos_ < n) return false;
    pos_ += n;
    return true;
  }
  std::span<const uint8_t> Take(size_t n) {
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  size_t left() const { return b_.size() - pos_; }

 private:
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
};

// Walks a protobuf message, calling `field(number, value)` for varint fields and skipping the
// rest by wire type. False if the message is malformed.
template <typename Fn>
bool ForEachVarint(std::span<const uint8_t> msg, Fn field) {
  Cursor c(msg);
  while (!c.done()) {
    uint64_t key;
    if (!c.Varint(&key)) return false;
    const uint64_t number = key >> 3;
    switch (key & 7) {
      case 0: {
        uint64_t v;
        if (!c.Varint(&v)) return false;
        field(number, v);
        break;
      }
      case 1:
        if (!c.Skip(8)) return false;
        break;
      case 2: {
        uint64_t len;
        if (!c.Varint(&len) || len > c.left() || !c.Skip(len)) return false;
        break;
      }
      case 5:
        if (!c.Skip(4)) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

}  // namespace

std::array<uint8_t, kRequestSize> EncodeRequest(const Request& r) {
  std::array<uint8_t, kRequestSize> out{};
  const uint32_t cmd = static_cast<uint32_t>(r.flags) << 16 | r.command;
  std::memcpy(out.data(), &cmd, 4);
  std::memcpy(out.data() + 8, &r.nr_pages, 8);
  std::memcpy(out.data() + 16, &r.vaddr, 8);
  std::memcpy(out.data() + 24, &r.dst_id, 8);
  return out;
}

Request DecodeRequest(std::span<const uint8_t, kRequestSize> b) {
  Request r;
  uint32_t cmd;
  std::memcpy(&cmd, b.data(), 4);
  r.command = static_cast<uint16_t>(cmd & 0xffff);
  r.flags = static_cast<uint16_t>(cmd >> 16);
  std::memcpy(&r.nr_pages, b.data() + 8, 8);
  std::memcpy(&r.vaddr, b.data() + 16, 8);
  std::memcpy(&r.dst_id, b.data() + 24, 8);
  return r;
}

uint64_t EncodeDstId(ImageTarget t) { return t.id << kPsTypeBits | static_cast<uint64_t>(t.kind); }

Result<ImageTarget> DecodeDstId(uint64_t dst_id) {
  const uint64_t type = dst_id & 0xff;
  if (type != 1 && type != 2)
    return Status::ProtocolError("unknown pagemap type " + std::to_string(type) + " in dst_id (CRIU 4.x sends 1 or 2)");
  return ImageTarget{static_cast<ImageKind>(type), dst_id >> kPsTypeBits};
}

std::string PagemapFileName(ImageTarget t) {
  return (t.kind == ImageKind::kShmem ? "pagemap-shmem-" : "pagemap-") + std::to_string(t.id) + ".img";
}

std::string PagesFileName(uint32_t pages_id) { return "pages-" + std::to_string(pages_id) + ".img"; }

std::vector<uint8_t> EncodePagemapImage(uint32_t pages_id, std::span<const PagemapEntry> entries) {
  std::vector<uint8_t> out;
  PutU32(&out, kImgCommonMagic);
  PutU32(&out, kPagemapMagic);
  std::vector<uint8_t> msg;
  msg.push_back(0x08);  // field 1, varint: pages_id
  PutVarint(&msg, pages_id);
  PutRecord(&out, msg);
  for (const auto& e : entries) {
    msg.clear();
    msg.push_back(0x08);  // 1: vaddr
    PutVarint(&msg, e.vaddr);
    msg.push_back(0x10);  // 2: compat_nr_pages (u32), for CRIUs before 4.0
    PutVarint(&msg, static_cast<uint32_t>(e.nr_pages));
    msg.push_back(0x20);  // 4: flags
    PutVarint(&msg, e.flags);
    msg.push_back(0x28);  // 5: nr_pages (u64)
    PutVarint(&msg, e.nr_pages);
    PutRecord(&out, msg);
  }
  return out;
}

Result<PagemapImage> DecodePagemapImage(std::span<const uint8_t> bytes) {
  Cursor c(bytes);
  uint32_t magic1, magic2;
  if (!c.U32(&magic1) || !c.U32(&magic2) || magic1 != kImgCommonMagic || magic2 != kPagemapMagic)
    return Status::Corruption("not a CRIU pagemap image (bad magic)");
  PagemapImage image;
  bool have_head = false;
  while (!c.done()) {
    uint32_t len;
    if (!c.U32(&len) || len > kMaxRecord || len > c.left())
      return Status::Corruption("pagemap image: truncated or oversized record at byte " + std::to_string(c.pos()));
    auto msg = c.Take(len);
    if (!have_head) {
      uint64_t pages_id = 0;
      bool seen = false;
      if (!ForEachVarint(msg, [&](uint64_t n, uint64_t v) { if (n == 1) pages_id = v, seen = true; }) || !seen ||
          pages_id > UINT32_MAX)
        return Status::Corruption("pagemap image: malformed pagemap_head");
      image.pages_id = static_cast<uint32_t>(pages_id);
      have_head = true;
      continue;
    }
    PagemapEntry e;
    uint64_t compat = 0, in_parent = 0;
    bool has_vaddr = false, has_nr = false, has_flags = false;
    bool ok = ForEachVarint(msg, [&](uint64_t n, uint64_t v) {
      switch (n) {
        case 1: e.vaddr = v, has_vaddr = true; break;
        case 2: compat = v; break;
        case 3: in_parent = v; break;
        case 4: e.flags = static_cast<uint32_t>(v), has_flags = true; break;
        case 5: e.nr_pages = v, has_nr = true; break;
        default: break;
      }
    });
    if (!ok || !has_vaddr) return Status::Corruption("pagemap image: malformed pagemap_entry");
    // As criu/pagemap.c reads older images.
    if (!has_nr) e.nr_pages = compat;
    if (in_parent) e.flags |= kPeParent;
    else if (!has_flags) e.flags = kPePresent;
    if (e.vaddr % kPageSize != 0) return Status::Corruption("pagemap image: unaligned address");
    image.entries.push_back(e);
  }
  if (!have_head) return Status::Corruption("pagemap image: no pagemap_head");
  return image;
}

}  // namespace elsa::page_server
