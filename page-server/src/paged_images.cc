#include "elsa/page_server/paged_images.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>

#include "elsa/fd_io.h"
#include "elsa/file_util.h"
#include "elsa/uninitialized.h"
#include "criu_images.h"

namespace elsa::page_server {
namespace {

constexpr char kRefsMagic[8] = {'E', 'L', 'S', 'A', 'R', 'E', 'F', '1'};
constexpr size_t kCopyPages = 256;

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "pagemap-12.img" -> process 12, "pagemap-shmem-7.img" -> shmem 7; nullopt for anything else.
std::optional<ImageTarget> PagemapTarget(const std::string& name) {
  if (name.rfind("pagemap-", 0) != 0 || !EndsWith(name, ".img")) return std::nullopt;
  std::string middle = name.substr(8, name.size() - 8 - 4);
  ImageTarget t;
  if (middle.rfind("shmem-", 0) == 0) {
    t.kind = ImageKind::kShmem;
    middle = middle.substr(6);
  }
  if (middle.empty() || middle.size() > 19 || !std::all_of(middle.begin(), middle.end(), ::isdigit)) return std::nullopt;
  t.id = std::stoull(middle);
  return t;
}

// Address ranges of one process CRIU may restore lazily (from its mm-<pid>.img).
Result<LazyRanges> LazyRangesOf(const std::string& dir, uint64_t pid) {
  const std::string name = "mm-" + std::to_string(pid) + ".img";
  ELSA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(dir + "/" + name));
  return LazyRangesFromMm(AsBytes(bytes), name);
}

// The page of every thread's stack pointer, from every core-*.img. Conservative across
// processes: an address excluded for one process needlessly is merely not lazy.
Result<std::set<uint64_t>> StackPages(const std::string& dir) {
  std::set<uint64_t> pages;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename();
    if (name.rfind("core-", 0) != 0 || !EndsWith(name, ".img")) continue;
    ELSA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(e.path()));
    ELSA_ASSIGN_OR_RETURN(std::vector<uint64_t> sps, StackPointersFromCore(AsBytes(bytes), name));
    for (uint64_t sp : sps) pages.insert(sp & ~uint64_t{kPageSize - 1});
  }
  if (ec) return Status::IoError("list " + dir + ": " + ec.message());
  return pages;
}

bool InRanges(const LazyRanges& ranges, uint64_t addr) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(addr, UINT64_MAX));
  return it != ranges.begin() && addr < std::prev(it)->second;
}

Result<UniqueFd> CreateFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno("create " + path, errno);
  return fd;
}

template <typename Bytes>
std::string_view Chars(const Bytes& v, size_t size) {
  return {reinterpret_cast<const char*>(v.data()), size};
}

}  // namespace

std::string RefsFileName(uint32_t pages_id) { return "pages-" + std::to_string(pages_id) + ".refs"; }

std::vector<uint8_t> EncodeRefs(std::span<const PageHash> hashes) {
  std::vector<uint8_t> out(16 + 16 * hashes.size());
  std::memcpy(out.data(), kRefsMagic, 8);
  const uint64_t count = hashes.size();
  std::memcpy(out.data() + 8, &count, 8);
  for (size_t i = 0; i < hashes.size(); ++i) {
    std::memcpy(out.data() + 16 + 16 * i, &hashes[i].low, 8);
    std::memcpy(out.data() + 24 + 16 * i, &hashes[i].high, 8);
  }
  return out;
}

Result<std::vector<PageHash>> DecodeRefs(std::span<const uint8_t> bytes) {
  if (bytes.size() < 16 || std::memcmp(bytes.data(), kRefsMagic, 8) != 0)
    return Status::Corruption("not an Elsa page refs file (bad magic)");
  uint64_t count;
  std::memcpy(&count, bytes.data() + 8, 8);
  if (count > (bytes.size() - 16) / 16 || bytes.size() != 16 + 16 * count)
    return Status::Corruption("page refs file: its size does not match its count of " + std::to_string(count));
  std::vector<PageHash> hashes(count);
  for (size_t i = 0; i < count; ++i) {
    std::memcpy(&hashes[i].low, bytes.data() + 16 + 16 * i, 8);
    std::memcpy(&hashes[i].high, bytes.data() + 24 + 16 * i, 8);
  }
  return hashes;
}

