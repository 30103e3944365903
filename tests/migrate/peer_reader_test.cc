// ReceiveControl and PeerReader over a real channel pair (TCP on loopback): controls in order,
// pages and refs to their handlers, and every way a conversation ends.
#include "migrate/peer_reader.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "channel_test_util.h"
#include "migrate_test_util.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using transport::testing::ChannelPair;
using transport::testing::MakePair;
using transport::testing::TestOptions;
using Clock = std::chrono::steady_clock;

transport::PageBatch Batch(uint64_t first_address, size_t pages, uint64_t seed) {
  transport::PageBatch batch(pages);
  for (size_t i = 0; i < pages; ++i)
    batch.AddPage(first_address + i * transport::kPageSize, testing::PatternPage(seed, i).data());
  return batch;
}

class PeerReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { MakePair(transport::Backend::kTcp, TestOptions(2), &pair_); }
  Status Send(const peer::Control& control) { return pair_.client->Send(peer::EncodeControl(control), 0); }

  ChannelPair pair_;  // client: the peer; server: read by the code under test
};

// What the handlers saw, from the reader's thread.
struct Seen {
  std::mutex mu;
  std::vector<transport::PageBatch> batches;
  std::vector<std::vector<peer::PageRef>> refs;
  std::vector<std::string> intercepted;
  size_t batch_count() {
    std::lock_guard lock(mu);
    return batches.size();
  }
  size_t refs_count() {
    std::lock_guard lock(mu);
    return refs.size();
  }
  PeerReader::Handlers Handlers(bool intercept_wants = false) {
    PeerReader::Handlers h;
    h.pages = [this](const transport::PageBatch& b) {
      std::lock_guard lock(mu);
      batches.push_back(b);
      return Status::Ok();
    };
    h.refs = [this](std::span<const peer::PageRef> r) {
      std::lock_guard lock(mu);
      refs.emplace_back(r.begin(), r.end());
      return Status::Ok();
    };
    if (intercept_wants)
      h.intercept = [this](const peer::Control& c) {
        if (!std::holds_alternative<peer::Want>(c)) return false;
        std::lock_guard lock(mu);
        intercepted.emplace_back(peer::OpName(c));
        return true;
      };
    return h;
  }
};

TEST_F(PeerReaderTest, ControlsComeInTheOrderSent) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  for (uint64_t i = 1; i <= 20; ++i) ASSERT_TRUE(Send(peer::Pushed{i}).ok());
  ASSERT_TRUE(Send(peer::Committed{}).ok());
  auto first = reader.NextControl(5s);
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Ready>(*first));
  for (uint64_t i = 1; i <= 20; ++i) {
    auto next = reader.NextControl(5s);
    ASSERT_TRUE(next.ok()) << next.status().message();
    ASSERT_TRUE(std::holds_alternative<peer::Pushed>(*next)) << peer::OpName(*next);
    EXPECT_EQ(std::get<peer::Pushed>(*next).pages, i);
  }
  auto last = reader.NextControl(5s);
  ASSERT_TRUE(last.ok()) << last.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Committed>(*last));
}

TEST_F(PeerReaderTest, PagesAndRefsGoToTheirHandlersAsTheyArrive) {
  Seen seen;
  PeerReader reader(*pair_.server, seen.Handlers());
  const std::vector<peer::PageRef> refs = {{0x1000, 1, 2}, {0x2000, 3, 4}};
  ASSERT_TRUE(pair_.client->SendPages(Batch(0x10000, 3, 1), 0).ok());
  ASSERT_TRUE(pair_.client->Send(peer::EncodePageRefs(refs), 0).ok());
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  ASSERT_TRUE(pair_.client->SendPages(Batch(0x20000, 1, 2), 0).ok());
  ASSERT_TRUE(Send(peer::Committed{}).ok());

  auto ready = reader.NextControl(5s);
  ASSERT_TRUE(ready.ok()) << ready.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Ready>(*ready));
  // Sent on the same stream before `ready`: already handled (what came after may be too).
  EXPECT_GE(seen.batch_count(), 1u);
  EXPECT_EQ(seen.refs_count(), 1u);
  auto committed = reader.NextControl(5s);
  ASSERT_TRUE(committed.ok()) << committed.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Committed>(*committed));
  std::lock_guard lock(seen.mu);
  ASSERT_EQ(seen.batches.size(), 2u);
  ASSERT_EQ(seen.batches[0].size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(seen.batches[0].address(i), 0x10000 + i * 4096);
    EXPECT_EQ(0, std::memcmp(seen.batches[0].page(i), testing::PatternPage(1, i).data(), 4096)) << i;
  }
  EXPECT_EQ(seen.batches[1].address(0), 0x20000u);
  ASSERT_EQ(seen.refs.size(), 1u);
  ASSERT_EQ(seen.refs[0].size(), 2u);
  EXPECT_EQ(seen.refs[0][1].address, 0x2000u);
  EXPECT_EQ(seen.refs[0][1].hash_low, 3u);
  EXPECT_EQ(seen.refs[0][1].hash_high, 4u);
}

