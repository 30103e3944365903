// Faults injected between the two halves (FaultInjectionChannel): each ends the conversation
// with a clear error on both sides, in bounded time, or is healed; none hangs or crashes. And
// the wrapper itself does what it says.
#include <gtest/gtest.h>

#include "postcopy_fixture.h"

namespace elsa::testing {
namespace {

using Clock = std::chrono::steady_clock;
using transport::testing::ChannelPair;
using transport::testing::IsData;
using transport::testing::IsPages;
using transport::testing::MakePair;
using transport::testing::TestOptions;

// A control message with this op, as a fault rule sees it.
std::function<bool(const MessageView&)> IsOp(std::string op) {
  return [op](const MessageView& m) {
    if (m.kind != transport::Message::Kind::kData || !m.data) return false;
    auto decoded = peer::DecodeMessage(*m.data);
    return decoded.ok() && std::holds_alternative<peer::Control>(*decoded) &&
           peer::OpName(std::get<peer::Control>(*decoded)) == op;
  };
}

// ---- the wrapper ----

class FaultInjection : public ::testing::Test {
 protected:
  void SetUp() override {
    MakePair(transport::Backend::kTcp, TestOptions(1), &pair_);
    faulty_ = std::make_unique<FaultInjectionChannel>(*pair_.client);
  }
  std::vector<uint8_t> Next() {
    auto m = pair_.server->Receive(5s);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? m->data : std::vector<uint8_t>{};
  }
  ChannelPair pair_;
  std::unique_ptr<FaultInjectionChannel> faulty_;
};

TEST_F(FaultInjection, DropsTheNthMatchingMessage) {
  faulty_->AddFault({.action = FaultAction::kDrop, .match = IsData, .skip = 1, .times = 2});
  for (uint8_t i = 0; i < 5; ++i) ASSERT_TRUE(faulty_->Send({i}, 0).ok());
  EXPECT_EQ(Next(), std::vector<uint8_t>{0});
  EXPECT_EQ(Next(), std::vector<uint8_t>{3});
  EXPECT_EQ(Next(), std::vector<uint8_t>{4});
  EXPECT_EQ(faulty_->faults_fired(), 2);
  const auto log = faulty_->Log();
  ASSERT_EQ(log.size(), 5u);
  EXPECT_TRUE(log[1].faulted && log[2].faulted && !log[3].faulted);
}

TEST_F(FaultInjection, CorruptsOneByteOfADataMessage) {
  faulty_->AddFault({.action = FaultAction::kCorrupt});
  ASSERT_TRUE(faulty_->Send({1, 2, 3, 4, 5}, 0).ok());
  ASSERT_TRUE(faulty_->Send({1, 2, 3, 4, 5}, 0).ok());
  EXPECT_EQ(Next(), (std::vector<uint8_t>{1, 2, 3 ^ 0xff, 4, 5}));
  EXPECT_EQ(Next(), (std::vector<uint8_t>{1, 2, 3, 4, 5})) << "once";
}

TEST_F(FaultInjection, CorruptsAPageOrItsAddress) {
  faulty_->AddFault({.action = FaultAction::kCorrupt, .match = IsPages, .corrupt_at = 10});
  faulty_->AddFault({.action = FaultAction::kCorrupt, .match = IsPages, .skip = 1, .corrupt_address = true});
  for (int i = 0; i < 2; ++i) {
    transport::PageBatch batch;
    batch.AddPage(0x5000, PatternPage(1, 0).data());
    batch.AddPage(0x6000, PatternPage(1, 1).data());
    ASSERT_TRUE(faulty_->SendPages(std::move(batch), 0).ok());
  }
  auto first = pair_.server->Receive(5s);
  ASSERT_TRUE(first.ok());
  std::vector<uint8_t> page(first->pages.page(0), first->pages.page(0) + kPage);
  std::vector<uint8_t> expected = PatternPage(1, 0);
  expected[10] ^= 0xff;
  EXPECT_EQ(page, expected);
  EXPECT_EQ(first->pages.address(0), 0x5000u);
  auto second = pair_.server->Receive(5s);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->pages.address(0), 0x5000u ^ (0xffull << 56));
  EXPECT_EQ(second->pages.address(1), 0x6000u);
  EXPECT_EQ(0, std::memcmp(second->pages.page(0), PatternPage(1, 0).data(), kPage));
}

TEST_F(FaultInjection, DelaysAMessage) {
  faulty_->AddFault({.action = FaultAction::kDelay, .delay = 300ms});
  const auto start = Clock::now();
  ASSERT_TRUE(faulty_->Send({1}, 0).ok());
  EXPECT_EQ(Next(), std::vector<uint8_t>{1});
  EXPECT_GE(Clock::now() - start, 300ms);
}

TEST_F(FaultInjection, HoldsASendUntilReleased) {
  faulty_->AddFault({.action = FaultAction::kHold});
  auto sending = std::async(std::launch::async, [&] { return faulty_->Send({7}, 0); });
  ASSERT_TRUE(faulty_->WaitUntilHeld(1, 5s));
  EXPECT_EQ(pair_.server->Receive(100ms).status().code(), StatusCode::kTimeout);
  faulty_->Release();
  EXPECT_TRUE(sending.get().ok());
  EXPECT_EQ(Next(), std::vector<uint8_t>{7});
}

TEST_F(FaultInjection, ClosesMidConversation) {
  faulty_->AddFault({.action = FaultAction::kClose, .skip = 1});
  ASSERT_TRUE(faulty_->Send({1}, 0).ok());
  EXPECT_EQ(faulty_->Send({2}, 0).code(), StatusCode::kPeerClosed);
  EXPECT_EQ(faulty_->Send({3}, 0).code(), StatusCode::kPeerClosed);
  EXPECT_EQ(faulty_->SendPages(transport::PageBatch(1), 0).code(), StatusCode::kPeerClosed);
  EXPECT_EQ(Next(), std::vector<uint8_t>{1});
  EXPECT_EQ(pair_.server->Receive(5s).status().code(), StatusCode::kEndOfStream);
}

TEST_F(FaultInjection, FaultsWhatItReceivesToo) {
  FaultInjectionChannel receiving(*pair_.server);
  receiving.AddFault({.direction = Direction::kReceive, .action = FaultAction::kDrop, .times = 1});
  receiving.AddFault({.direction = Direction::kReceive, .action = FaultAction::kCorrupt, .corrupt_at = 0});
  ASSERT_TRUE(pair_.client->Send({1, 1}, 0).ok());
  ASSERT_TRUE(pair_.client->Send({2, 2}, 0).ok());
  ASSERT_TRUE(pair_.client->Send({3, 3}, 0).ok());
  auto first = receiving.Receive(5s);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->data, (std::vector<uint8_t>{2 ^ 0xff, 2})) << "the first dropped, the second corrupted";
  auto second = receiving.Receive(5s);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->data, (std::vector<uint8_t>{3, 3}));
  EXPECT_EQ(receiving.receive_calls(), 2u);
}

