#include "elsa/page_server/protocol.h"

#include <gtest/gtest.h>

#include <cstring>

namespace elsa::page_server {
namespace {

TEST(Request, RoundTripsWithFlagsInTheHighBits) {
  Request r{kAddF, kPePresent | kPeLazy, 12, 0x7f0000001000, EncodeDstId({ImageKind::kProcess, 42})};
  auto bytes = EncodeRequest(r);
  uint32_t cmd;
  std::memcpy(&cmd, bytes.data(), 4);
  EXPECT_EQ(cmd, (6u | (6u << 16)));
  Request back = DecodeRequest(bytes);
  EXPECT_EQ(back.command, kAddF);
  EXPECT_EQ(back.flags, kPePresent | kPeLazy);
  EXPECT_EQ(back.nr_pages, 12u);
  EXPECT_EQ(back.vaddr, 0x7f0000001000u);
  auto target = DecodeDstId(back.dst_id);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->id, 42u);
  EXPECT_EQ(target->kind, ImageKind::kProcess);
}

TEST(DstId, RejectsUnknownTypes) {
  EXPECT_EQ(DecodeDstId((7 << 8) | 9).status().code(), StatusCode::kProtocolError);
  EXPECT_EQ(DecodeDstId((7 << 8) | 2)->kind, ImageKind::kShmem);
  EXPECT_EQ(PagemapFileName({ImageKind::kShmem, 7}), "pagemap-shmem-7.img");
  EXPECT_EQ(PagemapFileName({ImageKind::kProcess, 1}), "pagemap-1.img");
  EXPECT_EQ(PagesFileName(65537), "pages-65537.img");
}

TEST(PagemapImage, RoundTripsAndWritesBothPageCounts) {
  std::vector<PagemapEntry> entries = {{0x400000, 3, kPePresent}, {0x7fff0000, 1ull << 33, kPeLazy}};
  auto bytes = EncodePagemapImage(0x10001, entries);
  auto image = DecodePagemapImage(bytes);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->pages_id, 0x10001u);
  EXPECT_EQ(image->entries, entries);
}

TEST(PagemapImage, ReadsOldEntriesLikeCriuDoes) {
  // magic, magic, head{pages_id=5}, entry{vaddr=0x1000, compat_nr_pages=2} (no flags, no field 5)
  std::vector<uint8_t> b = {0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, 2, 0, 0, 0, 0x08, 5,
                            5,    0,    0,    0,    0x08, 0x80, 0x20, 0x10, 2};
  auto image = DecodePagemapImage(b);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  ASSERT_EQ(image->entries.size(), 1u);
  EXPECT_EQ(image->entries[0].nr_pages, 2u);
  EXPECT_EQ(image->entries[0].flags, kPePresent);
}

TEST(PagemapImage, RejectsDamage) {
  auto good = EncodePagemapImage(1, std::vector<PagemapEntry>{{0x1000, 1, kPePresent}});
  auto bad = good;
  bad[0] ^= 1;
  EXPECT_EQ(DecodePagemapImage(bad).status().code(), StatusCode::kCorruption);
  bad = good;
  bad.pop_back();
  EXPECT_FALSE(DecodePagemapImage(bad).ok());
  bad = good;
  bad[8] = 0xff;  // record length far past the end
  EXPECT_FALSE(DecodePagemapImage(bad).ok());
  EXPECT_FALSE(DecodePagemapImage(std::vector<uint8_t>{}).ok());
}

}  // namespace
}  // namespace elsa::page_server
