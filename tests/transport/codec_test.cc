#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "frame.h"
#include "page_codec.h"

namespace elsa::transport {
namespace {

FrameHeader SampleHeader() {
  FrameHeader h;
  h.type = FrameType::kPages;
  h.flags = kFlagCompressed;
  h.stream = 3;
  h.wire_length = 1000;
  h.raw_length = 5000;
  h.sequence = 0x1122334455667788ULL;
  h.payload_xxh3 = 0xdeadbeefcafef00dULL;
  return h;
}

TEST(FrameHeader, RoundTrips) {
  uint8_t buf[kFrameHeaderSize];
  EncodeFrameHeader(SampleHeader(), buf);
  auto h = DecodeFrameHeader(buf, 1 << 20);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->type, FrameType::kPages);
  EXPECT_EQ(h->stream, 3);
  EXPECT_EQ(h->raw_length, 5000u);
  EXPECT_EQ(h->sequence, 0x1122334455667788ULL);
  EXPECT_EQ(h->payload_xxh3, 0xdeadbeefcafef00dULL);
}

TEST(FrameHeader, EveryFlippedBitIsCaught) {
  uint8_t good[kFrameHeaderSize];
  EncodeFrameHeader(SampleHeader(), good);
  for (size_t byte = 0; byte < kFrameHeaderSize; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      uint8_t bad[kFrameHeaderSize];
      std::memcpy(bad, good, sizeof bad);
      bad[byte] ^= static_cast<uint8_t>(1 << bit);
      EXPECT_FALSE(DecodeFrameHeader(bad, 1 << 20).ok()) << "byte " << byte << " bit " << bit;
    }
  }
}

TEST(FrameHeader, RejectsOversizedUnknownAndInconsistentFrames) {
  uint8_t buf[kFrameHeaderSize];
  FrameHeader h = SampleHeader();
  h.raw_length = 2u << 20;
  EncodeFrameHeader(h, buf);
  EXPECT_EQ(DecodeFrameHeader(buf, 1 << 20).status().code(), StatusCode::kProtocolError);

  h = SampleHeader();
  h.type = static_cast<FrameType>(9);
  EncodeFrameHeader(h, buf);
  EXPECT_EQ(DecodeFrameHeader(buf, 1 << 20).status().code(), StatusCode::kProtocolError);

  h = SampleHeader();
  h.flags = 0;  // raw, yet raw and wire lengths differ
  EncodeFrameHeader(h, buf);
  EXPECT_EQ(DecodeFrameHeader(buf, 1 << 20).status().code(), StatusCode::kProtocolError);

  h = SampleHeader();
  h.type = FrameType::kAck;
  EncodeFrameHeader(h, buf);
  EXPECT_EQ(DecodeFrameHeader(buf, 1 << 20).status().code(), StatusCode::kProtocolError);
}

PageBatch MixedBatch(size_t pages) {
  PageBatch b(pages);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < pages; ++i) {
    uint8_t* p = b.AddPage(0x7f0000000000ULL + i * kPageSize * 3);
    if (i % 3 == 0) {
      std::memset(p, 0, kPageSize);  // zero page
    } else {
      for (size_t k = 0; k < kPageSize; k += 8) {
        uint64_t v = rng();
        std::memcpy(p + k, &v, 8);
      }
    }
  }
  return b;
}

TEST(PagePayload, ZeroPagesCostAFlagNotAPage) {
  PageBatch b = MixedBatch(30);
  PagePayloadPlan plan = PlanPagePayload(b);
  EXPECT_EQ(plan.nonzero.size(), 20u);
  EXPECT_EQ(plan.payload_bytes(), 8 + 30 * 8 + 20 * kPageSize);
  auto back = DecodePagePayload(FlattenPagePayload(b, plan), MaxPagesPerFrame(16u << 20));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 30u);
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_EQ(back->address(i), b.address(i));
    EXPECT_EQ(std::memcmp(back->page(i), b.page(i), kPageSize), 0) << i;
  }
}

TEST(PagePayload, IovecsCoverRunsWithoutCopying) {
  PageBatch b = MixedBatch(30);
  PagePayloadPlan plan = PlanPagePayload(b);
  std::vector<iovec> iov;
  AppendPagePayloadIov(b, plan, &iov);
  size_t total = 0;
  for (const auto& v : iov) total += v.iov_len;
  EXPECT_EQ(total, plan.payload_bytes());
  EXPECT_EQ(iov[1].iov_base, b.page(1));  // points into the batch itself
}

TEST(PagePayload, RejectsMalformedPayloads) {
  PageBatch b = MixedBatch(4);
  std::vector<uint8_t> good = FlattenPagePayload(b, PlanPagePayload(b));
  std::vector<uint8_t> bad = good;
  bad.pop_back();
  EXPECT_EQ(DecodePagePayload(bad, MaxPagesPerFrame(16u << 20)).status().code(), StatusCode::kProtocolError);
  bad = good;
  bad[0] = 200;  // claims 200 pages
  EXPECT_EQ(DecodePagePayload(bad, MaxPagesPerFrame(16u << 20)).status().code(), StatusCode::kProtocolError);
  bad = good;
  bad[8] |= 0x2;  // unknown entry flag
  EXPECT_EQ(DecodePagePayload(bad, MaxPagesPerFrame(16u << 20)).status().code(), StatusCode::kProtocolError);
  EXPECT_FALSE(DecodePagePayload(std::vector<uint8_t>(3), MaxPagesPerFrame(16u << 20)).ok());
}

TEST(PagePayload, ZeroPagesCannotExpandPastAFrame) {
  // 8 bytes of table per zero page: a 64 KiB payload naming 8191 zero pages would decode to
  // 32 MiB; with a 16 MiB frame bound, at most 4087 pages decode.
  const size_t max_pages = MaxPagesPerFrame(16u << 20);
  auto zero_pages = [](uint32_t count) {
    std::vector<uint8_t> payload(8 + static_cast<size_t>(count) * 8, 0);
    std::memcpy(payload.data(), &count, 4);
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t entry = static_cast<uint64_t>(i) * kPageSize | kPageEntryZero;
      std::memcpy(payload.data() + 8 + i * 8, &entry, 8);
    }
    return payload;
  };
  auto fits = DecodePagePayload(zero_pages(static_cast<uint32_t>(max_pages)), max_pages);
  ASSERT_TRUE(fits.ok()) << fits.status().ToString();
  EXPECT_EQ(fits->size(), max_pages);
  auto too_many = DecodePagePayload(zero_pages(8191), max_pages);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(too_many.status().message().find("at most"), std::string::npos) << too_many.status().message();
}

TEST(Compression, ShrinksTextAndRefusesNoise) {
  std::vector<uint8_t> text;
  for (int i = 0; i < 2000; ++i) {
    const char* word = "import numpy as np; x = 41; ";
    text.insert(text.end(), word, word + std::strlen(word));
  }
  auto packed = CompressIfSmaller(text);
  ASSERT_FALSE(packed.empty());
  EXPECT_LT(packed.size(), text.size() / 4);
  auto back = Decompress(packed, text.size());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, text);

  PageBatch noise = MixedBatch(8);
  std::vector<uint8_t> flat(noise.page(1), noise.page(1) + kPageSize);
  EXPECT_TRUE(CompressIfSmaller(flat).empty());
  EXPECT_FALSE(Decompress(std::vector<uint8_t>{1, 2, 3}, 100).ok());
}

}  // namespace
}  // namespace elsa::transport