TEST_F(PeerReaderTest, PagesWithoutAHandlerEndTheConversation) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  ASSERT_TRUE(pair_.client->SendPages(Batch(0, 1, 1), 0).ok());
  ASSERT_TRUE(Send(peer::Committed{}).ok());
  EXPECT_TRUE(reader.NextControl(5s).ok()) << "what came before is still taken";
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(next.status().message().find("page data"), std::string::npos) << next.status().message();
}

TEST_F(PeerReaderTest, RefsWithoutAHandlerEndTheConversation) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(pair_.client->Send(peer::EncodePageRefs(std::vector<peer::PageRef>(1)), 0).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(next.status().message().find("page refs"), std::string::npos) << next.status().message();
}

TEST_F(PeerReaderTest, AFileChunkEndsTheConversation) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(pair_.client->Send(peer::EncodeFileChunk("core-1.img", 0, true, {}), 0).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(next.status().message().find("file chunk"), std::string::npos) << next.status().message();
}

TEST_F(PeerReaderTest, AnUndecodableMessageEndsTheConversation) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(pair_.client->Send({'J', '{', '"', 'o', 'p', '"', ':', '"', 'b', 'e', 'g', '"'}, 0).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kProtocolError) << next.status().ToString();
}

TEST_F(PeerReaderTest, AHandlerErrorEndsTheConversationOnceTheControlsBeforeItAreTaken) {
  std::atomic<int> calls{0};
  PeerReader::Handlers h;
  h.pages = [&](const transport::PageBatch&) {
    calls++;
    return Status::Corruption("this page does not belong here");
  };
  PeerReader reader(*pair_.server, std::move(h));
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  ASSERT_TRUE(Send(peer::Pushed{1}).ok());
  ASSERT_TRUE(pair_.client->SendPages(Batch(0, 1, 1), 0).ok());
  ASSERT_TRUE(Send(peer::Committed{}).ok());
  ASSERT_TRUE(pair_.client->SendPages(Batch(0, 1, 1), 0).ok());
  auto ready = reader.NextControl(5s);
  ASSERT_TRUE(ready.ok()) << ready.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Ready>(*ready));
  auto pushed = reader.NextControl(5s);
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Pushed>(*pushed));
  for (int i = 0; i < 2; ++i) {
    auto failed = reader.NextControl(5s);
    ASSERT_FALSE(failed.ok()) << "`committed` came after the failure: never delivered";
    EXPECT_EQ(failed.status().code(), StatusCode::kCorruption);
    EXPECT_EQ(failed.status().message(), "this page does not belong here");
  }
  EXPECT_EQ(calls.load(), 1) << "nothing is read after the failure";
}

TEST_F(PeerReaderTest, AHandlerThatThrowsEndsTheConversationAsAnInternalError) {
  PeerReader::Handlers h;
  h.refs = [](std::span<const peer::PageRef>) -> Status { throw std::runtime_error("bad_alloc, say"); };
  PeerReader reader(*pair_.server, std::move(h));
  ASSERT_TRUE(pair_.client->Send(peer::EncodePageRefs(std::vector<peer::PageRef>(2)), 0).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kInternal);
  EXPECT_NE(next.status().message().find("bad_alloc, say"), std::string::npos) << next.status().message();
}

TEST_F(PeerReaderTest, AnInterceptThatThrowsEndsTheConversationAsAnInternalError) {
  PeerReader::Handlers h;
  h.intercept = [](const peer::Control&) -> bool { throw std::logic_error("no"); };
  PeerReader reader(*pair_.server, std::move(h));
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kInternal);
}

TEST_F(PeerReaderTest, SilenceIsATimeout) {
  PeerReader reader(*pair_.server, {});
  const auto start = Clock::now();
  auto next = reader.NextControl(300ms);
  const auto waited = Clock::now() - start;
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kTimeout);
  EXPECT_GE(waited, 300ms);
  EXPECT_LT(waited, 3s);
  // The conversation is not over: a control that comes later is still taken.
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  EXPECT_TRUE(reader.NextControl(5s).ok());
}

TEST_F(PeerReaderTest, PagesFlowingAreProgressNotSilence) {
  Seen seen;
  PeerReader reader(*pair_.server, seen.Handlers());
  std::thread sender([&] {
    for (int i = 0; i < 16; ++i) {
      if (!pair_.client->SendPages(Batch(0, 1, static_cast<uint64_t>(i)), 0).ok()) return;
      std::this_thread::sleep_for(60ms);
    }
    (void)Send(peer::Ready{});
  });
  const auto start = Clock::now();
  auto next = reader.NextControl(400ms);  // well under the ~1 s the pages take
  sender.join();
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Ready>(*next));
  EXPECT_GT(Clock::now() - start, 800ms);
  EXPECT_EQ(seen.batch_count(), 16u);
}

