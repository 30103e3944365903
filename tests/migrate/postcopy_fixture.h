// Both halves of post-copy over a real channel pair, as the two agents run them, minus CRIU: the
// source's PostcopyPusher reads a real (stopped) process tree whose memory the test wrote; the
// destination's PostcopyPages answers reads from a CheckpointPages store fed by a PeerReader,
// asking the source for what has not arrived. The source's end of the channel goes through a
// FaultInjectionChannel.
#pragma once

#include <gtest/gtest.h>

#include <future>
#include <map>
#include <memory>

#include "channel_test_util.h"
#include "elsa/page_server/page_store.h"
#include "fault_injection_channel.h"
#include "migrate/known_pages.h"
#include "migrate/lazy_plan.h"
#include "migrate/peer_reader.h"
#include "migrate/postcopy.h"
#include "migrate_test_util.h"
#include "store/checkpoint_pages.h"

namespace elsa::testing {

using namespace std::chrono_literals;
using transport::testing::Direction;
using transport::testing::FaultAction;
using transport::testing::FaultInjectionChannel;
using transport::testing::FaultRecord;
using transport::testing::FaultRule;
using transport::testing::MessageView;

inline constexpr uint64_t kContentSeed = 77;

class PostcopyFixture : public ::testing::Test {
 protected:
  // A lazy run of the test's tree: `pages` pages of the holder (task 0) or of its child (task 1),
  // each page's bytes PatternPage(kContentSeed, content(i)).
  struct RunSpec {
    int process = 0;  // 0: the holder, 1: its child
    size_t pages = 0;
    std::function<uint64_t(size_t)> content;
  };

  // Starts the tree, writes its memory, writes the images, and makes both halves.
  void Build(const std::vector<RunSpec>& runs, int streams = 4, std::chrono::milliseconds patience = 5s) {
    patience_ = patience;
    std::vector<size_t> holder_regions, child_regions;
    for (const RunSpec& r : runs) (r.process == 0 ? holder_regions : child_regions).push_back(r.pages);
    holder_regions.push_back(3);  // memory the images say is in them (present), not lazy
    MemoryHolder::Start(holder_regions, child_regions, &tree_);
    if (::testing::Test::HasFatalFailure()) return;
    size_t next[2] = {0, 0};
    std::map<int, std::vector<page_server::PagemapEntry>> entries;
    for (const RunSpec& r : runs) {
      const MemoryHolder::Process& p = r.process == 0 ? tree_.holder() : tree_.child();
      const uint64_t start = p.regions[next[r.process]++];
      std::vector<uint8_t> bytes;
      for (size_t i = 0; i < r.pages; ++i) {
        const uint64_t id = r.content(i);
        const auto page = PatternPage(kContentSeed, id);
        bytes.insert(bytes.end(), page.begin(), page.end());
        content_[PostcopyAddress(static_cast<uint32_t>(r.process), start + i * kPage)] = id;
      }
      MemoryHolder::Write(p.pid, start, bytes);
      if (::testing::Test::HasFatalFailure()) return;
      entries[r.process + 1].push_back(Lazy(start, r.pages));
      run_starts_.push_back(PostcopyAddress(static_cast<uint32_t>(r.process), start));
    }
    entries[1].push_back(Present(tree_.holder().regions.back(), 3));
    tree_.Stop();  // as CRIU leaves it
    for (const auto& [vpid, e] : entries) WritePagemap(dir_.path(), static_cast<uint64_t>(vpid), e);
    auto plan = LazyPlan::FromImages(dir_.path());
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    plan_ = std::move(*plan);
    ASSERT_EQ(plan_.pages(), content_.size());

    auto store = CheckpointPages::Open(dir_ / "store");
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(*store);
    transport::testing::MakePair(transport::Backend::kTcp, transport::testing::TestOptions(streams), &pair_);
    if (::testing::Test::HasFatalFailure()) return;
    source_channel_ = std::make_unique<FaultInjectionChannel>(*pair_.client);
    std::map<uint64_t, pid_t> host_pids = {{1, tree_.holder().pid}};
    if (!child_regions.empty()) host_pids[2] = tree_.child().pid;

    // The destination: what its lazy server reads from, and the reader that feeds it.
    auto want = [this](uint32_t task, uint64_t vaddr, uint64_t pages) {
      std::lock_guard lock(wants_mu_);
      wants_asked_.push_back({task, vaddr, pages});
      return pair_.server->Send(peer::EncodeControl(peer::Want{task, vaddr, pages}), 0);
    };
    pages_ = std::make_unique<PostcopyPages>(plan_, *store_, want, patience_);
    pages_->SetGiveUp([this] { give_ups_++; });
    PeerReader::Handlers feed;
    feed.pages = [p = pages_.get()](const transport::PageBatch& batch) { return p->TakePages(batch); };
    feed.refs = [p = pages_.get()](std::span<const peer::PageRef> refs) { return p->TakeRefs(refs); };
    destination_reader_ = std::make_unique<PeerReader>(*pair_.server, std::move(feed));
    // The source.
    pusher_ = std::make_unique<PostcopyPusher>(*source_channel_, plan_, std::move(host_pids), known_);
  }