Result<std::vector<PagedImage>> LoadPagedImages(const std::string& dir) {
  std::vector<PagedImage> images;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename();
    auto target = PagemapTarget(name);
    if (!target) continue;
    PagedImage image;
    image.pagemap_file = name;
    image.target = *target;
    ELSA_ASSIGN_OR_RETURN(std::string pagemap, ReadFile(e.path()));
    ELSA_ASSIGN_OR_RETURN(image.pagemap, DecodePagemapImage(AsBytes(pagemap)).WithContext(name));
    const std::string refs_name = RefsFileName(image.pagemap.pages_id);
    auto refs = ReadFile(dir + "/" + refs_name);
    if (!refs.ok())
      return Status::Corruption(name + " names pages " + std::to_string(image.pagemap.pages_id) + " but " + refs_name +
                                " cannot be read: " + refs.status().message());
    ELSA_ASSIGN_OR_RETURN(image.refs, DecodeRefs(AsBytes(*refs)).WithContext(refs_name));
    // Counted without wrapping: runs whose page counts add up to the refs' count only modulo
    // 2^64 would send the locator and MaterializeImages far past the refs.
    uint64_t present = 0;
    for (const auto& entry : image.pagemap.entries)
      if (entry.flags & kPePresent) {
        if (entry.nr_pages > image.refs.size() - std::min<uint64_t>(present, image.refs.size()))
          return Status::Corruption(name + " marks more pages present than " + refs_name + " names");
        present += entry.nr_pages;
      }
    if (present != image.refs.size())
      return Status::Corruption(refs_name + " names " + std::to_string(image.refs.size()) + " pages but " + name +
                                " has " + std::to_string(present) + " present");
    images.push_back(std::move(image));
  }
  if (ec) return Status::IoError("list " + dir + ": " + ec.message());
  return images;
}

