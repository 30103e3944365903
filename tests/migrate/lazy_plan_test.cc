// LazyPlan from hand-built pagemap images: which pages are lazy, how they are numbered, where a
// (task, address) lies, and what images are refused.
#include "migrate/lazy_plan.h"

#include <gtest/gtest.h>

#include "migrate_test_util.h"

namespace elsa {
namespace {

using testing::Lazy;
using testing::Present;
using testing::TempDir;
using testing::WritePagemap;

constexpr uint64_t P = 4096;

TEST(LazyPlan, RunsAreTheLazyEntriesInPidThenAddressOrder) {
  TempDir images;
  // Written out of order, entries unsorted, pids whose text order is not their numeric order.
  WritePagemap(images.path(), 300, {Lazy(0x7000 * P, 2), Present(0x100 * P, 50), Lazy(0x10 * P, 3)});
  WritePagemap(images.path(), 1000, {Lazy(0x20 * P, 1)});
  WritePagemap(images.path(), 20, {Lazy(0x5000 * P, 4), Present(0x6000 * P, 1)});
  WritePagemap(images.path(), 42, {Present(0x10 * P, 8)});  // nothing lazy: not a task
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->pids(), (std::vector<uint64_t>{20, 300, 1000}));
  EXPECT_EQ(plan->pages(), 4u + 3 + 2 + 1);
  const auto& runs = plan->runs();
  ASSERT_EQ(runs.size(), 4u);
  auto expect_run = [&](size_t i, uint32_t task, uint64_t vaddr, uint64_t pages, uint64_t first) {
    SCOPED_TRACE(i);
    EXPECT_EQ(runs[i].task, task);
    EXPECT_EQ(runs[i].vaddr, vaddr);
    EXPECT_EQ(runs[i].pages, pages);
    EXPECT_EQ(runs[i].first, first);
  };
  expect_run(0, 0, 0x5000 * P, 4, 0);
  expect_run(1, 1, 0x10 * P, 3, 4);
  expect_run(2, 1, 0x7000 * P, 2, 7);
  expect_run(3, 2, 0x20 * P, 1, 9);
}

TEST(LazyPlan, TaskOfAndLocate) {
  TempDir images;
  WritePagemap(images.path(), 7, {Lazy(0x100 * P, 4), Lazy(0x104 * P, 2), Lazy(0x200 * P, 1)});
  WritePagemap(images.path(), 9, {Lazy(0x100 * P, 3)});
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->TaskOf(7), 0u);
  EXPECT_EQ(plan->TaskOf(9), 1u);
  EXPECT_EQ(plan->TaskOf(8), std::nullopt);
  EXPECT_EQ(plan->TaskOf(1), std::nullopt);
  EXPECT_EQ(plan->TaskOf(10), std::nullopt);

  auto at = [&](uint32_t task, uint64_t vaddr) { return plan->Locate(task, vaddr); };
  // Adjacent runs stay two runs; numbering goes on across them.
  ASSERT_TRUE(at(0, 0x100 * P));
  EXPECT_EQ(at(0, 0x100 * P)->index, 0u);
  EXPECT_EQ(at(0, 0x100 * P)->left, 4u);
  EXPECT_EQ(at(0, 0x103 * P)->index, 3u);
  EXPECT_EQ(at(0, 0x103 * P)->left, 1u);
  EXPECT_EQ(at(0, 0x104 * P)->index, 4u);
  EXPECT_EQ(at(0, 0x104 * P)->left, 2u);
  EXPECT_EQ(at(0, 0x105 * P)->left, 1u);
  EXPECT_EQ(at(0, 0x200 * P)->index, 6u);
  EXPECT_EQ(at(1, 0x100 * P)->index, 7u);
  EXPECT_EQ(at(1, 0x102 * P)->index, 9u);
  EXPECT_EQ(at(1, 0x102 * P)->left, 1u);
  // Not lazy pages.
  EXPECT_FALSE(at(0, 0xff * P)) << "below the first run";
  EXPECT_FALSE(at(0, 0x106 * P)) << "between runs";
  EXPECT_FALSE(at(0, 0x201 * P)) << "past the last run";
  EXPECT_FALSE(at(0, 0x100 * P + 1)) << "unaligned";
  EXPECT_FALSE(at(0, 0x101 * P - 8)) << "unaligned";
  EXPECT_FALSE(at(1, 0x103 * P)) << "past the task's run";
  EXPECT_FALSE(at(1, 0x200 * P)) << "task 0's page, not task 1's";
  EXPECT_FALSE(at(2, 0x100 * P)) << "no such task";
  EXPECT_FALSE(at(0, 0));
  EXPECT_FALSE(at(0, ~0ull & ~(P - 1)));
}

TEST(LazyPlan, OnlyProcessPagemapsCount) {
  TempDir images;
  WritePagemap(images.path(), 5, {Lazy(0x10 * P, 1)});
  // Shared memory is never lazy; other names are not pagemaps of a process.
  const std::vector<uint8_t> image = page_server::EncodePagemapImage(1, std::vector{Lazy(0x40 * P, 9)});
  const std::string bytes(image.begin(), image.end());
  for (const char* name : {"pagemap-shmem-6.img", "pagemap-07.img", "pagemap-8.img.tmp", "pagemap-x.img", "pagemap-9",
                           "pages-10.img", "xpagemap-11.img"})
    testing::WriteTextFile(images / name, bytes);
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->pids(), (std::vector<uint64_t>{5}));
  EXPECT_EQ(plan->pages(), 1u);
}