  // What the destination already holds (pre-copy sent it): in its store, and known to the source.
  void DestinationHolds(uint64_t content_id) {
    const auto page = PatternPage(kContentSeed, content_id);
    ASSERT_TRUE(store_->Put(page.data(), 1).ok());
    known_.Claim(page_server::HashPage(page.data()));
  }

  // The destination's wait for the pages, as MigrationDestination::AwaitPages: `pushed`, every
  // page in the store, `delivered`; on failure `error`, and its waiting reads fail.
  std::future<Status> DestinationAwaitsPages() {
    return std::async(std::launch::async, [this] {
      Status st = [&]() -> Status {
        ELSA_RETURN_IF_ERROR(
            peer::Expect<peer::Pushed>(destination_reader_->NextControl(patience_), "during post-copy").status());
        ELSA_RETURN_IF_ERROR(pages_->CheckComplete());
        ELSA_RETURN_IF_ERROR(store_->Sync());
        return pair_.server->Send(peer::EncodeControl(peer::Delivered{}), 0);
      }();
      if (!st.ok()) {
        (void)pair_.server->Send(peer::EncodeControl(peer::Error{st.message()}), 0);
        pages_->Fail(st);
      }
      return st;
    });
  }

  // A read by the destination's lazy server, on a thread (it may wait for the source).
  std::future<Result<std::vector<uint8_t>>> ReadAsync(uint64_t address, size_t max_pages) {
    return std::async(std::launch::async, [this, address, max_pages]() -> Result<std::vector<uint8_t>> {
      const auto task = static_cast<uint32_t>(address >> kTaskShift);
      std::vector<uint8_t> out(max_pages * kPage);
      ELSA_ASSIGN_OR_RETURN(size_t n,
                            pages_->Read(plan_.pids().at(task), address & (kUserSpaceEnd - 1), max_pages, out.data()));
      out.resize(n * kPage);
      return out;
    });
  }

  // The bytes the page at `address` (a PostcopyAddress) must have.
  std::vector<uint8_t> Expected(uint64_t address) const { return PatternPage(kContentSeed, content_.at(address)); }

  // `bytes` (whole pages from `address` on) are what the tree holds there.
  void ExpectBytes(uint64_t address, const std::vector<uint8_t>& bytes) const {
    ASSERT_EQ(bytes.size() % kPage, 0u);
    for (size_t i = 0; i < bytes.size() / kPage; ++i)
      ASSERT_TRUE(std::equal(bytes.begin() + static_cast<ptrdiff_t>(i * kPage),
                             bytes.begin() + static_cast<ptrdiff_t>((i + 1) * kPage),
                             Expected(address + i * kPage).begin()))
          << "page " << i << " from 0x" << std::hex << address;
  }

  // Reads every lazy page back through the destination and checks its bytes.
  void ExpectEveryPage() {
    for (const LazyPlan::Run& run : plan_.runs()) {
      for (uint64_t at = 0; at < run.pages;) {
        const uint64_t address = PostcopyAddress(run.task, run.vaddr + at * kPage);
        auto read = ReadAsync(address, 64).get();
        ASSERT_TRUE(read.ok()) << read.status().message();
        ASSERT_FALSE(read->empty());
        ExpectBytes(address, *read);
        at += read->size() / kPage;
      }
    }
  }

  // Page batches the source sent (or tried to), in order.
  std::vector<FaultRecord> SentBatches() const {
    std::vector<FaultRecord> out;
    for (FaultRecord& r : source_channel_->Log())
      if (r.direction == Direction::kSend && r.kind == transport::Message::Kind::kPages) out.push_back(std::move(r));
    return out;
  }
  // Page refs the source sent, in order.
  std::vector<peer::PageRef> SentRefs() const {
    std::vector<peer::PageRef> out;
    for (const FaultRecord& r : source_channel_->Log()) {
      if (r.direction != Direction::kSend || r.data.empty() || r.data[0] != 'R') continue;
      auto decoded = peer::DecodeMessage(r.data);
      if (!decoded.ok()) continue;
      for (const peer::PageRef& ref : std::get<std::vector<peer::PageRef>>(*decoded)) out.push_back(ref);
    }
    return out;
  }

  TempDir dir_;
  MemoryHolder tree_;
  std::map<uint64_t, uint64_t> content_;  // PostcopyAddress -> content id
  std::vector<uint64_t> run_starts_;      // PostcopyAddress of each RunSpec's first page
  LazyPlan plan_;
  std::chrono::milliseconds patience_{5000};
  std::unique_ptr<CheckpointPages> store_;
  transport::testing::ChannelPair pair_;
  std::unique_ptr<FaultInjectionChannel> source_channel_;
  KnownPages known_;
  std::mutex wants_mu_;
  std::vector<peer::Want> wants_asked_;
  std::atomic<int> give_ups_{0};
  std::unique_ptr<PostcopyPages> pages_;
  std::unique_ptr<PeerReader> destination_reader_;
  std::unique_ptr<PostcopyPusher> pusher_;
};

inline bool IsBulk(const MessageView& m) { return m.kind == transport::Message::Kind::kPages && m.stream == 1; }

}  // namespace elsa::testing
