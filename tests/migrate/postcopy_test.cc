// Post-copy end to end over a channel pair: the pusher reading a stopped process tree, the
// destination's PostcopyPages answering reads, wants answered first, refs for what the
// destination holds; and PostcopyPages' own rules.
#include <gtest/gtest.h>

#include <set>

#include "postcopy_fixture.h"

namespace elsa::testing {
namespace {

using Clock = std::chrono::steady_clock;

class Postcopy : public PostcopyFixture {};

TEST_F(Postcopy, EveryPageArrivesWithItsBytesWantsFirstAndRefsForWhatTheDestinationHolds) {
  // Task 0: 600 pages (three pushes' worth) whose last 10 repeat its first 10, and 20 pages of
  // which the destination holds the first 10 already; task 1: 300 pages.
  Build({{0, 600, [](size_t i) { return i >= 590 ? i - 590 : i; }},
         {0, 20, [](size_t i) { return 5000 + i; }},
         {1, 300, [](size_t i) { return 10000 + i; }}});
  if (HasFatalFailure()) return;
  for (uint64_t id = 5000; id < 5010; ++id) DestinationHolds(id);
  ASSERT_EQ(plan_.pages(), 920u);
  ASSERT_EQ(plan_.pids(), (std::vector<uint64_t>{1, 2}));

  // The session faults before its restore is even reported: the want is answered while the
  // source waits for `restored`.
  const uint64_t faulted = run_starts_[0] + 300 * kPage;
  auto fault = ReadAsync(faulted, 4);
  std::thread restored_after_the_fault([&] {
    fault.wait();
    (void)pair_.server->Send(peer::EncodeControl(peer::Restored{1234, "", plan_.pages(), 0.5, 0.1}), 0);
  });
  auto restored = pusher_->AwaitControl(5s);
  restored_after_the_fault.join();
  ASSERT_TRUE(restored.ok()) << restored.status().message();
  ASSERT_TRUE(std::holds_alternative<peer::Restored>(*restored)) << peer::OpName(*restored);
  EXPECT_EQ(std::get<peer::Restored>(*restored).pid, 1234);
  auto faulted_bytes = fault.get();
  ASSERT_TRUE(faulted_bytes.ok()) << faulted_bytes.status().message();
  ASSERT_EQ(faulted_bytes->size(), 4 * kPage) << "the stretch the read asked for";
  ExpectBytes(faulted, *faulted_bytes);
  {
    std::lock_guard lock(wants_mu_);
    ASSERT_EQ(wants_asked_.size(), 1u);
    EXPECT_EQ(wants_asked_[0].task, 0u);
    EXPECT_EQ(wants_asked_[0].vaddr, faulted & (kUserSpaceEnd - 1));
    EXPECT_EQ(wants_asked_[0].pages, 4u);
  }

  auto destination = DestinationAwaitsPages();
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  auto stats = pusher_->Push(5s, [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); });
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  Status delivered = destination.get();
  ASSERT_TRUE(delivered.ok()) << delivered.message();

  EXPECT_EQ(stats->wants, 1u);
  EXPECT_EQ(stats->pages_faulted, 4u);
  EXPECT_EQ(stats->pages_referenced, 10u + 10u) << "repeated content, and content the destination held";
  EXPECT_EQ(stats->pages_sent, 920u - 4 - 20);
  EXPECT_GT(stats->seconds, 0);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back(), std::make_pair(uint64_t{920}, uint64_t{920}));