TEST_F(PeerReaderTest, ThePeersErrorIsAnExternalFailureWithItsMessage) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(Send(peer::Error{"not enough memory here for session 'alice'"}).ok());
  auto next = reader.NextControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(next.status().message(), "the other agent: not enough memory here for session 'alice'");
}

TEST_F(PeerReaderTest, ThePeerClosingIsEndOfStreamAfterWhatItSent) {
  PeerReader reader(*pair_.server, {});
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  std::thread closer([&] { (void)pair_.client->Close(300ms); });
  auto ready = reader.NextControl(5s);
  ASSERT_TRUE(ready.ok()) << ready.status().message();
  auto end = reader.NextControl(5s);
  closer.join();
  ASSERT_FALSE(end.ok());
  EXPECT_EQ(end.status().code(), StatusCode::kEndOfStream) << end.status().ToString();
}

TEST_F(PeerReaderTest, InterceptedControlsWakeTheirCallerAndAreNotQueued) {
  Seen seen;
  PeerReader reader(*pair_.server, seen.Handlers(/*intercept_wants=*/true));
  ASSERT_TRUE(Send(peer::Want{0, 0x1000, 1}).ok());
  auto woken = reader.NextControlOrIntercepted(5s);
  ASSERT_TRUE(woken.ok()) << woken.status().message();
  EXPECT_FALSE(woken->has_value()) << "woken by the intercept, with no control";
  {
    std::lock_guard lock(seen.mu);
    EXPECT_EQ(seen.intercepted, std::vector<std::string>{"want"});
  }
  // Once woken, the intercept is spent: nothing more until something arrives.
  auto quiet = reader.NextControlOrIntercepted(200ms);
  ASSERT_FALSE(quiet.ok());
  EXPECT_EQ(quiet.status().code(), StatusCode::kTimeout);
  ASSERT_TRUE(Send(peer::Want{0, 0x2000, 1}).ok());
  ASSERT_TRUE(Send(peer::Delivered{}).ok());
  // NextControl is not woken by intercepts: it gets the control, never a want.
  auto delivered = reader.NextControl(5s);
  ASSERT_TRUE(delivered.ok()) << delivered.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Delivered>(*delivered));
  std::lock_guard lock(seen.mu);
  EXPECT_EQ(seen.intercepted.size(), 2u);
}

TEST_F(PeerReaderTest, DestroyingAnIdleReaderIsPrompt) {
  const auto start = Clock::now();
  { PeerReader reader(*pair_.server, {}); }
  EXPECT_LT(Clock::now() - start, 1s);
  // The channel is still usable by whoever reads it next.
  ASSERT_TRUE(Send(peer::Ready{}).ok());
  EXPECT_TRUE(ReceiveControl(*pair_.server, 5s).ok());
}

// ---- ReceiveControl ----

TEST_F(PeerReaderTest, ReceiveControlTakesTheNextControl) {
  ASSERT_TRUE(Send(peer::Pushed{5}).ok());
  auto got = ReceiveControl(*pair_.server, 5s);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(std::get<peer::Pushed>(*got).pages, 5u);
}

TEST_F(PeerReaderTest, ReceiveControlRefusesWhatIsNotAControl) {
  ASSERT_TRUE(pair_.client->SendPages(Batch(0, 1, 1), 0).ok());
  ASSERT_TRUE(pair_.client->Send(peer::EncodeFileChunk("x", 0, true, {}), 0).ok());
  ASSERT_TRUE(pair_.client->Send(peer::EncodePageRefs(std::vector<peer::PageRef>(1)), 0).ok());
  ASSERT_TRUE(pair_.client->Send({'?'}, 0).ok());
  for (int i = 0; i < 4; ++i) {
    auto got = ReceiveControl(*pair_.server, 5s);
    ASSERT_FALSE(got.ok()) << i;
    EXPECT_EQ(got.status().code(), StatusCode::kProtocolError) << i << ": " << got.status().ToString();
  }
}

TEST_F(PeerReaderTest, ReceiveControlTurnsThePeersErrorIntoAnExternalFailure) {
  ASSERT_TRUE(Send(peer::Error{"CRIU is missing"}).ok());
  auto got = ReceiveControl(*pair_.server, 5s);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(got.status().message(), "the other agent: CRIU is missing");
}

TEST_F(PeerReaderTest, ReceiveControlTimesOut) {
  auto got = ReceiveControl(*pair_.server, 100ms);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kTimeout);
}

}  // namespace
}  // namespace elsa
