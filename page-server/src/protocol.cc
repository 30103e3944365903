#include "elsa/page_server/protocol.h"

#include <cstring>

#include "protobuf_wire.h"

namespace elsa::page_server {
namespace {

using wire::PutRecord;
using wire::PutU32;
using wire::PutVarint;

constexpr uint32_t kPagemapMagic = 0x56084025;
constexpr uint64_t kPsTypeBits = 8;

// Calls `field(number, value)` for the varint fields of a message; false if it is malformed.
template <typename Fn>
bool ForEachVarint(std::span<const uint8_t> msg, Fn field) {
  return wire::ForEachField(msg, [&](const wire::Field& f) {
    if (f.wire_type == 0) field(f.number, f.varint);
  });
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
  PutU32(&out, wire::kImgCommonMagic);
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
  ELSA_ASSIGN_OR_RETURN(auto records, wire::ImageRecords(bytes, kPagemapMagic, "pagemap image"));
  PagemapImage image;
  bool have_head = false;
  for (const auto& msg : records) {
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
