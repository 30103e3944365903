// A content-addressed store of 4 KiB pages: each distinct page is kept once, keyed by its
// xxh3-128, lz4-compressed when that helps. Pages live in append-only segment files; every
// record carries a checksum over its header and bytes, so a torn write (a crash mid-append) is
// detected when the store is opened, cut off, and never served.
//
// References are not counted in the store itself: they are derived from the checkpoints that
// name pages (Collect() is told which pages are live), so no refcount file can drift or tear.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "elsa/log.h"
#include "elsa/status.h"
#include "elsa/uninitialized.h"
#include "elsa/unique_fd.h"

namespace elsa::page_server {

struct PageHash {
  uint64_t low = 0;
  uint64_t high = 0;
  bool operator==(const PageHash&) const = default;
  std::string ToHex() const;
};
PageHash HashPage(const uint8_t* page);  // xxh3-128 of 4096 bytes

struct PageStoreStats {
  uint64_t puts = 0;          // pages offered since open
  uint64_t duplicate_puts = 0;
  uint64_t unique_pages = 0;  // pages held
  uint64_t stored_bytes = 0;  // segment bytes on disk
  double dedup_ratio() const { return unique_pages ? static_cast<double>(puts) / static_cast<double>(unique_pages) : 1; }
};

// Where a receiver's pages go: into a store, or (for a migration) on to where they are needed.
class PageSink {
 public:
  virtual ~PageSink() = default;
  // Takes `count` consecutive 4 KiB pages; their hashes go to `hashes`. Returns how many were
  // new to the sink. Safe to call from several threads at once.
  virtual Result<size_t> PutBatch(const uint8_t* pages, size_t count, PageHash* hashes) = 0;
};

class PageStore : public PageSink {
 public:
  static constexpr uint64_t kSegmentBytes = 256u << 20;

  // Opens (creating if needed) the store in `dir`, indexing every intact record; a torn record
  // at the end of the newest segment is cut off. A new segment is started once the active one
  // holds `segment_bytes` (smaller only in tests).
  // Damage found while opening is reported to `log` (and handled as documented above).
  static Result<std::unique_ptr<PageStore>> Open(const std::string& dir, uint64_t segment_bytes = kSegmentBytes,
                                                 Logger log = Logger());

  // Stores the page unless it is already there; returns its hash. Thread-safe.
  Result<PageHash> Put(const uint8_t* page);
  // Stores `count` consecutive pages the same way, with one write for all the new ones; their
  // hashes go to `hashes`. Returns how many were new to the store.
  Result<size_t> PutBatch(const uint8_t* pages, size_t count, PageHash* hashes) override;
  // Reads a page into `out` (4096 bytes), verifying its record. NotFound or Corruption.
  Status Get(const PageHash& hash, uint8_t* out) const;
  // Reads `count` pages into `out` (count * 4096 bytes) the same way; records that lie back to
  // back in a segment are read together, so a checkpoint's pages come back at disk speed.
  Status GetBatch(const PageHash* hashes, size_t count, uint8_t* out) const;
  bool Contains(const PageHash& hash) const;
  // Makes every Put so far durable.
  Status Sync();
  // Drops every page for which `live` is false: segments holding such pages are rewritten with
  // their live pages only, segments without any are left alone. Returns bytes reclaimed.
  Result<uint64_t> Collect(const std::function<bool(const PageHash&)>& live);

  PageStoreStats Stats() const;
  const std::string& dir() const { return dir_; }

  struct Location {
    uint32_t segment = 0;
    uint64_t offset = 0;
    uint32_t stored_length = 0;
    bool compressed = false;
  };
  struct HashOf {
    size_t operator()(const PageHash& h) const { return static_cast<size_t>(h.low); }
  };

  PageStore(std::string dir, uint64_t segment_bytes, Logger log);

 private:
  Status Scan();
  Status StartSegment(uint32_t number);
  std::string SegmentPath(uint32_t number) const;
  static Result<UniqueFd> OpenForAppend(const std::string& path, int create_flags);
  Status SyncLocked();
  DirectIoBytes TakeBuffer();
  void ReturnBuffer(DirectIoBytes buffer);
  Status AppendLocked(const PageHash& hash, const uint8_t* page);
  // Appends already-built records (see AppendLocked) with one write; indexes them.
  // Pads them to whole blocks first (see kBlock in page_store.cc).
  Status AppendRecordsLocked(DirectIoBytes& records, const std::vector<std::pair<PageHash, Location>>& added);
  // Checks one record read from disk against `loc` and `hash`, and decodes its page into `out`.
  Status DecodeRecord(const uint8_t* record, const Location& loc, const PageHash& hash, uint8_t* out) const;
  Result<int> ReadFdLocked(uint32_t segment) const;
  // With mu_ held: reads and verifies one record (the segment's fd stays valid meanwhile).
  Status ReadLocked(const Location& location, const PageHash& hash, uint8_t* out) const;

  std::string dir_;
  mutable std::mutex mu_;
  std::unordered_map<PageHash, Location, HashOf> index_;
  const uint64_t segment_bytes_;
  Logger log_;
  std::unordered_set<PageHash, HashOf> in_flight_;  // claimed by a PutBatch, not yet indexed
  // Record buffers kept between batches: a fresh 4 MiB each time costs a page fault per page.
  std::vector<DirectIoBytes> spare_buffers_;
  std::vector<uint32_t> segments_;  // numbers, ascending
  UniqueFd active_;                 // the newest segment, appended to
  std::vector<UniqueFd> sealed_unsynced_;  // older segments written since the last Sync
  mutable std::unordered_map<uint32_t, UniqueFd> read_fds_;  // segments opened for Get
  uint64_t active_size_ = 0;
  PageStoreStats stats_;
};

}  // namespace elsa::page_server
