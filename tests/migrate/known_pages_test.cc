// KnownPages and ForwardingSink: a page's content crosses the link once, however often it is
// offered (within a batch, across batches, across threads).
#include "migrate/known_pages.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "channel_test_util.h"
#include "migrate_test_util.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using testing::PatternPage;

TEST(KnownPages, AHashIsClaimedOnce) {
  KnownPages known;
  const page_server::PageHash a = page_server::HashPage(PatternPage(1, 0).data());
  const page_server::PageHash b = page_server::HashPage(PatternPage(1, 1).data());
  EXPECT_TRUE(known.Claim(a));
  EXPECT_FALSE(known.Claim(a));
  EXPECT_TRUE(known.Claim(b));
  EXPECT_FALSE(known.Claim(b));
  EXPECT_EQ(known.size(), 2u);
  // Hashes that share a low half are still two hashes.
  EXPECT_TRUE(known.Claim({a.low, a.high + 1}));
  EXPECT_EQ(known.size(), 3u);
}

TEST(KnownPages, ConcurrentClaimsOfOneHashHaveOneWinner) {
  KnownPages known;
  std::atomic<int> winners{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (uint64_t i = 0; i < 2000; ++i)
        if (known.Claim({i, ~i})) winners++;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(winners.load(), 2000);
  EXPECT_EQ(known.size(), 2000u);
}

class ForwardingSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    transport::testing::MakePair(transport::Backend::kTcp, transport::testing::TestOptions(1), &pair_);
  }
  // The next batch the destination gets; the test fails on anything else.
  transport::PageBatch NextBatch() {
    auto message = pair_.server->Receive(5s);
    EXPECT_TRUE(message.ok()) << message.status().message();
    if (!message.ok()) return {};
    EXPECT_EQ(message->kind, transport::Message::Kind::kPages);
    return std::move(message->pages);
  }
  // Nothing else arrived before a marker the source sends now.
  void ExpectNothingBeforeAMarker() {
    ASSERT_TRUE(pair_.client->Send({'!'}, 0).ok());
    auto message = pair_.server->Receive(5s);
    ASSERT_TRUE(message.ok()) << message.status().message();
    ASSERT_EQ(message->kind, transport::Message::Kind::kData) << "a page batch was sent";
    EXPECT_EQ(message->data, std::vector<uint8_t>{'!'});
  }

  transport::testing::ChannelPair pair_;
};

std::vector<uint8_t> Pages(const std::vector<uint64_t>& indexes) {
  std::vector<uint8_t> out;
  for (uint64_t i : indexes) {
    const auto page = PatternPage(7, i);
    out.insert(out.end(), page.begin(), page.end());
  }
  return out;
}

TEST_F(ForwardingSinkTest, EachContentCrossesOnce) {
  KnownPages known;
  ForwardingSink sink(*pair_.client, known);
  // Pages 0 1 0 2 1: three contents, two repeated within the batch.
  const std::vector<uint64_t> first = {0, 1, 0, 2, 1};
  std::vector<uint8_t> bytes = Pages(first);
  std::vector<page_server::PageHash> hashes(first.size());
  auto sent = sink.PutBatch(bytes.data(), first.size(), hashes.data());
  ASSERT_TRUE(sent.ok()) << sent.status().message();
  EXPECT_EQ(*sent, 3u);
  for (size_t i = 0; i < first.size(); ++i)
    EXPECT_EQ(hashes[i], page_server::HashPage(PatternPage(7, first[i]).data())) << "every page's hash, sent or not";
  transport::PageBatch batch = NextBatch();
  ASSERT_EQ(batch.size(), 3u);
  // The address is the page's place in the batch offered.
  const std::vector<std::pair<uint64_t, uint64_t>> expected = {{0, 0}, {1, 1}, {3, 2}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(batch.address(i), expected[i].first * 4096);
    EXPECT_EQ(0, std::memcmp(batch.page(i), PatternPage(7, expected[i].second).data(), 4096)) << i;
  }
  EXPECT_EQ(known.size(), 3u);

  // Again, and with one new page among them: only that one goes.
  const std::vector<uint64_t> second = {2, 1, 3, 0};
  bytes = Pages(second);
  hashes.assign(second.size(), {});
  sent = sink.PutBatch(bytes.data(), second.size(), hashes.data());
  ASSERT_TRUE(sent.ok()) << sent.status().message();
  EXPECT_EQ(*sent, 1u);
  batch = NextBatch();
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch.address(0), 2u * 4096);
  EXPECT_EQ(0, std::memcmp(batch.page(0), PatternPage(7, 3).data(), 4096));

  // All known: nothing is sent at all.
  sent = sink.PutBatch(bytes.data(), second.size(), hashes.data());
  ASSERT_TRUE(sent.ok()) << sent.status().message();
  EXPECT_EQ(*sent, 0u);
  ExpectNothingBeforeAMarker();
  EXPECT_EQ(known.size(), 4u);
}

TEST_F(ForwardingSinkTest, PagesTheDestinationHoldsAreNotSent) {
  KnownPages known;
  known.Claim(page_server::HashPage(PatternPage(7, 5).data()));  // pre-copy sent it
  ForwardingSink sink(*pair_.client, known);
  std::vector<uint8_t> bytes = Pages({5, 6});
  std::vector<page_server::PageHash> hashes(2);
  auto sent = sink.PutBatch(bytes.data(), 2, hashes.data());
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(*sent, 1u);
  transport::PageBatch batch = NextBatch();
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(0, std::memcmp(batch.page(0), PatternPage(7, 6).data(), 4096));
}

TEST_F(ForwardingSinkTest, ABrokenChannelIsAnErrorSayingWhere) {
  KnownPages known;
  ForwardingSink sink(*pair_.client, known);
  (void)pair_.client->Close(200ms);
  std::vector<uint8_t> bytes = Pages({1});
  std::vector<page_server::PageHash> hashes(1);
  auto sent = sink.PutBatch(bytes.data(), 1, hashes.data());
  ASSERT_FALSE(sent.ok());
  EXPECT_NE(sent.status().message().find("sending pages to the destination"), std::string::npos)
      << sent.status().message();
}

}  // namespace
}  // namespace elsa
