// Checkpoints whose pages live in a PageStore. CRIU dumps through our receiver, which writes the
// pagemap images as `criu page-server` would, but where that writes a pages image we write a
// refs file naming each page by its hash, in pagemap order. Restoring needs CRIU's own layout
// back: materialize it (every page written into a pages image), or prepare it for a lazy restore
// (pages CRIU can fault in later are marked lazy and left for LazyPageServer to serve).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "elsa/page_server/page_store.h"
#include "elsa/page_server/protocol.h"
#include "elsa/status.h"

namespace elsa::page_server {

std::string RefsFileName(uint32_t pages_id);  // "pages-<id>.refs"
std::vector<uint8_t> EncodeRefs(std::span<const PageHash> hashes);
Result<std::vector<PageHash>> DecodeRefs(std::span<const uint8_t> bytes);  // untrusted bytes

// One pagemap image of a checkpoint, with the hashes of its present pages in pagemap order.
struct PagedImage {
  std::string pagemap_file;
  ImageTarget target;
  PagemapImage pagemap;
  std::vector<PageHash> refs;
};

// Every pagemap image in `checkpoint_dir` with its refs. Corruption if a refs file is missing,
// damaged, or does not count as many pages as its pagemap marks present.
Result<std::vector<PagedImage>> LoadPagedImages(const std::string& checkpoint_dir);

struct MaterializeStats {
  uint64_t pages_written = 0;  // into pages images, for CRIU to restore at once
  uint64_t pages_lazy = 0;     // marked lazy (left out for the lazy server, or local with kLazyLocal)
  double seconds = 0;
};

enum class RestoreImages {
  kEager,      // every page in pages images
  kLazy,       // lazy-able pages marked PE_LAZY and left out, for our LazyPageServer to serve
  kLazyLocal,  // every page in pages images, lazy-able ones marked PE_LAZY|PE_PRESENT: what
               // `criu lazy-pages` without a page server reads (CRIU's own local lazy restore)
};

// Builds in `out_dir` (existing, on the checkpoint's filesystem) the images CRIU restores from:
// every file of the checkpoint hard-linked except refs files and pagemaps, pagemaps rewritten,
// pages images written from the store. Lazy-able pages are anonymous private memory other than
// a thread's stack page, as CRIU's own `dump --lazy-pages` decides.
Result<MaterializeStats> MaterializeImages(const PageStore& store, const std::string& checkpoint_dir,
                                           const std::string& out_dir, RestoreImages kind);

// Where each present page of each process of a checkpoint is, for answering lazy-pages GETs.
class PageLocator {
 public:
  static PageLocator FromImages(const std::vector<PagedImage>& images);

  // Hashes of up to `max_pages` consecutive pages of `pid` from `vaddr`; empty if `vaddr` is
  // not a page the checkpoint holds for that process.
  std::span<const PageHash> Find(uint64_t pid, uint64_t vaddr, uint64_t max_pages) const;
  uint64_t pages() const { return hashes_.size(); }

 private:
  struct Run {
    uint64_t vaddr = 0;
    uint64_t nr_pages = 0;
    size_t first = 0;  // index into hashes_
  };
  std::map<uint64_t, std::vector<Run>> runs_;  // by pid, ascending vaddr
  std::vector<PageHash> hashes_;
};

}  // namespace elsa::page_server