// ---- PeerReader ----

TEST_F(FaultInjection, APeerReaderGivenACorruptedControlReportsAProtocolError) {
  FaultInjectionChannel receiving(*pair_.server);
  receiving.AddFault({.direction = Direction::kReceive, .action = FaultAction::kCorrupt, .match = IsOp("pushed")});
  PeerReader reader(receiving, {});
  ASSERT_TRUE(pair_.client->Send(peer::EncodeControl(peer::Ready{}), 0).ok());
  ASSERT_TRUE(pair_.client->Send(peer::EncodeControl(peer::Pushed{12345}), 0).ok());
  ASSERT_TRUE(pair_.client->Send(peer::EncodeControl(peer::Committed{}), 0).ok());
  auto ready = reader.NextControl(5s);
  ASSERT_TRUE(ready.ok()) << ready.status().message();
  auto corrupted = reader.NextControl(5s);
  ASSERT_FALSE(corrupted.ok());
  EXPECT_EQ(corrupted.status().code(), StatusCode::kProtocolError) << corrupted.status().ToString();
}

TEST_F(FaultInjection, EveryByteOfAControlFlippedIsAProtocolError) {
  // Whichever byte of a control flips (to what no JSON text holds), it is refused as a
  // ProtocolError: never a crash, never another control carrying garbage.
  const std::vector<uint8_t> sent = peer::EncodeControl(peer::Want{1, 0x7f0000000000, 3});
  int refused = 0;
  for (size_t at = 0; at < sent.size(); ++at) {
    std::vector<uint8_t> bytes = sent;
    bytes[at] ^= 0xff;
    auto decoded = peer::DecodeMessage(bytes);
    if (!decoded.ok()) {
      EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError) << at;
      refused++;
    }
  }
  EXPECT_EQ(refused, static_cast<int>(sent.size())) << "0xff is never valid in a JSON text";
}

// ---- post-copy with faults ----

class PostcopyFaults : public PostcopyFixture {
 protected:
  void SetUp() override {
    Build({{0, 600, [](size_t i) { return i; }}, {1, 40, [](size_t i) { return 1000 + i; }}}, 4, 2s);
  }
};

