// ScanTreeMemory and its helpers on a real process tree whose memory the test wrote: every
// present page of every process is read, pages never touched are not.
#include "session/tree_memory.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <set>

#include "elsa/page_server/page_store.h"
#include "migrate_test_util.h"

namespace elsa {
namespace {

using testing::MemoryHolder;
using testing::PatternPage;

struct HashLess {
  bool operator()(const page_server::PageHash& a, const page_server::PageHash& b) const {
    return a.low != b.low ? a.low < b.low : a.high < b.high;
  }
};
using HashSet = std::set<page_server::PageHash, HashLess>;

// Writes PatternPage(seed, 0..pages-1) at `address` of `pid`; returns their hashes.
HashSet WritePattern(pid_t pid, uint64_t address, uint64_t seed, size_t pages) {
  HashSet hashes;
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < pages; ++i) {
    const auto page = PatternPage(seed, i);
    bytes.insert(bytes.end(), page.begin(), page.end());
    hashes.insert(page_server::HashPage(page.data()));
  }
  MemoryHolder::Write(pid, address, bytes);
  return hashes;
}

struct Scan {
  TreeScanStats stats;
  HashSet hashes;
  size_t largest_batch = 0;
};

Scan ScanAll(pid_t root, size_t batch_pages) {
  Scan scan;
  auto stats = ScanTreeMemory(root, batch_pages, [&](const uint8_t* pages, size_t count) {
    scan.largest_batch = std::max(scan.largest_batch, count);
    for (size_t i = 0; i < count; ++i) scan.hashes.insert(page_server::HashPage(pages + i * 4096));
    return Status::Ok();
  });
  EXPECT_TRUE(stats.ok()) << stats.status().message();
  if (stats.ok()) scan.stats = *stats;
  return scan;
}

size_t Found(const HashSet& wanted, const HashSet& in) {
  size_t n = 0;
  for (const auto& h : wanted) n += in.count(h);
  return n;
}

TEST(TreeMemory, AScanReadsEveryPresentPageOfEveryProcessAndNoOther) {
  constexpr size_t kUntouched = 4096;  // 16 MiB mapped, nothing present until written
  MemoryHolder tree;
  MemoryHolder::Start({64, kUntouched}, {32}, &tree);
  if (HasFatalFailure()) return;
  const HashSet holder_pages = WritePattern(tree.holder().pid, tree.holder().regions[0], 100, 64);
  const HashSet child_pages = WritePattern(tree.child().pid, tree.child().regions[0], 200, 32);

  const Scan before = ScanAll(tree.holder().pid, 64);
  EXPECT_EQ(Found(holder_pages, before.hashes), 64u) << "the holder's pages";
  EXPECT_EQ(Found(child_pages, before.hashes), 32u) << "its child's pages";
  EXPECT_EQ(before.stats.bytes_read, before.stats.pages_present * 4096);
  EXPECT_GE(before.stats.pages_present, 96u);
  EXPECT_LT(before.stats.pages_present, kUntouched / 2) << "pages never touched are not present, not read";
  EXPECT_LE(before.largest_batch, 64u);

  // Touch 500 of them: exactly those are read on top of what was there.
  const HashSet touched = WritePattern(tree.holder().pid, tree.holder().regions[1] + 100 * 4096, 300, 500);
  EXPECT_EQ(Found(touched, before.hashes), 0u);
  const Scan after = ScanAll(tree.holder().pid, 64);
  EXPECT_EQ(Found(touched, after.hashes), 500u);
  EXPECT_EQ(Found(holder_pages, after.hashes), 64u);
  EXPECT_EQ(Found(child_pages, after.hashes), 32u);
  EXPECT_GE(after.stats.pages_present, before.stats.pages_present + 500);
  EXPECT_LE(after.stats.pages_present, before.stats.pages_present + 500 + 16) << "the tree sleeps between scans";
}

TEST(TreeMemory, BatchesAreAtMostTheSizeAsked) {
  MemoryHolder tree;
  MemoryHolder::Start({40}, {}, &tree);
  if (HasFatalFailure()) return;
  const HashSet written = WritePattern(tree.holder().pid, tree.holder().regions[0], 1, 40);
  const Scan scan = ScanAll(tree.holder().pid, 7);
  EXPECT_LE(scan.largest_batch, 7u);
  EXPECT_GT(scan.largest_batch, 0u);
  EXPECT_EQ(Found(written, scan.hashes), 40u);
}

TEST(TreeMemory, TheConsumersErrorStopsTheScan) {
  MemoryHolder tree;
  MemoryHolder::Start({40}, {}, &tree);
  if (HasFatalFailure()) return;
  WritePattern(tree.holder().pid, tree.holder().regions[0], 1, 40);
  int calls = 0;
  auto stats = ScanTreeMemory(tree.holder().pid, 8, [&](const uint8_t*, size_t) {
    calls++;
    return Status::Unavailable("the destination went away");
  });
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1);
}