TEST(LazyPlan, NoLazyPagesIsAnEmptyPlan) {
  TempDir images;
  WritePagemap(images.path(), 5, {Present(0x10 * P, 3)});
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->pages(), 0u);
  EXPECT_TRUE(plan->runs().empty());
  EXPECT_FALSE(plan->Locate(0, 0x10 * P));
}

void ExpectCorruption(const std::vector<page_server::PagemapEntry>& entries, const std::string& why,
                      bool names_the_file = true) {
  SCOPED_TRACE(why);
  TempDir images;
  WritePagemap(images.path(), 5, {Lazy(0x10 * P, 1)});
  WritePagemap(images.path(), 6, entries);
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_FALSE(plan.ok()) << "accepted";
  EXPECT_EQ(plan.status().code(), StatusCode::kCorruption) << plan.status().ToString();
  if (names_the_file) {
    EXPECT_NE(plan.status().message().find("pagemap-6.img"), std::string::npos) << plan.status().message();
  }
}

TEST(LazyPlan, APlanLargerThanTheBoundIsRefused) {
  // The destination bounds a plan from the network by the memory it could hold.
  TempDir images;
  WritePagemap(images.path(), 1, {Lazy(0x10 * P, 600)});
  WritePagemap(images.path(), 2, {Lazy(0x10 * P, 500)});
  EXPECT_TRUE(LazyPlan::FromImages(images.path(), 1100).ok());
  auto refused = LazyPlan::FromImages(images.path(), 1099);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kCorruption);
  EXPECT_NE(refused.status().message().find("1099"), std::string::npos) << refused.status().message();
}

TEST(LazyPlan, OverlappingRunsAreRefused) {
  ExpectCorruption({Lazy(0x10 * P, 4), Lazy(0x13 * P, 2)}, "the second starts inside the first");
  ExpectCorruption({Lazy(0x13 * P, 2), Lazy(0x10 * P, 4)}, "the same, listed the other way round");
  ExpectCorruption({Lazy(0x10 * P, 1), Lazy(0x10 * P, 1)}, "the same page twice");
  ExpectCorruption({Lazy(0x10 * P, 10), Lazy(0x12 * P, 1)}, "one inside the other");
}

TEST(LazyPlan, UnalignedOrEmptyRunsAreRefused) {
  // Refused already by the image's decoder (whose error does not say which file).
  ExpectCorruption({Lazy(0x10 * P + 8, 1)}, "unaligned", false);
  ExpectCorruption({Lazy(0x10 * P + P / 2, 2)}, "half a page in", false);
  ExpectCorruption({Lazy(0x10 * P, 0)}, "no pages");
}

TEST(LazyPlan, RunsReachingBeyondUserSpaceAreRefused) {
  ExpectCorruption({Lazy(kUserSpaceEnd - P, 2)}, "the last page of user space and one more");
  ExpectCorruption({Lazy(kUserSpaceEnd, 1)}, "at the end of user space");
  ExpectCorruption({Lazy(0x10 * P, (kUserSpaceEnd >> 12))}, "more pages than user space has");
  ExpectCorruption({Lazy(0x10 * P, ~0ull)}, "a page count that wraps around");
  // The last page of user space itself is fine.
  TempDir images;
  WritePagemap(images.path(), 6, {Lazy(kUserSpaceEnd - P, 1)});
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->Locate(0, kUserSpaceEnd - P)->index, 0u);
}

// A run that starts above user space would put bits into the task's part of its post-copy
// address (PostcopyAddress): task 0's page would be named as task 1's.
TEST(LazyPlan, RunsStartingAboveUserSpaceAreRefused) {
  ExpectCorruption({Lazy(kUserSpaceEnd + P, 1)}, "one page above user space");
  ExpectCorruption({Lazy(~0ull & ~(P - 1), 1)}, "the top page of the 64-bit space");
}

TEST(LazyPlan, UnreadableImagesAreErrors) {
  TempDir images;
  testing::WriteTextFile(images / "pagemap-5.img", "not an image");
  auto plan = LazyPlan::FromImages(images.path());
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().code(), StatusCode::kOk);
  auto missing = LazyPlan::FromImages(images / "nowhere");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kIoError);
}

TEST(LazyPlan, PostcopyAddressPutsTheTaskAboveUserSpace) {
  EXPECT_EQ(PostcopyAddress(0, 0x7fff0000), 0x7fff0000u);
  EXPECT_EQ(PostcopyAddress(1, 0x1000), (1ull << 48) | 0x1000);
  EXPECT_EQ(PostcopyAddress(0xffff, kUserSpaceEnd - P) >> kTaskShift, 0xffffu);
  EXPECT_EQ(PostcopyAddress(0xffff, kUserSpaceEnd - P) & (kUserSpaceEnd - 1), kUserSpaceEnd - P);
}

}  // namespace
}  // namespace elsa
