#include "elsa/page_server/page_store.h"

#define XXH_STATIC_LINKING_ONLY
#include <dirent.h>
#include <fcntl.h>
#include <lz4.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <unordered_set>

#include "elsa/fd_io.h"
#include "elsa/file_util.h"
#include "elsa/uninitialized.h"

namespace elsa::page_server {
namespace {

constexpr size_t kPage = 4096;
constexpr uint32_t kRecordMagic = 0x31475045;  // "EPG1"
constexpr uint32_t kPaddingMagic = 0x44415045;  // "EPAD": fills an append up to a block boundary
constexpr uint32_t kFlagLz4 = 1;
// Appends are whole blocks so that segments can be written with O_DIRECT: page data goes from
// our buffer to the disk without a copy into the page cache, which on these machines costs more
// than hashing and compressing it.
constexpr size_t kBlock = 4096;

// A record: this header, then stored_length bytes. `check` is an xxh3 of the header (with
// check = 0) and the bytes, so any torn or damaged record fails it. Raw records (kFlagRawPage)
// skip hashing their 4 KiB a second time: their check covers the header alone, and the bytes
// are checked against the page's own hash in the header.
struct RecordHeader {
  uint32_t magic;
  uint32_t stored_length;
  uint64_t hash_low;
  uint64_t hash_high;
  uint32_t flags;
  uint32_t reserved;
  uint64_t check;
};
static_assert(sizeof(RecordHeader) == 40);
constexpr uint32_t kFlagRawPage = 2;

uint64_t RecordCheck(RecordHeader h, const uint8_t* data) {
  h.check = 0;
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, &h, sizeof h);
  if (!(h.flags & kFlagRawPage)) XXH3_64bits_update(&state, data, h.stored_length);
  return XXH3_64bits_digest(&state);
}

bool RecordIntact(const RecordHeader& h, const uint8_t* data) {
  if (RecordCheck(h, data) != h.check) return false;
  if (!(h.flags & kFlagRawPage)) return true;
  return h.stored_length == kPage && !(h.flags & kFlagLz4) && HashPage(data) == PageHash{h.hash_low, h.hash_high};
}

Status PreadAll(int fd, void* buf, size_t size, uint64_t offset) {
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::pread(fd, static_cast<uint8_t*>(buf) + got, size - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("pread", errno);
    }
    if (n == 0) return Status::Corruption("record runs past the end of its segment");
    got += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Where, after damage at `from`, the next record that passes its check (or a well-formed padding
// record) starts in a segment of `size` bytes; nullopt when none does.
Result<std::optional<uint64_t>> NextIntactRecord(int fd, uint64_t from, uint64_t size) {
  std::vector<uint8_t> rest(size - from);
  ELSA_RETURN_IF_ERROR(PreadAll(fd, rest.data(), rest.size(), from));
  for (size_t at = 1; at + sizeof(RecordHeader) <= rest.size(); ++at) {
    uint32_t magic;
    std::memcpy(&magic, rest.data() + at, sizeof magic);
    if (magic != kRecordMagic && magic != kPaddingMagic) continue;
    RecordHeader h;
    std::memcpy(&h, rest.data() + at, sizeof h);
    const size_t left = rest.size() - at - sizeof h;
    if (magic == kPaddingMagic) {
      if (h.stored_length < 2 * kBlock && h.stored_length <= left && (from + at + sizeof h + h.stored_length) % kBlock == 0)
        return std::optional<uint64_t>(from + at);
      continue;
    }
    if (h.stored_length <= left && h.stored_length <= static_cast<uint32_t>(LZ4_compressBound(kPage)) &&
        RecordIntact(h, rest.data() + at + sizeof h))
      return std::optional<uint64_t>(from + at);
  }
  return std::optional<uint64_t>();
}

}  // namespace

std::string PageHash::ToHex() const { return HexU64(high) + HexU64(low); }

PageHash HashPage(const uint8_t* page) {
  XXH128_hash_t h = XXH3_128bits(page, kPage);
  return {h.low64, h.high64};
}

PageStore::PageStore(std::string dir, uint64_t segment_bytes, Logger log)
    : dir_(std::move(dir)), segment_bytes_(segment_bytes), log_(std::move(log)) {}

std::string PageStore::SegmentPath(uint32_t number) const {
  char name[32];
  std::snprintf(name, sizeof name, "seg-%06u.pack", number);
  return dir_ + "/" + name;
}

Result<std::unique_ptr<PageStore>> PageStore::Open(const std::string& dir, uint64_t segment_bytes, Logger log) {
  ELSA_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  auto store = std::make_unique<PageStore>(dir, segment_bytes, std::move(log));
  ELSA_RETURN_IF_ERROR(store->Scan());
  return store;
}

Status PageStore::Scan() {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    unsigned number;
    if (std::sscanf(e.path().filename().c_str(), "seg-%6u.pack", &number) == 1) segments_.push_back(number);
  }
  if (ec) return Status::IoError("list " + dir_ + ": " + ec.message());
  std::sort(segments_.begin(), segments_.end());
  std::vector<uint8_t> data(LZ4_compressBound(kPage));
  for (size_t i = 0; i < segments_.size(); ++i) {
    const uint32_t number = segments_[i];
    const bool newest = i + 1 == segments_.size();
    UniqueFd fd(::open(SegmentPath(number).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return Status::FromErrno("open " + SegmentPath(number), errno);
    struct stat st {};
    ::fstat(fd.get(), &st);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    uint64_t offset = 0;
    while (offset < size) {
      RecordHeader h{};
      if (size - offset >= sizeof h && PreadAll(fd.get(), &h, sizeof h, offset).ok() && h.magic == kPaddingMagic &&
          h.stored_length < 2 * kBlock && size - offset - sizeof h >= h.stored_length) {
        offset += sizeof h + h.stored_length;
        continue;
      }
      bool intact = size - offset >= sizeof h && PreadAll(fd.get(), &h, sizeof h, offset).ok() &&
                    h.magic == kRecordMagic && h.stored_length <= data.size() &&
                    size - offset - sizeof h >= h.stored_length &&
                    PreadAll(fd.get(), data.data(), h.stored_length, offset + sizeof h).ok() &&
                    RecordIntact(h, data.data());
      if (!intact) {
        // Damage costs only the damaged records: the scan picks up again at the next intact
        // record (a page a checkpoint needs from the damaged part fails its verification, by
        // name). Only a tail with no intact record after it is torn: a crash between appends
        // and Sync() leaves that, and the newest segment is cut back so appends resume after
        // good data; an older segment's is left on disk, never served.
        ELSA_ASSIGN_OR_RETURN(std::optional<uint64_t> next, NextIntactRecord(fd.get(), offset, size));
        if (next) {
          log_.Warning("page store: " + SegmentPath(number) + " is damaged from byte " + std::to_string(offset) +
                       " to " + std::to_string(*next) + "; the pages stored there are lost, the rest are served");
          offset = *next;
          continue;
        }
        if (!newest) {
          log_.Warning("page store: " + SegmentPath(number) + " is damaged at byte " + std::to_string(offset) +
                       "; its records from there on are not served");
          break;
        }
        log_.Warning("page store: cutting a torn record off " + SegmentPath(number) + " at byte " +
                     std::to_string(offset));
        if (::truncate(SegmentPath(number).c_str(), static_cast<off_t>(offset)) != 0)
          return Status::FromErrno("truncate " + SegmentPath(number), errno);
        break;
      }
      index_[{h.hash_low, h.hash_high}] = {number, offset, h.stored_length, (h.flags & kFlagLz4) != 0};
      offset += sizeof h + h.stored_length;
    }
  }
  stats_.unique_pages = index_.size();
  for (uint32_t n : segments_) {
    struct stat s {};
    if (::stat(SegmentPath(n).c_str(), &s) == 0) stats_.stored_bytes += static_cast<uint64_t>(s.st_size);
  }
  if (segments_.empty()) return StartSegment(1);
  struct stat st {};
  if (::stat(SegmentPath(segments_.back()).c_str(), &st) != 0)
    return Status::FromErrno("stat " + SegmentPath(segments_.back()), errno);
  // A tail cut back to mid-block cannot take aligned appends: continue in a new segment.
  if (static_cast<uint64_t>(st.st_size) % kBlock != 0) return StartSegment(segments_.back() + 1);
  ELSA_ASSIGN_OR_RETURN(active_, OpenForAppend(SegmentPath(segments_.back()), 0));
  active_size_ = static_cast<uint64_t>(st.st_size);
  return Status::Ok();
}

Result<UniqueFd> PageStore::OpenForAppend(const std::string& path, int create_flags) {
  const int flags = O_WRONLY | O_APPEND | O_CLOEXEC | create_flags;
  UniqueFd fd(::open(path.c_str(), flags | O_DIRECT, 0600));
  if (!fd && errno == EINVAL) fd.Reset(::open(path.c_str(), flags, 0600));  // e.g. tmpfs: no O_DIRECT
  if (!fd) return Status::FromErrno((create_flags ? "create " : "open ") + path, errno);
  return fd;
}

Status PageStore::StartSegment(uint32_t number) {
  // Not fsync'd here: that would stall a dump in progress for a whole segment's write-back. Sync()
  // makes it durable with the rest; until then a crash can at worst tear it, which Open detects.
  if (active_) sealed_unsynced_.push_back(std::move(active_));
  ELSA_ASSIGN_OR_RETURN(active_, OpenForAppend(SegmentPath(number), O_CREAT | O_EXCL));
  segments_.push_back(number);
  active_size_ = 0;
  return FsyncPath(dir_);
}

namespace {

// Appends one record for `page` to `out`: lz4 when that saves at least 1/16, else raw (reading a
// raw page back costs nothing). Returns the record's location fields.
PageStore::Location BuildRecord(const PageHash& hash, const uint8_t* page, DirectIoBytes& out) {
  const size_t at = out.size();
  out.resize(at + sizeof(RecordHeader) + LZ4_COMPRESSBOUND(kPage));
  RecordHeader h{kRecordMagic, 0, hash.low, hash.high, 0, 0, 0};
  uint8_t* data = out.data() + at + sizeof h;
  // Most of a notebook's memory is numbers that lz4 cannot shrink, and finding that out costs
  // a full compression pass. A probe of the page's first 1 KiB settles it for a quarter of that;
  // a page it misjudges is merely stored raw.
  constexpr int kProbe = 1024;
  const int probed = LZ4_compress_default(reinterpret_cast<const char*>(page), reinterpret_cast<char*>(data),
                                          kProbe, kProbe - kProbe / 16);
  int packed = probed <= 0 ? 0
                           : LZ4_compress_default(reinterpret_cast<const char*>(page), reinterpret_cast<char*>(data),
                                                  static_cast<int>(kPage), LZ4_COMPRESSBOUND(kPage));
  if (packed > 0 && static_cast<size_t>(packed) < kPage - kPage / 16) {
    h.flags = kFlagLz4;
    h.stored_length = static_cast<uint32_t>(packed);
  } else {
    std::memcpy(data, page, kPage);
    h.flags = kFlagRawPage;
    h.stored_length = kPage;
  }
  h.check = RecordCheck(h, data);
  std::memcpy(out.data() + at, &h, sizeof h);
  out.resize(at + sizeof h + h.stored_length);
  return {0, at, h.stored_length, h.flags == kFlagLz4};
}

// Pads `records` to whole blocks with one padding record (zeroed: no stale heap on disk).
void PadToBlock(DirectIoBytes& records) {
  size_t gap = (kBlock - records.size() % kBlock) % kBlock;
  if (gap == 0) return;
  if (gap < sizeof(RecordHeader)) gap += kBlock;
  const size_t at = records.size();
  records.resize(at + gap);
  std::memset(records.data() + at, 0, gap);
  RecordHeader h{kPaddingMagic, static_cast<uint32_t>(gap - sizeof h), 0, 0, 0, 0, 0};
  std::memcpy(records.data() + at, &h, sizeof h);
}

}  // namespace

Status PageStore::AppendLocked(const PageHash& hash, const uint8_t* page) {
  DirectIoBytes records;
  Location loc = BuildRecord(hash, page, records);
  return AppendRecordsLocked(records, {{hash, loc}});
}

Status PageStore::AppendRecordsLocked(DirectIoBytes& records,
                                      const std::vector<std::pair<PageHash, Location>>& added) {
  if (records.empty()) return Status::Ok();
  if (active_size_ >= segment_bytes_) ELSA_RETURN_IF_ERROR(StartSegment(segments_.back() + 1));
  PadToBlock(records);
  if (Status written = WriteFully(active_.get(), {reinterpret_cast<const char*>(records.data()), records.size()},
                                  "append to the page store");
      !written.ok()) {
    // A full disk takes part of a write: cut it off, or the next append (O_APPEND, at the file's
    // real end) would be indexed at active_size_ and every page in it read as damaged. Shrinking
    // needs no space; should it fail anyway, later pages go to a fresh segment.
    if (::ftruncate(active_.get(), static_cast<off_t>(active_size_)) != 0) active_size_ = segment_bytes_;
    return written;
  }
  for (auto [hash, loc] : added) {
    loc.segment = segments_.back();
    loc.offset += active_size_;
    index_[hash] = loc;
  }
  active_size_ += records.size();
  stats_.stored_bytes += records.size();
  stats_.unique_pages = index_.size();
  return Status::Ok();
}

Result<size_t> PageStore::PutBatch(const uint8_t* pages, size_t count, PageHash* hashes) {
  for (size_t i = 0; i < count; ++i) hashes[i] = HashPage(pages + i * kPage);
  // Claim the pages new to the store (in_flight_ stops a concurrent batch storing them too).
  std::vector<size_t> fresh;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < count; ++i) {
      stats_.puts++;
      if (index_.count(hashes[i]) || !in_flight_.insert(hashes[i]).second) {
        stats_.duplicate_puts++;
        continue;
      }
      fresh.push_back(i);
    }
  }
  size_t indexed = 0;  // fresh[0..indexed) are in the index; the rest still claimed
  auto release_claims = [&] {
    std::lock_guard lock(mu_);
    for (size_t k = indexed; k < fresh.size(); ++k) in_flight_.erase(hashes[fresh[k]]);
  };
  // Records are built without the lock, so concurrent batches compress on separate cores; only
  // the append is serialised. Batches stay well below a segment, so one never straddles two.
  constexpr size_t kMaxRecordsBytes = 4u << 20;
  DirectIoBytes records = TakeBuffer();
  records.reserve(kMaxRecordsBytes + sizeof(RecordHeader) + LZ4_COMPRESSBOUND(kPage) + 2 * kBlock);
  struct GiveBack {
    PageStore* store;
    DirectIoBytes* buffer;
    ~GiveBack() { store->ReturnBuffer(std::move(*buffer)); }
  } give_back{this, &records};
  std::vector<std::pair<PageHash, Location>> added;
  auto flush = [&]() -> Status {
    std::lock_guard lock(mu_);
    ELSA_RETURN_IF_ERROR(AppendRecordsLocked(records, added));
    for (const auto& a : added) in_flight_.erase(a.first);
    indexed += added.size();
    records.clear();
    added.clear();
    return Status::Ok();
  };
  for (size_t i : fresh) {
    added.emplace_back(hashes[i], BuildRecord(hashes[i], pages + i * kPage, records));
    if (records.size() >= kMaxRecordsBytes) {
      if (Status st = flush(); !st.ok()) {
        release_claims();
        return st;
      }
    }
  }
  if (Status st = flush(); !st.ok()) {
    release_claims();
    return st;
  }
  return fresh.size();
}

DirectIoBytes PageStore::TakeBuffer() {
  std::lock_guard lock(mu_);
  if (spare_buffers_.empty()) return {};
  DirectIoBytes buffer = std::move(spare_buffers_.back());
  spare_buffers_.pop_back();
  return buffer;
}

void PageStore::ReturnBuffer(DirectIoBytes buffer) {
  buffer.clear();
  std::lock_guard lock(mu_);
  if (spare_buffers_.size() < 4) spare_buffers_.push_back(std::move(buffer));
}

Result<PageHash> PageStore::Put(const uint8_t* page) {
  const PageHash hash = HashPage(page);
  std::lock_guard lock(mu_);
  stats_.puts++;
  if (index_.count(hash)) {
    stats_.duplicate_puts++;
    return hash;
  }
  ELSA_RETURN_IF_ERROR(AppendLocked(hash, page));
  return hash;
}

bool PageStore::Contains(const PageHash& hash) const {
  std::lock_guard lock(mu_);
  return index_.count(hash) != 0;
}

Status PageStore::Get(const PageHash& hash, uint8_t* out) const {
  std::lock_guard lock(mu_);
  auto it = index_.find(hash);
  if (it == index_.end()) return Status::NotFound("page " + hash.ToHex() + " is not in the store");
  return ReadLocked(it->second, hash, out);
}

Result<int> PageStore::ReadFdLocked(uint32_t segment) const {
  auto it = read_fds_.find(segment);
  if (it != read_fds_.end()) return it->second.get();
  UniqueFd fd(::open(SegmentPath(segment).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Status::FromErrno("open " + SegmentPath(segment), errno);
  const int raw = fd.get();
  read_fds_.emplace(segment, std::move(fd));
  return raw;
}

Status PageStore::DecodeRecord(const uint8_t* record, const Location& loc, const PageHash& hash,
                               uint8_t* out) const {
  RecordHeader h;
  std::memcpy(&h, record, sizeof h);
  const uint8_t* data = record + sizeof h;
  // A raw record's bytes are checked below, against the page hash.
  if (h.magic != kRecordMagic || h.stored_length != loc.stored_length || RecordCheck(h, data) != h.check ||
      h.hash_low != hash.low || h.hash_high != hash.high)
    return Status::Corruption("page " + hash.ToHex() + " is damaged in " + SegmentPath(loc.segment));
  if (h.flags & kFlagLz4) {
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(data), reinterpret_cast<char*>(out),
                                static_cast<int>(h.stored_length), static_cast<int>(kPage));
    if (n != static_cast<int>(kPage)) return Status::Corruption("page " + hash.ToHex() + " does not decompress");
  } else {
    std::memcpy(out, data, kPage);
  }
  if (HashPage(out) != hash) return Status::Corruption("page " + hash.ToHex() + " does not match its hash");
  return Status::Ok();
}

Status PageStore::ReadLocked(const Location& loc, const PageHash& hash, uint8_t* out) const {
  ELSA_ASSIGN_OR_RETURN(int fd, ReadFdLocked(loc.segment));
  uint8_t record[sizeof(RecordHeader) + LZ4_COMPRESSBOUND(kPage)];
  ELSA_RETURN_IF_ERROR(PreadAll(fd, record, sizeof(RecordHeader) + loc.stored_length, loc.offset));
  return DecodeRecord(record, loc, hash, out);
}

Status PageStore::GetBatch(const PageHash* hashes, size_t count, uint8_t* out) const {
  constexpr uint64_t kMaxRead = 1u << 20;
  std::lock_guard lock(mu_);
  std::vector<std::pair<Location, size_t>> wanted;  // location, index into hashes
  wanted.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    auto it = index_.find(hashes[i]);
    if (it == index_.end()) return Status::NotFound("page " + hashes[i].ToHex() + " is not in the store");
    wanted.emplace_back(it->second, i);
  }
  // In segment order, records that lie back to back are read with one pread.
  std::sort(wanted.begin(), wanted.end(), [](const auto& a, const auto& b) {
    return a.first.segment != b.first.segment ? a.first.segment < b.first.segment : a.first.offset < b.first.offset;
  });
  RawBytes run;
  for (size_t first = 0; first < wanted.size();) {
    const Location& start = wanted[first].first;
    uint64_t end = start.offset + sizeof(RecordHeader) + start.stored_length;
    size_t last = first + 1;
    while (last < wanted.size() && wanted[last].first.segment == start.segment &&
           (wanted[last].first.offset == end || wanted[last].first.offset == wanted[last - 1].first.offset) &&
           end - start.offset < kMaxRead) {
      end = std::max(end, wanted[last].first.offset + sizeof(RecordHeader) + wanted[last].first.stored_length);
      ++last;
    }
    ELSA_ASSIGN_OR_RETURN(int fd, ReadFdLocked(start.segment));
    run.resize(end - start.offset);
    ELSA_RETURN_IF_ERROR(PreadAll(fd, run.data(), run.size(), start.offset));
    for (size_t k = first; k < last; ++k) {
      const auto& [loc, index] = wanted[k];
      ELSA_RETURN_IF_ERROR(DecodeRecord(run.data() + (loc.offset - start.offset), loc, hashes[index],
                                        out + index * kPage));
    }
    first = last;
  }
  return Status::Ok();
}

Status PageStore::Sync() {
  std::lock_guard lock(mu_);
  return SyncLocked();
}

Status PageStore::SyncLocked() {
  for (const UniqueFd& fd : sealed_unsynced_)
    if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync page segment", errno);
  sealed_unsynced_.clear();
  if (::fsync(active_.get()) != 0) return Status::FromErrno("fsync page segment", errno);
  return Status::Ok();
}

Result<uint64_t> PageStore::Collect(const std::function<bool(const PageHash&)>& live) {
  // One segment at a time: its live pages are copied into the newest segment and synced, then
  // it is deleted, then the next. Collection is what a full disk needs most, so its own peak is
  // one segment's live pages, not every affected segment's. Both copies exist until the old one
  // goes, so a crash (or ENOSPC) at any point loses nothing: the index names the copy that is
  // durable, and what was not collected yet is collected next time. The store is busy meanwhile.
  std::lock_guard lock(mu_);
  struct Affected {
    std::vector<std::pair<PageHash, Location>> live, dead;
    uint64_t live_bytes = 0;
  };
  std::unordered_map<uint32_t, Affected> by_segment;
  for (const auto& [hash, loc] : index_)
    if (!live(hash)) by_segment[loc.segment].dead.emplace_back(hash, loc);
  if (by_segment.empty()) return uint64_t{0};
  for (const auto& [hash, loc] : index_) {
    auto it = by_segment.find(loc.segment);
    if (it == by_segment.end() || !live(hash)) continue;
    it->second.live.emplace_back(hash, loc);
    it->second.live_bytes += sizeof(RecordHeader) + loc.stored_length;
  }
  // Cheapest first: a segment with nothing live frees its space without taking any, which is
  // what lets the copies of the next ones fit.
  std::vector<uint32_t> order;
  for (const auto& [n, a] : by_segment) order.push_back(n);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return by_segment[a].live_bytes != by_segment[b].live_bytes ? by_segment[a].live_bytes < by_segment[b].live_bytes
                                                                : a < b;
  });
  const uint64_t before = stats_.stored_bytes;
  // The active segment is sealed first if it is affected, so what is moved never lands in a
  // segment about to be deleted.
  if (by_segment.count(segments_.back())) ELSA_RETURN_IF_ERROR(StartSegment(segments_.back() + 1));
  std::vector<uint8_t> page(kPage);
  DirectIoBytes records;
  std::vector<std::pair<PageHash, Location>> moved;
  for (uint32_t n : order) {
    Affected& a = by_segment[n];
    // In file order: the old segment is read front to back.
    std::sort(a.live.begin(), a.live.end(), [](const auto& x, const auto& y) { return x.second.offset < y.second.offset; });
    for (const auto& [hash, loc] : a.live) {
      ELSA_RETURN_IF_ERROR(ReadLocked(loc, hash, page.data()).WithContext("collecting the page store"));
      moved.emplace_back(hash, BuildRecord(hash, page.data(), records));
      if (records.size() >= (4u << 20)) {
        ELSA_RETURN_IF_ERROR(AppendRecordsLocked(records, moved).WithContext("collecting the page store"));
        records.clear();
        moved.clear();
      }
    }
    ELSA_RETURN_IF_ERROR(AppendRecordsLocked(records, moved).WithContext("collecting the page store"));
    records.clear();
    moved.clear();
    ELSA_RETURN_IF_ERROR(SyncLocked());
    for (const auto& d : a.dead) index_.erase(d.first);
    read_fds_.erase(n);
    struct stat st {};
    const uint64_t size = ::stat(SegmentPath(n).c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    if (::unlink(SegmentPath(n).c_str()) != 0 && errno != ENOENT)
      return Status::FromErrno("remove " + SegmentPath(n), errno).WithContext("collecting the page store");
    stats_.stored_bytes -= std::min(size, stats_.stored_bytes);
    segments_.erase(std::remove(segments_.begin(), segments_.end(), n), segments_.end());
    stats_.unique_pages = index_.size();
    ELSA_RETURN_IF_ERROR(FsyncPath(dir_));
  }
  return before > stats_.stored_bytes ? before - stats_.stored_bytes : 0;
}

PageStoreStats PageStore::Stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace elsa::page_server