Result<MaterializeStats> MaterializeImages(const PageStore& store, const std::string& checkpoint_dir,
                                           const std::string& out_dir, RestoreImages kind) {
  const bool lazy = kind != RestoreImages::kEager;
  const auto start = std::chrono::steady_clock::now();
  ELSA_ASSIGN_OR_RETURN(std::vector<PagedImage> images, LoadPagedImages(checkpoint_dir));
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(checkpoint_dir, ec)) {
    const std::string name = e.path().filename();
    if (!e.is_regular_file() || EndsWith(name, ".refs") || PagemapTarget(name)) continue;
    std::filesystem::create_hard_link(e.path(), out_dir + "/" + name, ec);
    if (ec) return Status::IoError("link " + name + " into " + out_dir + ": " + ec.message());
  }
  if (ec) return Status::IoError("list " + checkpoint_dir + ": " + ec.message());

  std::set<uint64_t> stack_pages;
  if (lazy) {
    ELSA_ASSIGN_OR_RETURN(stack_pages, StackPages(checkpoint_dir));
  }
  MaterializeStats stats;
  RawBytes buffer(kCopyPages * kPageSize);
  for (const PagedImage& image : images) {
    LazyRanges lazy_ranges;
    if (lazy && image.target.kind == ImageKind::kProcess) {
      ELSA_ASSIGN_OR_RETURN(lazy_ranges, LazyRangesOf(checkpoint_dir, image.target.id));
    }
    const std::string pages_name = PagesFileName(image.pagemap.pages_id);
    ELSA_ASSIGN_OR_RETURN(UniqueFd pages, CreateFile(out_dir + "/" + pages_name));
    // Pages are fetched a buffer at a time, so runs of records that lie together in the store
    // are read together.
    std::vector<PageHash> pending;
    pending.reserve(kCopyPages);
    auto flush = [&]() -> Status {
      ELSA_RETURN_IF_ERROR(store.GetBatch(pending.data(), pending.size(), buffer.data()).WithContext(pages_name));
      Status st = WriteFully(pages.get(), Chars(buffer, pending.size() * kPageSize), "write " + pages_name);
      pending.clear();
      return st;
    };
    std::vector<PagemapEntry> entries;
    auto emit = [&](uint64_t vaddr, uint32_t flags) {
      if (!entries.empty() && entries.back().flags == flags &&
          entries.back().vaddr + entries.back().nr_pages * kPageSize == vaddr) {
        entries.back().nr_pages++;
      } else {
        entries.push_back({vaddr, 1, flags});
      }
    };
    size_t ref = 0;
    for (const PagemapEntry& entry : image.pagemap.entries) {
      if (!(entry.flags & kPePresent)) {
        entries.push_back(entry);
        continue;
      }
      for (uint64_t i = 0; i < entry.nr_pages; ++i, ++ref) {
        const uint64_t vaddr = entry.vaddr + i * kPageSize;
        const bool lazy_page = !lazy_ranges.empty() && InRanges(lazy_ranges, vaddr) && !stack_pages.count(vaddr);
        if (lazy_page) stats.pages_lazy++;
        if (lazy_page && kind == RestoreImages::kLazy) {
          emit(vaddr, kPeLazy);
          continue;
        }
        emit(vaddr, lazy_page ? kPeLazy | kPePresent : kPePresent);
        if (!lazy_page) stats.pages_written++;
        pending.push_back(image.refs[ref]);
        if (pending.size() == kCopyPages) ELSA_RETURN_IF_ERROR(flush());
      }
    }
    ELSA_RETURN_IF_ERROR(flush());
    const std::vector<uint8_t> pagemap = EncodePagemapImage(image.pagemap.pages_id, entries);
    ELSA_ASSIGN_OR_RETURN(UniqueFd pagemap_fd, CreateFile(out_dir + "/" + image.pagemap_file));
    ELSA_RETURN_IF_ERROR(WriteFully(pagemap_fd.get(), Chars(pagemap, pagemap.size()), "write " + image.pagemap_file));
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

PageLocator PageLocator::FromImages(const std::vector<PagedImage>& images) {
  PageLocator locator;
  for (const PagedImage& image : images) {
    if (image.target.kind != ImageKind::kProcess) continue;
    auto& runs = locator.runs_[image.target.id];
    size_t ref = 0;
    for (const PagemapEntry& entry : image.pagemap.entries) {
      if (!(entry.flags & kPePresent)) continue;
      runs.push_back({entry.vaddr, entry.nr_pages, locator.hashes_.size()});
      locator.hashes_.insert(locator.hashes_.end(), image.refs.begin() + static_cast<ptrdiff_t>(ref),
                             image.refs.begin() + static_cast<ptrdiff_t>(ref + entry.nr_pages));
      ref += entry.nr_pages;
    }
    std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.vaddr < b.vaddr; });
  }
  return locator;
}

std::span<const PageHash> PageLocator::Find(uint64_t pid, uint64_t vaddr, uint64_t max_pages) const {
  auto it = runs_.find(pid);
  if (it == runs_.end() || vaddr % kPageSize != 0) return {};
  const auto& runs = it->second;
  auto run = std::upper_bound(runs.begin(), runs.end(), vaddr, [](uint64_t v, const Run& r) { return v < r.vaddr; });
  if (run == runs.begin()) return {};
  --run;
  const uint64_t index = (vaddr - run->vaddr) / kPageSize;
  if (index >= run->nr_pages) return {};
  const uint64_t count = std::min(max_pages, run->nr_pages - index);
  return {hashes_.data() + run->first + index, static_cast<size_t>(count)};
}

}  // namespace elsa::page_server
