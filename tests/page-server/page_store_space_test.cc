// The page store on a disk that fills up: a small tmpfs made by the test stands in for a full
// disk, so ENOSPC comes from the real kernel, not from an injected error.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "elsa/page_server/page_store.h"
#include "elsa/unique_fd.h"
#include "test_util.h"

namespace elsa::page_server {
namespace {

using elsa::testing::TempDir;

constexpr size_t kPage = 4096;

// A tmpfs of `bytes` on a fresh directory, unmounted (lazily, so a leftover open file cannot
// keep it) and removed when the test ends, pass or fail.
class SmallFilesystem {
 public:
  explicit SmallFilesystem(uint64_t bytes) {
    const std::string options = "size=" + std::to_string(bytes) + ",mode=0700";
    if (::mount("elsa-test", dir_.path().c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0)
      error_ = std::string("mount tmpfs: ") + std::strerror(errno);
    else
      mounted_ = true;
  }
  ~SmallFilesystem() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  const std::string& error() const { return error_; }
  const std::string& path() const { return dir_.path(); }
  uint64_t FreeBytes() const {
    struct statvfs st {};
    ::statvfs(path().c_str(), &st);
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }
  // Takes all but `leave` bytes of what is free, in a file of its own.
  void FillLeaving(uint64_t leave) {
    UniqueFd fd(::open((path() + "/filler").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    std::vector<char> block(kPage, 'f');
    while (FreeBytes() > leave + kPage)
      if (::write(fd.get(), block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
  }
  void Unfill() { ::unlink((path() + "/filler").c_str()); }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string error_;
};

std::vector<uint8_t> RandomPages(size_t count, uint64_t seed) {
  std::vector<uint8_t> pages(count * kPage);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < pages.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(pages.data() + i, &v, 8);
  }
  return pages;
}

#define ELSA_REQUIRE_MOUNT(fs)                                            \
  do {                                                                    \
    ELSA_REQUIRE_ROOT();                                                  \
    ASSERT_TRUE((fs).error().empty()) << (fs).error();                    \
  } while (0)

// Collection copies the live pages of a segment before it deletes the segment; doing that for
// every affected segment before deleting any needs free space for all their live pages at once,
// exactly when the disk is full. One segment at a time needs room for one.
TEST(PageStoreSpace, CollectOnAFullDiskNeedsRoomForOneSegmentOnly) {
  constexpr uint64_t kSegment = 1u << 20;
  constexpr size_t kSegments = 8;
  SmallFilesystem fs(16u << 20);
  ELSA_REQUIRE_MOUNT(fs);
  auto store = PageStore::Open(fs.path() + "/store", kSegment);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  // 64 raw pages per batch (about 260 KiB), so each segment takes 4 batches: ~1 MiB.
  const size_t pages_per_segment = 4 * 64;
  const std::vector<uint8_t> pages = RandomPages(kSegments * pages_per_segment, 1);
  std::vector<PageHash> hashes(kSegments * pages_per_segment);
  for (size_t i = 0; i < hashes.size(); i += 64) {
    auto put = (*store)->PutBatch(pages.data() + i * kPage, 64, hashes.data() + i);
    ASSERT_TRUE(put.ok()) << put.status().ToString();
  }
  ASSERT_TRUE((*store)->Sync().ok());
  const uint64_t before = (*store)->Stats().stored_bytes;
  ASSERT_GE(before, kSegments * kSegment);
  // Every other page is dead: each segment keeps half its pages. Rewriting all of them first
  // would need ~4 MiB; leave 1.5 segments free.
  fs.FillLeaving(kSegment * 3 / 2);
  auto live = [&](const PageHash& h) {
    for (size_t i = 0; i < hashes.size(); i += 2)
      if (hashes[i] == h) return true;
    return false;
  };
  auto reclaimed = (*store)->Collect(live);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status().ToString();
  EXPECT_GT(*reclaimed, before / 3);

  // Live pages all there (also after reopening: what collection wrote is durable and indexed),
  // dead ones gone.
  store->reset();
  auto reopened = PageStore::Open(fs.path() + "/store", kSegment);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  std::vector<uint8_t> page(kPage);
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (i % 2 == 0) {
      Status got = (*reopened)->Get(hashes[i], page.data());
      ASSERT_TRUE(got.ok()) << "page " << i << ": " << got.ToString();
      ASSERT_EQ(0, std::memcmp(page.data(), pages.data() + i * kPage, kPage)) << "page " << i;
    } else {
      ASSERT_FALSE((*reopened)->Contains(hashes[i])) << "page " << i;
    }
  }
}

// A batch that meets a full disk fails, and must not leave its half-written records where the
// next append (once there is room) would be indexed at the wrong offset.
TEST(PageStoreSpace, APutThatMeetsAFullDiskFailsAndTheStoreStaysUsable) {
  SmallFilesystem fs(8u << 20);
  ELSA_REQUIRE_MOUNT(fs);
  auto store = PageStore::Open(fs.path() + "/store");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const std::vector<uint8_t> first = RandomPages(16, 2);
  std::vector<PageHash> first_hashes(16);
  ASSERT_TRUE((*store)->PutBatch(first.data(), 16, first_hashes.data()).ok());
  fs.FillLeaving(256u << 10);

  const std::vector<uint8_t> big = RandomPages(256, 3);  // 1 MiB: does not fit
  std::vector<PageHash> big_hashes(256);
  auto failed = (*store)->PutBatch(big.data(), 256, big_hashes.data());
  ASSERT_FALSE(failed.ok()) << "1 MiB into 256 KiB of free space";
  EXPECT_NE(failed.status().message().find("No space left on device"), std::string::npos) << failed.status().ToString();
  for (const PageHash& h : big_hashes) EXPECT_FALSE((*store)->Contains(h));

  fs.Unfill();
  auto retried = (*store)->PutBatch(big.data(), 256, big_hashes.data());
  ASSERT_TRUE(retried.ok()) << retried.status().ToString();
  EXPECT_EQ(*retried, 256u);
  ASSERT_TRUE((*store)->Sync().ok());
  std::vector<uint8_t> page(kPage);
  auto check_all = [&](const PageStore& s) {
    for (size_t i = 0; i < 256; ++i) {
      Status got = s.Get(big_hashes[i], page.data());
      ASSERT_TRUE(got.ok()) << "page " << i << " after the retry: " << got.ToString();
      ASSERT_EQ(0, std::memcmp(page.data(), big.data() + i * kPage, kPage));
    }
    for (size_t i = 0; i < 16; ++i) ASSERT_TRUE(s.Get(first_hashes[i], page.data()).ok());
  };
  check_all(**store);
  store->reset();
  auto reopened = PageStore::Open(fs.path() + "/store");
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  check_all(**reopened);
}

}  // namespace
}  // namespace elsa::page_server
