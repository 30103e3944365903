#include "elsa/page_server/criu_stats.h"

#include <gtest/gtest.h>

#include <vector>

#include "protobuf_wire.h"

namespace elsa::page_server {
namespace {

void PutVarintField(std::vector<uint8_t>* out, uint64_t number, uint64_t value) {
  wire::PutVarint(out, number << 3);
  wire::PutVarint(out, value);
}

// A stats-dump laid out as CRIU writes it: service magic, stats magic, one stats_entry record.
std::vector<uint8_t> StatsImage(uint32_t first_magic, const std::vector<uint8_t>& dump_entry, uint64_t field = 1) {
  std::vector<uint8_t> entry;
  wire::PutVarint(&entry, field << 3 | 2);
  wire::PutVarint(&entry, dump_entry.size());
  entry.insert(entry.end(), dump_entry.begin(), dump_entry.end());
  std::vector<uint8_t> image;
  wire::PutU32(&image, first_magic);
  wire::PutU32(&image, 0x57093306);
  wire::PutRecord(&image, entry);
  return image;
}

std::vector<uint8_t> DumpEntry() {
  std::vector<uint8_t> d;
  PutVarintField(&d, 1, 12345);    // freezing_time, us
  PutVarintField(&d, 2, 310000);   // frozen_time
  PutVarintField(&d, 5, 1000);     // pages_scanned
  PutVarintField(&d, 7, 10);       // pages_written
  PutVarintField(&d, 9, 990);      // pages_lazy
  PutVarintField(&d, 12, 7);       // shpages_scanned: read past, not needed
  return d;
}

TEST(CriuStats, ReadsCriusOwnTimings) {
  auto stats = ParseCriuDumpStats(StatsImage(0x55105940, DumpEntry()));
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  EXPECT_DOUBLE_EQ(stats->freezing_seconds, 0.012345);
  EXPECT_DOUBLE_EQ(stats->frozen_seconds, 0.31);
  EXPECT_EQ(stats->pages_scanned, 1000u);
  EXPECT_EQ(stats->pages_written, 10u);
  EXPECT_EQ(stats->pages_lazy, 990u);
}

TEST(CriuStats, DamagedImagesAreCorruptionNotCrashes) {
  // The common magic instead of the service one: some other image.
  EXPECT_EQ(ParseCriuDumpStats(StatsImage(0x54564319, DumpEntry())).status().code(), StatusCode::kCorruption);
  // A restore's statistics (field 2), no dump's.
  EXPECT_EQ(ParseCriuDumpStats(StatsImage(0x55105940, DumpEntry(), 2)).status().code(), StatusCode::kCorruption);
  auto image = StatsImage(0x55105940, DumpEntry());
  for (size_t cut = 0; cut < image.size(); ++cut) {
    std::vector<uint8_t> truncated(image.begin(), image.begin() + static_cast<std::ptrdiff_t>(cut));
    EXPECT_FALSE(ParseCriuDumpStats(truncated).ok()) << "cut at " << cut;
  }
}

}  // namespace
}  // namespace elsa::page_server
