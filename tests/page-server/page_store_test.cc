#include "elsa/page_server/page_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "test_util.h"

namespace elsa::page_server {
namespace {

using elsa::testing::TempDir;

std::vector<uint8_t> RandomPage(uint64_t seed) {
  std::vector<uint8_t> p(4096);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < p.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(p.data() + i, &v, 8);
  }
  return p;
}

std::vector<uint8_t> TextPage(int n) {
  std::string s;
  while (s.size() < 4096) s += "x = " + std::to_string(n) + "; arr.sum() ";
  return {s.begin(), s.begin() + 4096};
}

std::string Segment(const TempDir& dir, int n) {
  char name[32];
  std::snprintf(name, sizeof name, "/store/seg-%06d.pack", n);
  return dir.path() + name;
}

TEST(PageStore, StoresEachDistinctPageOnce) {
  TempDir dir;
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto a = (*store)->Put(RandomPage(1).data());
  auto b = (*store)->Put(RandomPage(1).data());
  auto c = (*store)->Put(TextPage(7).data());
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  PageStoreStats s = (*store)->Stats();
  EXPECT_EQ(s.puts, 3u);
  EXPECT_EQ(s.duplicate_puts, 1u);
  EXPECT_EQ(s.unique_pages, 2u);
  EXPECT_DOUBLE_EQ(s.dedup_ratio(), 1.5);
  // Each Put is padded to whole blocks: the random page's record (4136 bytes) takes two, the
  // text page's, compressed, one.
  EXPECT_EQ(s.stored_bytes, 8192u + 4096u) << "the text page is stored compressed";
  std::vector<uint8_t> out(4096);
  ASSERT_TRUE((*store)->Get(*c, out.data()).ok());
  EXPECT_EQ(out, TextPage(7));
  ASSERT_TRUE((*store)->Get(*a, out.data()).ok());
  EXPECT_EQ(out, RandomPage(1));
  EXPECT_EQ((*store)->Get({1, 2}, out.data()).code(), StatusCode::kNotFound);
}

TEST(PageStore, ReopensWithEveryPage) {
  TempDir dir;
  std::vector<PageHash> hashes;
  {
    auto store = PageStore::Open(dir / "store");
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 100; ++i) hashes.push_back(*(*store)->Put((i % 2 ? RandomPage(i) : TextPage(i)).data()));
    ASSERT_TRUE((*store)->Sync().ok());
  }
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Stats().unique_pages, 100u);
  std::vector<uint8_t> out(4096);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE((*store)->Get(hashes[i], out.data()).ok()) << i;
    EXPECT_EQ(out, i % 2 ? RandomPage(i) : TextPage(i));
  }
}

TEST(PageStore, ATornAppendIsCutOffAndNeverServed) {
  TempDir dir;
  PageHash kept, torn;
  {
    auto store = PageStore::Open(dir / "store");
    ASSERT_TRUE(store.ok());
    kept = *(*store)->Put(RandomPage(1).data());
    torn = *(*store)->Put(RandomPage(2).data());
  }
  const std::string seg = Segment(dir, 1);
  const auto size = std::filesystem::file_size(seg);
  // Each Put is padded to whole 4 KiB blocks: the last record's 4136 bytes start 8192 before the end.
  std::filesystem::resize_file(seg, size - 8192 + 1000);  // the crash hit mid-record
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok()) << store.status().message();
  std::vector<uint8_t> out(4096);
  EXPECT_TRUE((*store)->Get(kept, out.data()).ok());
  EXPECT_EQ((*store)->Get(torn, out.data()).code(), StatusCode::kNotFound);
  EXPECT_FALSE((*store)->Contains(torn));
  auto again = (*store)->Put(RandomPage(2).data());  // and it can be stored again
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*store)->Get(torn, out.data()).ok());
}

TEST(PageStore, ACrashBeforeSyncCanTearAnOlderSegmentWithoutLosingTheStore) {
  TempDir dir;
  std::vector<PageHash> hashes;
  {
    // A random page's record (4136 bytes) is padded to 8192: three to a segment, none fsync'd before Sync().
    auto store = PageStore::Open(dir / "store", 3 * 8192);
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 12; ++i) hashes.push_back(*(*store)->Put(RandomPage(i).data()));
  }
  ASSERT_TRUE(std::filesystem::exists(Segment(dir, 2)));
  std::filesystem::resize_file(Segment(dir, 1), std::filesystem::file_size(Segment(dir, 1)) - 8192 + 1000);
  auto store = PageStore::Open(dir / "store", 3 * 8192);
  ASSERT_TRUE(store.ok()) << store.status().message();
  std::vector<uint8_t> out(4096);
  EXPECT_TRUE((*store)->Get(hashes[0], out.data()).ok());
  EXPECT_EQ((*store)->Get(hashes[2], out.data()).code(), StatusCode::kNotFound) << "the torn record";
  for (int i = 3; i < 12; ++i) {
    ASSERT_TRUE((*store)->Get(hashes[i], out.data()).ok()) << i;
    EXPECT_EQ(out, RandomPage(i));
  }
  EXPECT_TRUE((*store)->Put(RandomPage(2).data()).ok());
  EXPECT_TRUE((*store)->Sync().ok());
}

