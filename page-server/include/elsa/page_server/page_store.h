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
#include <vector>

#include "elsa/status.h"
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

class PageStore {
 public:
  static constexpr uint64_t kSegmentBytes = 256u << 20;

  // Opens (creating if needed) the store in `dir`, indexing every intact record; a torn record
  // at the end of the newest segment is cut off.
  static Result<std::unique_ptr<PageStore>> Open(const std::string& dir);

  // Stores the page unless it is already there; returns its hash. Thread-safe.
  Result<PageHash> Put(const uint8_t* page);
  // Stores `count` consecutive pages the same way, with one write for all the new ones; their
  // hashes go to `hashes`. Returns how many were new to the store.
  Result<size_t> PutBatch(const uint8_t* pages, size_t count, PageHash* hashes);
  // Reads a page into `out` (4096 bytes), verifying its record. NotFound or Corruption.
  Status Get(const PageHash& hash, uint8_t* out) const;
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

  explicit PageStore(std::string dir);

 private:
  Status Scan();
  Status StartSegment(uint32_t number);
  std::string SegmentPath(uint32_t number) const;
  Status AppendLocked(const PageHash& hash, const uint8_t* page);
  // Appends already-built records (see AppendLocked) with one write; indexes them.
  Status AppendRecordsLocked(const std::vector<uint8_t>& records, const std::vector<std::pair<PageHash, Location>>& added);
  Result<int> ReadFdLocked(uint32_t segment) const;
  // With mu_ held: reads and verifies one record (the segment's fd stays valid meanwhile).
  Status ReadLocked(const Location& location, const PageHash& hash, uint8_t* out) const;

  std::string dir_;
  mutable std::mutex mu_;
  std::unordered_map<PageHash, Location, HashOf> index_;
  std::vector<uint32_t> segments_;  // numbers, ascending
  UniqueFd active_;                 // the newest segment, appended to
  mutable std::unordered_map<uint32_t, UniqueFd> read_fds_;  // segments opened for Get
  uint64_t active_size_ = 0;
  PageStoreStats stats_;
};

}  // namespace elsa::page_server