  // On the wire: each page's bytes at most once, each content at most once (faults aside), the
  // faulted pages first; none the destination held.
  std::map<uint64_t, int> bytes_sent;
  std::map<uint64_t, int> content_sent;
  const auto batches = SentBatches();
  ASSERT_FALSE(batches.empty());
  EXPECT_EQ(batches[0].stream, 0) << "the fault's pages, on the stream bulk does not use";
  EXPECT_EQ(batches[0].addresses,
            (std::vector<uint64_t>{faulted, faulted + kPage, faulted + 2 * kPage, faulted + 3 * kPage}));
  for (size_t b = 0; b < batches.size(); ++b) {
    if (b > 0) {
      EXPECT_EQ(batches[b].stream, 1) << "the bulk's own stream";
    }
    EXPECT_LE(batches[b].addresses.size(), 256u);
    for (uint64_t address : batches[b].addresses) {
      bytes_sent[address]++;
      content_sent[content_.at(address)]++;
    }
  }
  for (const auto& [address, times] : bytes_sent) EXPECT_EQ(times, 1) << std::hex << address;
  for (const auto& [id, times] : content_sent) EXPECT_EQ(times, 1) << "content " << id;
  for (uint64_t id = 5000; id < 5010; ++id) EXPECT_EQ(content_sent.count(id), 0u) << "held already: " << id;
  const auto refs = SentRefs();
  ASSERT_EQ(refs.size(), 20u);
  std::set<uint64_t> ref_addresses;
  for (const peer::PageRef& ref : refs) {
    ref_addresses.insert(ref.address);
    EXPECT_EQ(bytes_sent.count(ref.address), 0u) << "a page is sent as bytes or as a ref, not both";
    const auto hash = page_server::HashPage(Expected(ref.address).data());
    EXPECT_EQ(ref.hash_low, hash.low);
    EXPECT_EQ(ref.hash_high, hash.high);
  }
  EXPECT_EQ(bytes_sent.size() + ref_addresses.size(), 920u) << "every lazy page went, once";

  // Every page reads back with the tree's bytes, without asking the source again.
  EXPECT_TRUE(pages_->CheckComplete().ok());
  ExpectEveryPage();
  EXPECT_EQ(pages_->wants(), 1u);
  EXPECT_EQ(pages_->faults(), 1u);
  EXPECT_EQ(give_ups_.load(), 0);
}

// With a batch of the bulk held back, the want the destination asks meanwhile is answered before
// any later batch: a fault never queues behind the bulk.
TEST_F(Postcopy, AWantIsAnsweredBeforeTheRestOfThePush) {
  Build({{0, 1024, [](size_t i) { return i; }}});
  if (HasFatalFailure()) return;
  source_channel_->AddFault({.action = FaultAction::kHold, .match = IsBulk, .skip = 1});
  auto destination = DestinationAwaitsPages();
  auto pushing = std::async(std::launch::async, [&] { return pusher_->Push(5s, {}); });
  ASSERT_TRUE(source_channel_->WaitUntilHeld(1, 5s)) << "the second bulk batch never came";

  const uint64_t wanted = run_starts_[0] + 1000 * kPage;  // in the fourth batch
  auto fault = ReadAsync(wanted, 1);
  // Wait until the source's reader has taken the want in (it is reading again after it).
  size_t call = 0;
  ASSERT_TRUE(source_channel_->WaitForLog(
      [&](const std::vector<FaultRecord>& log) {
        for (const FaultRecord& r : log) {
          if (r.direction != Direction::kReceive || r.data.empty()) continue;
          auto decoded = peer::DecodeMessage(r.data);
          if (decoded.ok() && std::holds_alternative<peer::Control>(*decoded) &&
              std::holds_alternative<peer::Want>(std::get<peer::Control>(*decoded))) {
            call = r.receive_call;
            return true;
          }
        }
        return false;
      },
      5s));
  ASSERT_TRUE(source_channel_->WaitForReceiveCalls(call + 1, 5s));
  source_channel_->Release();

  auto pushed = pushing.get();
  ASSERT_TRUE(pushed.ok()) << pushed.status().message();
  ASSERT_TRUE(destination.get().ok());
  auto read = fault.get();
  ASSERT_TRUE(read.ok()) << read.status().message();
  ExpectBytes(wanted, *read);
  EXPECT_EQ(pushed->pages_faulted, 1u);

  const auto batches = SentBatches();
  ASSERT_EQ(batches.size(), 5u) << "four bulk batches and the fault's";
  EXPECT_EQ(batches[0].addresses.front(), run_starts_[0]);
  EXPECT_EQ(batches[1].addresses.front(), run_starts_[0] + 256 * kPage) << "the held one";
  EXPECT_EQ(batches[2].stream, 0);
  EXPECT_EQ(batches[2].addresses, std::vector<uint64_t>{wanted}) << "the want, before the rest of the bulk";
  EXPECT_EQ(batches[3].addresses.front(), run_starts_[0] + 512 * kPage);
  EXPECT_EQ(batches[4].addresses.size(), 255u) << "the fourth batch, without the page already sent";
  EXPECT_EQ(std::count(batches[4].addresses.begin(), batches[4].addresses.end(), wanted), 0);
  ExpectEveryPage();
}