TEST_F(PostcopyFaults, ADroppedBatchIsReportedByBothSides) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.action = FaultAction::kDrop, .match = IsBulk, .skip = 1});
  auto destination = DestinationAwaitsPages();
  const auto start = Clock::now();
  auto pushed = pusher_->Push(2s, {});
  Status delivered = destination.get();
  EXPECT_LT(Clock::now() - start, 5s);
  ASSERT_FALSE(delivered.ok());
  EXPECT_EQ(delivered.code(), StatusCode::kCorruption);
  EXPECT_NE(delivered.message().find("the source pushed 384 of 640 lazy pages"), std::string::npos)
      << delivered.message();
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(pushed.status().message(), "the other agent: " + delivered.message());
}

TEST_F(PostcopyFaults, ABatchWithACorruptedAddressIsRefusedAndReportedByBothSides) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.action = FaultAction::kCorrupt, .match = IsBulk, .skip = 1, .corrupt_address = true});
  auto destination = DestinationAwaitsPages();
  auto pushed = pusher_->Push(2s, {});
  Status delivered = destination.get();
  ASSERT_FALSE(delivered.ok());
  EXPECT_EQ(delivered.code(), StatusCode::kProtocolError);
  EXPECT_NE(delivered.message().find("not a lazy page of this session"), std::string::npos) << delivered.message();
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), StatusCode::kExternalFailure);
  EXPECT_NE(pushed.status().message().find("not a lazy page of this session"), std::string::npos)
      << pushed.status().message();
}

TEST_F(PostcopyFaults, AChannelClosedMidPushFailsBothSidesAndWakesWaitingReads) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.action = FaultAction::kClose, .match = IsBulk, .skip = 1});
  auto destination = DestinationAwaitsPages();
  const auto start = Clock::now();
  auto pushed = pusher_->Push(2s, {});
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), StatusCode::kPeerClosed) << pushed.status().ToString();
  // A read of a page that never came: failed by the destination's give-up, not left to its deadline.
  auto never = ReadAsync(run_starts_[0] + 599 * kPage, 1);
  Status delivered = destination.get();
  ASSERT_FALSE(delivered.ok());
  EXPECT_EQ(delivered.code(), StatusCode::kEndOfStream) << delivered.ToString();
  auto read = never.get();
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kEndOfStream) << read.status().ToString();
  EXPECT_EQ(give_ups_.load(), 1);
  EXPECT_LT(Clock::now() - start, 5s);
}

TEST_F(PostcopyFaults, ACorruptedDeliveredIsAProtocolErrorAtTheSource) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault(
      {.direction = Direction::kReceive, .action = FaultAction::kCorrupt, .match = IsOp("delivered")});
  auto destination = DestinationAwaitsPages();
  auto pushed = pusher_->Push(2s, {});
  EXPECT_TRUE(destination.get().ok());
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), StatusCode::kProtocolError) << pushed.status().ToString();
}

TEST_F(PostcopyFaults, ACorruptedWantIsAProtocolErrorAtTheSource) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.direction = Direction::kReceive, .action = FaultAction::kCorrupt, .match = IsOp("want")});
  auto read = ReadAsync(run_starts_[0], 1);
  auto control = pusher_->AwaitControl(2s);
  ASSERT_FALSE(control.ok());
  EXPECT_EQ(control.status().code(), StatusCode::kProtocolError) << control.status().ToString();
  pages_->Fail(Status::Cancelled("the source failed"));  // what the destination does when the source goes
  EXPECT_EQ(read.get().status().code(), StatusCode::kCancelled);
}

TEST_F(PostcopyFaults, ALostWantIsHealedByThePush) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.direction = Direction::kReceive, .action = FaultAction::kDrop, .match = IsOp("want")});
  const uint64_t address = run_starts_[1] + 39 * kPage;  // the last page pushed
  auto read = ReadAsync(address, 1);
  auto destination = DestinationAwaitsPages();
  auto pushed = pusher_->Push(2s, {});
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  EXPECT_EQ(pushed->wants, 0u);
  EXPECT_TRUE(destination.get().ok());
  auto got = read.get();
  ASSERT_TRUE(got.ok()) << got.status().message();
  ExpectBytes(address, *got);
}

TEST_F(PostcopyFaults, ADelayedDeliveredBeyondPatienceIsATimeoutAtTheSource) {
  if (HasFatalFailure()) return;
  source_channel_->AddFault(
      {.direction = Direction::kReceive, .action = FaultAction::kDelay, .match = IsOp("delivered"), .delay = 1500ms});
  auto destination = DestinationAwaitsPages();
  const auto start = Clock::now();
  auto pushed = pusher_->Push(500ms, {});
  EXPECT_TRUE(destination.get().ok());
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(pushed.status().code(), StatusCode::kTimeout) << pushed.status().ToString();
  EXPECT_LT(Clock::now() - start, 1400ms) << "the source's patience, not the delay";
}

}  // namespace
}  // namespace elsa::testing