TEST(TreeMemory, AGoneProcessHasNothingToRead) {
  pid_t gone;
  {
    MemoryHolder tree;
    MemoryHolder::Start({1}, {}, &tree);
    if (HasFatalFailure()) return;
    gone = tree.holder().pid;
  }  // killed and reaped
  auto stats = ScanTreeMemory(gone, 8, [](const uint8_t*, size_t) { return Status::Internal("nothing to consume"); });
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  EXPECT_EQ(stats->pages_present, 0u);
}

TEST(TreeMemory, TreePidsAndHostPids) {
  MemoryHolder tree;
  MemoryHolder::Start({1}, {1}, &tree);
  if (HasFatalFailure()) return;
  EXPECT_EQ(TreePids(tree.holder().pid), (std::vector<pid_t>{tree.holder().pid, tree.child().pid}));
  // Not in a PID namespace of its own: each process's pid in the tree is its pid here.
  const auto host = HostPidsByVirtualPid(tree.holder().pid);
  EXPECT_EQ(host,
            (std::map<uint64_t, pid_t>{{tree.holder().pid, tree.holder().pid}, {tree.child().pid, tree.child().pid}}));
}

TEST(TreeMemory, TreeResidentBytesCountsWhatItsProcessesHold) {
  MemoryHolder tree;
  MemoryHolder::Start({1000}, {1000}, &tree);
  if (HasFatalFailure()) return;
  const uint64_t before = TreeResidentBytes(tree.holder().pid);
  WritePattern(tree.holder().pid, tree.holder().regions[0], 1, 1000);
  WritePattern(tree.child().pid, tree.child().regions[0], 2, 1000);
  const uint64_t after = TreeResidentBytes(tree.holder().pid);
  EXPECT_GE(after, before + 2000 * 4096 - 64 * 4096);
  EXPECT_LE(after, before + 2000 * 4096 + 256 * 4096);
}

TEST(TreeMemory, PrivateWritableRangesAreWhereAProcessKeepsItsData) {
  const std::string maps =
      "55d0a0000000-55d0a0001000 r--p 00000000 08:01 123   /usr/bin/python3\n"
      "55d0a0001000-55d0a0003000 rw-p 00001000 08:01 123   /usr/bin/python3\n"
      "55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0     [heap]\n"
      "7f0000000000-7f0000010000 rw-s 00000000 00:01 77    /dev/shm/x (deleted)\n"
      "7f0000010000-7f0000020000 rw-p 00000000 00:00 0 \n"
      "7f0000020000-7f0000030000 rwxp 00000000 00:00 0\n"
      "7f0000030000-7f0000040000 rw-p 00000000 00:05 9     /dev/zero\n"
      "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]\n"
      "7ffd00100000-7ffd00104000 r--p 00000000 00:00 0     [vvar]\n"
      "7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0     [vdso]\n"
      "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n"
      "garbage\n"
      "7f0000050000-7f0000040000 rw-p 00000000 00:00 0\n";
  const std::vector<MemoryRange> ranges = PrivateWritableRanges(maps);
  std::vector<std::pair<uint64_t, uint64_t>> got;
  for (const auto& r : ranges) got.emplace_back(r.start, r.end);
  EXPECT_EQ(got, (std::vector<std::pair<uint64_t, uint64_t>>{{0x55d0a0001000, 0x55d0a0003000},
                                                             {0x55d0a1000000, 0x55d0a1100000},
                                                             {0x7f0000010000, 0x7f0000020000},
                                                             {0x7f0000020000, 0x7f0000030000},
                                                             {0x7ffd00000000, 0x7ffd00021000}}));
}

}  // namespace
}  // namespace elsa