// During the restore nothing is pushed: every fault is a want. A want for more pages than one
// push batch must be answered whole, or a later fault inside its tail (marked wanted, so not
// asked for again) waits until the read gives up: a 30 s stall seen in the demo's migrations.
TEST_F(Postcopy, AWantLargerThanAPushBatchIsAnsweredWhole) {
  Build({{0, 1024, [](size_t i) { return i; }}}, 4, 3s);
  if (HasFatalFailure()) return;
  auto serving = std::async(std::launch::async, [&] { return pusher_->AwaitControl(10s); });  // no push yet
  auto first = ReadAsync(run_starts_[0], 600).get();
  ASSERT_TRUE(first.ok()) << first.status().message();
  ExpectBytes(run_starts_[0], *first);
  const uint64_t tail = run_starts_[0] + 400 * kPage;  // past the first 256, within the first want
  auto second = ReadAsync(tail, 1).get();
  ASSERT_TRUE(second.ok()) << "a page of an earlier want never came: " << second.status().message();
  ExpectBytes(tail, *second);
  EXPECT_EQ(pages_->wants(), 1u) << "the second read found its page already there";
  ASSERT_TRUE(pair_.server->Send(peer::EncodeControl(peer::Committed{}), 0).ok());
  auto next = serving.get();
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Committed>(*next));
}

TEST_F(Postcopy, WantsForPagesAlreadySentAreNotSentAgain) {
  Build({{0, 8, [](size_t i) { return i; }}});
  if (HasFatalFailure()) return;
  auto destination = DestinationAwaitsPages();
  auto stats = pusher_->Push(5s, {});
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  ASSERT_TRUE(destination.get().ok());
  // A late want (the destination's read raced the push): answered with nothing new.
  ASSERT_TRUE(pair_.server->Send(peer::EncodeControl(peer::Want{0, run_starts_[0], 8}), 0).ok());
  ASSERT_TRUE(pair_.server->Send(peer::EncodeControl(peer::Committed{}), 0).ok());
  auto next = pusher_->AwaitControl(5s);
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_TRUE(std::holds_alternative<peer::Committed>(*next));
  EXPECT_EQ(SentBatches().size(), 1u);
  ExpectEveryPage();
}

