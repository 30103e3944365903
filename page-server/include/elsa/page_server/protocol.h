// CRIU's page-server protocol and pagemap images, as CRIU 4.2 speaks and writes them
// (criu/page-xfer.c, criu/include/page-xfer.h, criu/pagemap.c, images/pagemap.proto).
//
// A request is 32 bytes in host byte order: u32 cmd (low 16 bits: command, high 16 bits: PE_*
// flags), 4 bytes padding, u64 nr_pages, u64 vaddr, u64 dst_id. For OPEN/ADD, dst_id is
// (image id << 8) | type, type 1 = a process's pagemap, 2 = shared memory; for GET it is the pid.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "elsa/status.h"

namespace elsa::page_server {

inline constexpr size_t kPageSize = 4096;
inline constexpr size_t kRequestSize = 32;

enum Command : uint16_t {
  kAdd = 1,    // legacy: pages follow
  kHole = 2,   // legacy: pages are in the parent
  kOpen = 3,   // legacy OPEN without reply
  kOpen2 = 4,  // reply: 1 byte has_parent
  kParent = 5, // reply: int has_parent
  kAddF = 6,   // flags say what: data follows only with PE_PRESENT
  kGet = 7,    // lazy-pages asks for pages; reply ADD_F|PE_PRESENT and the data
  kClose = 0x1023,       // reply: int32 0
  kForceClose = 0x1024,  // reply: int32 0
};

enum PageFlags : uint32_t {
  kPeParent = 1,   // pages are in the parent checkpoint
  kPeLazy = 2,     // pages may be restored lazily (not in this image)
  kPePresent = 4,  // pages are in the pages image
};

struct Request {
  uint16_t command = 0;
  uint16_t flags = 0;
  uint64_t nr_pages = 0;
  uint64_t vaddr = 0;
  uint64_t dst_id = 0;
};

std::array<uint8_t, kRequestSize> EncodeRequest(const Request& r);
Request DecodeRequest(std::span<const uint8_t, kRequestSize> bytes);  // every bit pattern decodes

enum class ImageKind : uint8_t { kProcess = 1, kShmem = 2 };
struct ImageTarget {
  ImageKind kind = ImageKind::kProcess;
  uint64_t id = 0;  // pid (process) or shmem id
  bool operator<(const ImageTarget& o) const { return kind != o.kind ? kind < o.kind : id < o.id; }
  bool operator==(const ImageTarget& o) const { return kind == o.kind && id == o.id; }
};
uint64_t EncodeDstId(ImageTarget target);
Result<ImageTarget> DecodeDstId(uint64_t dst_id);

// "pagemap-<id>.img", "pagemap-shmem-<id>.img", "pages-<id>.img"
std::string PagemapFileName(ImageTarget target);
std::string PagesFileName(uint32_t pages_id);

struct PagemapEntry {
  uint64_t vaddr = 0;
  uint64_t nr_pages = 0;
  uint32_t flags = 0;
  bool operator==(const PagemapEntry&) const = default;
};

// A pagemap image: CRIU's image magics, a pagemap_head naming the pages image, then one
// length-prefixed pagemap_entry per run of pages (with nr_pages both as the old u32 field 2 and
// the u64 field 5 that CRIU 4.2 reads).
std::vector<uint8_t> EncodePagemapImage(uint32_t pages_id, std::span<const PagemapEntry> entries);
struct PagemapImage {
  uint32_t pages_id = 0;
  std::vector<PagemapEntry> entries;
};
Result<PagemapImage> DecodePagemapImage(std::span<const uint8_t> bytes);  // untrusted bytes

}  // namespace elsa::page_server