TEST(PageStore, ADamagedRecordIsCorruptionNotData) {
  TempDir dir;
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  PageHash a = *(*store)->Put(RandomPage(1).data());
  PageHash b = *(*store)->Put(RandomPage(2).data());
  ASSERT_TRUE((*store)->Sync().ok());
  {
    std::fstream f(Segment(dir, 1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40 + 100);  // inside the first record's bytes
    f.put('\x5a');
  }
  std::vector<uint8_t> out(4096);
  EXPECT_EQ((*store)->Get(a, out.data()).code(), StatusCode::kCorruption);
  EXPECT_TRUE((*store)->Get(b, out.data()).ok());
}

TEST(PageStore, ADamagedRecordFoundOnOpenCostsOnlyItself) {
  // One damaged byte in the middle of the newest segment: only that record's page is lost; the
  // synced records after it are still served (they used to be cut off with it), and appends go on.
  TempDir dir;
  std::vector<PageHash> hashes;
  {
    auto store = PageStore::Open(dir / "store");
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 6; ++i) hashes.push_back(*(*store)->Put(RandomPage(100 + i).data()));
    ASSERT_TRUE((*store)->Sync().ok());
  }
  {
    // Each random page's record is padded to 8192 bytes: the third starts at 16384.
    std::fstream f(Segment(dir, 1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(2 * 8192 + 40 + 100);
    const char c = static_cast<char>(f.get());
    f.seekp(2 * 8192 + 40 + 100);
    f.put(static_cast<char>(c ^ 0x5a));
  }
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok()) << store.status().message();
  std::vector<uint8_t> out(4096);
  for (int i = 0; i < 6; ++i) {
    if (i == 2) {
      EXPECT_FALSE((*store)->Contains(hashes[i])) << "the damaged record is not served";
      continue;
    }
    ASSERT_TRUE((*store)->Get(hashes[i], out.data()).ok()) << "page " << i << " was lost with the damaged one";
    EXPECT_EQ(out, RandomPage(100 + i));
  }
  EXPECT_TRUE((*store)->Put(RandomPage(102).data()).ok());  // stored again
  EXPECT_TRUE((*store)->Get(hashes[2], out.data()).ok());
  EXPECT_TRUE((*store)->Sync().ok());
}

TEST(PageStore, GetBatchReturnsPagesInRequestOrder) {
  TempDir dir;
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  std::vector<PageHash> stored;
  for (int i = 0; i < 600; ++i) stored.push_back(*(*store)->Put((i % 3 ? RandomPage(i) : TextPage(i)).data()));
  // Out of store order, with repeats, gaps and runs, so reads are coalesced and scattered.
  std::vector<int> order;
  for (int i = 599; i >= 300; --i) order.push_back(i);
  for (int i = 0; i < 300; i += 7) order.push_back(i);
  order.push_back(5);
  order.push_back(5);
  std::vector<PageHash> want;
  for (int i : order) want.push_back(stored[i]);
  std::vector<uint8_t> out(want.size() * 4096);
  ASSERT_TRUE((*store)->GetBatch(want.data(), want.size(), out.data()).ok());
  for (size_t k = 0; k < order.size(); ++k) {
    const int i = order[k];
    const auto expected = i % 3 ? RandomPage(i) : TextPage(i);
    ASSERT_EQ(0, std::memcmp(out.data() + k * 4096, expected.data(), 4096)) << "position " << k << " page " << i;
  }
  want.push_back({1, 2});
  out.resize(want.size() * 4096);
  EXPECT_EQ((*store)->GetBatch(want.data(), want.size(), out.data()).code(), StatusCode::kNotFound);
  {
    ASSERT_TRUE((*store)->Sync().ok());
    std::fstream f(Segment(dir, 1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 + 40 + 100);  // inside page 1's record (page 0's, compressed, fills one block)
    f.put('\x5a');
  }
  EXPECT_EQ((*store)->GetBatch(stored.data(), 3, out.data()).code(), StatusCode::kCorruption);
}

TEST(PageStore, CollectKeepsLivePagesAndReclaimsTheRest) {
  TempDir dir;
  std::vector<PageHash> hashes;
  {
    auto store = PageStore::Open(dir / "store");
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 200; ++i) hashes.push_back(*(*store)->Put(RandomPage(i).data()));
    std::set<uint64_t> live;
    for (int i = 0; i < 200; i += 2) live.insert(hashes[i].low);
    auto reclaimed = (*store)->Collect([&](const PageHash& h) { return live.count(h.low) != 0; });
    ASSERT_TRUE(reclaimed.ok()) << reclaimed.status().message();
    EXPECT_GE(*reclaimed, 100u * 4096);
    EXPECT_EQ((*store)->Stats().unique_pages, 100u);
  }
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  std::vector<uint8_t> out(4096);
  for (int i = 0; i < 200; ++i) {
    Status s = (*store)->Get(hashes[i], out.data());
    if (i % 2 == 0) {
      ASSERT_TRUE(s.ok()) << i;
      EXPECT_EQ(out, RandomPage(i));
    } else {
      EXPECT_EQ(s.code(), StatusCode::kNotFound) << i;
    }
  }
  EXPECT_FALSE(std::filesystem::exists(Segment(dir, 1))) << "the old segment is gone";
}

TEST(PageStore, ConcurrentPutsAgree) {
  TempDir dir;
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) ASSERT_TRUE((*store)->Put(RandomPage(i).data()).ok());
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ((*store)->Stats().unique_pages, 200u);
  EXPECT_EQ((*store)->Stats().puts, 800u);
}

}  // namespace
}  // namespace elsa::page_server