TEST_F(Postcopy, AWantForAPageThatIsNotLazyFailsTheSource) {
  Build({{0, 8, [](size_t i) { return i; }}});
  if (HasFatalFailure()) return;
  ASSERT_TRUE(pair_.server->Send(peer::EncodeControl(peer::Want{0, run_starts_[0] + 8 * kPage, 1}), 0).ok());
  auto next = pusher_->AwaitControl(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(next.status().message().find("not lazy"), std::string::npos) << next.status().message();
}

TEST_F(Postcopy, AProcessOfTheDumpThatIsGoneFailsThePush) {
  Build({{0, 4, [](size_t i) { return i; }}, {1, 4, [](size_t i) { return 100 + i; }}});
  if (HasFatalFailure()) return;
  ::kill(tree_.child().pid, SIGKILL);
  // Gone once a zombie (the holder never reaps it): no memory left to read.
  auto zombie = [&] {
    auto stat = ReadFile("/proc/" + std::to_string(tree_.child().pid) + "/stat");
    return !stat.ok() || stat->find(") Z ") != std::string::npos;
  };
  for (int i = 0; i < 500 && !zombie(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(zombie());
  auto stats = pusher_->Push(2s, {});
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("of stopped pid"), std::string::npos) << stats.status().message();
}

TEST_F(Postcopy, TheDestinationsErrorEndsThePush) {
  Build({{0, 8, [](size_t i) { return i; }}});
  if (HasFatalFailure()) return;
  ASSERT_TRUE(pair_.server->Send(peer::EncodeControl(peer::Error{"the restored session died"}), 0).ok());
  auto stats = pusher_->Push(5s, {});
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(stats.status().message(), "the other agent: the restored session died");
}

TEST_F(Postcopy, ASilentDestinationIsATimeout) {
  Build({{0, 8, [](size_t i) { return i; }}}, 4, 300ms);
  if (HasFatalFailure()) return;
  const auto start = Clock::now();
  auto stats = pusher_->Push(300ms, {});  // the destination never says `delivered`
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kTimeout) << stats.status().ToString();
  EXPECT_LT(Clock::now() - start, 3s);
}

// ---- PostcopyPages alone ----

class PostcopyPagesTest : public PostcopyFixture {
 protected:
  void SetUp() override {
    Build({{0, 4, [](size_t i) { return i; }}, {0, 2, [](size_t i) { return 50 + i; }}}, 1, 400ms);
  }
  transport::PageBatch BatchOf(const std::vector<uint64_t>& addresses) const {
    transport::PageBatch b(addresses.size());
    for (uint64_t a : addresses) b.AddPage(a, Expected(a).data());
    return b;
  }
  uint64_t Page(size_t run, size_t i) const { return run_starts_[run] + i * kPage; }
};

TEST_F(PostcopyPagesTest, AReadWaitsForItsPageAndAsksForItOnce) {
  if (HasFatalFailure()) return;
  pusher_.reset();  // the test plays the source
  auto first = ReadAsync(Page(0, 1), 8);
  auto second = ReadAsync(Page(0, 1), 1);
  // Both wait; the stretch from the page on was asked for once.
  auto asked = [&] {
    std::lock_guard lock(wants_mu_);
    return wants_asked_.size();
  };
  for (int i = 0; i < 500 && (pages_->faults() < 2 || asked() < 1); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(pages_->faults(), 2u) << "both reads wait";
  {
    std::lock_guard lock(wants_mu_);
    ASSERT_EQ(wants_asked_.size(), 1u);
    EXPECT_EQ(wants_asked_[0].vaddr, Page(0, 1));
    EXPECT_LE(wants_asked_[0].pages, 3u) << "no further than the run's end";
  }
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 1), Page(0, 2)})).ok());
  auto a = first.get();
  auto b = second.get();
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(a->size(), 2 * kPage) << "up to the first page that has not arrived";
  ExpectBytes(Page(0, 1), *a);
  ExpectBytes(Page(0, 1), *b);
  EXPECT_EQ(pages_->faults(), 2u);
  EXPECT_EQ(pages_->wants(), 1u);
}

TEST_F(PostcopyPagesTest, ARefThatOvertakesItsBytesWaitsForThem) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  // Page (1, 0) has content 50: named by a ref before any page with that content arrived.
  const auto hash = page_server::HashPage(Expected(Page(1, 0)).data());
  const peer::PageRef ref{Page(1, 0), hash.low, hash.high};
  ASSERT_TRUE(pages_->TakeRefs({&ref, 1}).ok());
  auto read = ReadAsync(Page(1, 0), 1);
  EXPECT_EQ(read.wait_for(100ms), std::future_status::timeout) << "its bytes are not in the store yet";
  {
    std::lock_guard lock(wants_mu_);
    EXPECT_TRUE(wants_asked_.empty()) << "it has arrived (as a ref): nothing to ask for";
  }
  EXPECT_EQ(pages_->CheckComplete().code(), StatusCode::kCorruption);
  // The bytes come (they were on another stream).
  ASSERT_TRUE(store_->Put(Expected(Page(1, 0)).data(), 1).ok());
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 0)})).ok());  // any arrival wakes the readers
  auto got = read.get();
  ASSERT_TRUE(got.ok()) << got.status().message();
  ExpectBytes(Page(1, 0), *got);
}

