// A store-backed checkpoint read back from disk: a pagemap image and the refs file it names are
// loaded together (LoadPagedImages), which the restore, the lazy server's PageLocator, the
// collection's live set and MaterializeImages all trust. Any bytes must load or fail cleanly,
// and what loads must be consistent: the refs count exactly the pages the pagemap marks present,
// every present run is found again by the locator with its own hashes, and materializing
// (against a small store) stays within what the refs name.
//
// Input: u16 little-endian length of the pagemap image, the pagemap image, then the refs file
// (written under the name the pagemap's pages_id gives, or pages-1.refs if it does not decode).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "elsa/page_server/page_store.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/protocol.h"
#include "fuzz_scratch.h"

namespace {

using namespace elsa::page_server;

// Two pages are in the store (all zeroes, all 0x01), so refs naming them materialize.
struct Fixture {
  elsa::fuzz::ScratchDir scratch{"paged-checkpoint"};
  std::unique_ptr<PageStore> store;
  PageHash hashes[2];
  Fixture() {
    auto opened = PageStore::Open(scratch.path + "/store");
    if (!opened.ok()) __builtin_trap();
    store = std::move(*opened);
    uint8_t page[kPageSize];
    for (int i = 0; i < 2; ++i) {
      std::memset(page, i, sizeof page);
      auto put = store->Put(page);
      if (!put.ok()) __builtin_trap();
      hashes[i] = *put;
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture fixture;
  if (size < 2) return 0;
  const size_t pagemap_size = std::min<size_t>(size - 2, data[0] | (data[1] << 8));
  const std::span<const uint8_t> pagemap(data + 2, pagemap_size);
  const std::span<const uint8_t> refs(data + 2 + pagemap_size, size - 2 - pagemap_size);

  const std::string dir = fixture.scratch.path + "/checkpoint";
  const std::string out = fixture.scratch.path + "/staging";
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  std::filesystem::remove_all(out, ignored);
  std::filesystem::create_directory(dir, ignored);
  std::filesystem::create_directory(out, ignored);
  auto head = DecodePagemapImage(pagemap);
  elsa::fuzz::WriteFileOrDie(dir + "/pagemap-1.img", pagemap.data(), pagemap.size());
  elsa::fuzz::WriteFileOrDie(dir + "/" + RefsFileName(head.ok() ? head->pages_id : 1), refs.data(), refs.size());

  auto images = LoadPagedImages(dir);
  if (!images.ok()) return 0;
  if (images->size() != 1) __builtin_trap();
  const PagedImage& image = images->front();
  // Counted without wrapping: entries whose page counts add up modulo 2^64 to the refs' count
  // must not have loaded.
  uint64_t present = 0;
  for (const auto& e : image.pagemap.entries)
    if (e.flags & kPePresent) {
      if (e.nr_pages > image.refs.size() - present) __builtin_trap();
      present += e.nr_pages;
    }
  if (present != image.refs.size()) __builtin_trap();

  const PageLocator locator = PageLocator::FromImages(*images);
  if (locator.pages() != image.refs.size()) __builtin_trap();
  for (const auto& e : image.pagemap.entries) {
    if (!(e.flags & kPePresent) || e.nr_pages == 0) continue;
    auto found = locator.Find(image.target.id, e.vaddr, e.nr_pages);
    // Overlapping runs may find another run's pages; what is found is always the refs' own.
    if (found.size() > e.nr_pages) __builtin_trap();
    if (!found.empty() && std::find(image.refs.begin(), image.refs.end(), found.back()) == image.refs.end())
      __builtin_trap();
  }

  auto materialized = MaterializeImages(*fixture.store, dir, out, RestoreImages::kEager);
  if (materialized.ok() && materialized->pages_written != image.refs.size()) __builtin_trap();
  return 0;
}