TEST_F(PostcopyPagesTest, AReadOfAPageThatNeverComesTimesOutAndGivesUpOnce) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  const auto start = Clock::now();
  auto a = ReadAsync(Page(0, 0), 1).get();
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kTimeout);
  EXPECT_GE(Clock::now() - start, 400ms);
  auto b = ReadAsync(Page(0, 3), 1).get();
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(give_ups_.load(), 1) << "the session is stopped once";
}

TEST_F(PostcopyPagesTest, FailWakesEveryWaitingRead) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  auto a = ReadAsync(Page(0, 0), 1);
  auto b = ReadAsync(Page(1, 1), 1);
  std::this_thread::sleep_for(50ms);
  pages_->Fail(Status::PeerClosed("the source went away"));
  for (auto* f : {&a, &b}) {
    ASSERT_EQ(f->wait_for(200ms), std::future_status::ready) << "woken at once, not at the deadline";
    auto got = f->get();
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), StatusCode::kPeerClosed);
    EXPECT_EQ(got.status().message(), "the source went away");
  }
  EXPECT_EQ(give_ups_.load(), 1);
  // Pages that did arrive are still read after a failure.
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 2)})).ok());
  auto arrived = ReadAsync(Page(0, 2), 1).get();
  ASSERT_TRUE(arrived.ok()) << arrived.status().message();
  ExpectBytes(Page(0, 2), *arrived);
}

TEST_F(PostcopyPagesTest, AWantThatCannotBeSentFailsTheRead) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  destination_reader_.reset();
  (void)pair_.server->Close(100ms);
  auto got = ReadAsync(Page(0, 0), 1).get();
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("asking the source for a page"), std::string::npos) << got.status().message();
}

TEST_F(PostcopyPagesTest, WhatIsNotALazyPageIsAProtocolError) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  std::vector<uint8_t> out(kPage);
  // Reads: an unknown pid, an address outside every run, an unaligned one.
  for (auto [pid, vaddr] : std::vector<std::pair<uint64_t, uint64_t>>{
           {99, Page(0, 0)}, {1, 0x1000}, {1, Page(0, 0) + 8}, {2, Page(0, 0)}}) {
    auto read = pages_->Read(pid, vaddr, 1, out.data());
    ASSERT_FALSE(read.ok()) << pid << " " << std::hex << vaddr;
    EXPECT_EQ(read.status().code(), StatusCode::kProtocolError);
  }
  // Pages and refs: nothing of a batch is taken if one of its pages is not lazy.
  transport::PageBatch batch = BatchOf({Page(0, 0)});
  batch.AddPage(PostcopyAddress(1, Page(0, 0)), Expected(Page(0, 0)).data());  // task 1: none
  Status st = pages_->TakePages(batch);
  EXPECT_EQ(st.code(), StatusCode::kProtocolError) << st.ToString();
  const peer::PageRef outside{Page(0, 0) + 1, 1, 2};
  EXPECT_EQ(pages_->TakeRefs({&outside, 1}).code(), StatusCode::kProtocolError);
  EXPECT_NE(pages_->CheckComplete().message().find("pushed 0 of 6"), std::string::npos)
      << pages_->CheckComplete().message();
}

TEST_F(PostcopyPagesTest, CheckCompleteCountsEachPageOnce) {
  if (HasFatalFailure()) return;
  pusher_.reset();
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 0), Page(0, 1)})).ok());
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 1), Page(0, 0)})).ok());  // again
  EXPECT_NE(pages_->CheckComplete().message().find("pushed 2 of 6"), std::string::npos)
      << pages_->CheckComplete().message();
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(0, 2), Page(0, 3), Page(1, 0)})).ok());
  // The last one by ref, to content the store does not have.
  const peer::PageRef ref{Page(1, 1), 123, 456};
  ASSERT_TRUE(pages_->TakeRefs({&ref, 1}).ok());
  Status st = pages_->CheckComplete();
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("1 pages the source named by hash are not in the page store"), std::string::npos)
      << st.message();
  ASSERT_TRUE(pages_->TakePages(BatchOf({Page(1, 1)})).ok());  // its bytes after all
  EXPECT_TRUE(pages_->CheckComplete().ok()) << pages_->CheckComplete().message();
  ExpectEveryPage();
}

}  // namespace
}  // namespace elsa::testing
