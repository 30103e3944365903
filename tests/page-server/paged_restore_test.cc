// Checkpoints whose pages live in the page store, against the real CRIU: dumped through our
// receiver into the store, restored eagerly from materialized images and lazily through our lazy
// server with `criu lazy-pages`; and the lazy server facing a hostile client.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <filesystem>
#include <future>

#include "criu_holder.h"
#include "elsa/child_process.h"
#include "elsa/page_server/lazy_server.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/receiver.h"
#include "socket_io.h"

namespace elsa::page_server {
namespace {

constexpr uint64_t kHolderPages = 12 * 1024;

class PagedCheckpoint : public ReceiverWithCriu {
 protected:
  void SetUp() override {
    ReceiverWithCriu::SetUp();
    if (HasFatalFailure()) return;
    auto store = PageStore::Open(dir_ / "store");
    ASSERT_TRUE(store.ok()) << store.status().message();
    store_ = std::move(*store);
    ASSERT_TRUE(std::filesystem::create_directories(dir_ / "restore"));
  }

  // Dumps the holder through a receiver backed by the store into `images`.
  ReceiverStats DumpIntoStore(const std::string& images, bool leave_running) {
    auto receiver = PageReceiver::Listen("127.0.0.1", 0, images, store_.get());
    EXPECT_TRUE(receiver.ok()) << receiver.status().message();
    if (!receiver.ok()) return {};
    auto serving = std::async(std::launch::async, [&] { return (*receiver)->ServeOne(30s); });
    EXPECT_EQ(DumpTo((*receiver)->port(), images, leave_running), 0) << CriuLogSummary(images + "/dump.log");
    auto stats = serving.get();
    EXPECT_TRUE(stats.ok()) << stats.status().message();
    return stats.ok() ? *stats : ReceiverStats{};
  }

  std::unique_ptr<PageStore> store_;
};

TEST_F(PagedCheckpoint, PagesGoIntoTheStoreAndMaterializeForRestore) {
  const std::string images = dir_ / "images", restore = dir_ / "restore";
  const ReceiverStats stats = DumpIntoStore(images, false);
  HolderGone();
  EXPECT_GE(stats.pages_present, kHolderPages);
  // Two thirds of the holder's pages are one page repeated: the store keeps it once.
  EXPECT_LT(stats.pages_new, stats.pages_present - kHolderPages / 2);
  for (const auto& e : std::filesystem::directory_iterator(images)) {
    const std::string name = e.path().filename();
    EXPECT_FALSE(name.rfind("pages-", 0) == 0 && e.path().extension() == ".img") << name << ": pages belong in the store";
  }

  auto made = MaterializeImages(*store_, images, restore, RestoreImages::kEager);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_EQ(made->pages_written, stats.pages_present);
  EXPECT_EQ(made->pages_lazy, 0u);
  const pid_t restored = RestoreFrom(restore);
  ASSERT_GT(restored, 0) << CriuLogSummary(restore + "/restore.log");
  ExpectMemoryIntact(restored);
}

TEST_F(PagedCheckpoint, AnUnchangedSecondDumpAddsAlmostNothing) {
  const ReceiverStats first = DumpIntoStore(dir_ / "images", true);
  ASSERT_TRUE(std::filesystem::create_directories(dir_ / "second"));
  const ReceiverStats second = DumpIntoStore(dir_ / "second", false);
  HolderGone();
  EXPECT_GE(second.pages_present, kHolderPages);
  // The holder sleeps between dumps; what changes is interpreter and stack state.
  EXPECT_LT(second.pages_new, second.pages_present / 50) << "first dump added " << first.pages_new;
  auto made = MaterializeImages(*store_, dir_ / "second", dir_ / "restore", RestoreImages::kEager);
  ASSERT_TRUE(made.ok()) << made.status().message();
  const pid_t restored = RestoreFrom(dir_ / "restore");
  ASSERT_GT(restored, 0) << CriuLogSummary(dir_ / "restore/restore.log");
  ExpectMemoryIntact(restored);
}

TEST_F(PagedCheckpoint, LazyRestoreFaultsPagesInFromOurLazyServer) {
  const std::string images = dir_ / "images", restore = dir_ / "restore";
  const ReceiverStats stats = DumpIntoStore(images, false);
  HolderGone();
  auto made = MaterializeImages(*store_, images, restore, RestoreImages::kLazy);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_GE(made->pages_lazy, kHolderPages) << "the holder's heap is anonymous private memory";
  EXPECT_EQ(made->pages_lazy + made->pages_written, stats.pages_present);

  auto paged = LoadPagedImages(images);
  ASSERT_TRUE(paged.ok()) << paged.status().message();
  auto server = LazyPageServer::Listen("127.0.0.1", 0, PageLocator::FromImages(*paged), store_.get());
  ASSERT_TRUE(server.ok()) << server.status().message();
  auto serving = std::async(std::launch::async, [&] { return (*server)->ServeOne(60s); });
  auto daemon = ChildProcess::Spawn({criu_, "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port",
                                     std::to_string((*server)->port()), "-D", restore, "-W", restore, "-v4", "-o",
                                     "lazy-pages.log"});
  ASSERT_TRUE(daemon.ok()) << daemon.status().message();
  ASSERT_TRUE(WaitForFile(restore + "/lazy-pages.socket", 30s)) << Slurp(restore + "/lazy-pages.log");

  const pid_t restored = RestoreFrom(restore, {"--lazy-pages", "-W", restore});
  ASSERT_GT(restored, 0) << CriuLogSummary(restore + "/restore.log");
  ExpectMemoryIntact(restored);

  auto served = serving.get();
  ASSERT_TRUE(served.ok()) << served.status().message() << "\n" << CriuLogSummary(restore + "/lazy-pages.log");
  EXPECT_EQ(served->pages_served, made->pages_lazy) << "every lazy page, each once";
  EXPECT_GT(served->requests, 0u);
  auto exit = daemon->WaitFor(30s);
  ASSERT_TRUE(exit.ok()) << exit.status().message();
  EXPECT_EQ(*exit, 0) << DescribeWaitStatus(*exit) << "\n" << CriuLogSummary(restore + "/lazy-pages.log");
}

// A hand-driven client breaking the lazy protocol; the server ends that connection, then serves
// a well-behaved one.
TEST(LazyPageServer, EachViolationEndsOnlyThatConnection) {
  TempDir dir;
  auto store = PageStore::Open(dir / "store");
  ASSERT_TRUE(store.ok());
  std::vector<uint8_t> pages(2 * kPageSize);
  for (size_t i = 0; i < pages.size(); ++i) pages[i] = static_cast<uint8_t>(i * 7 + i / kPageSize);
  PagedImage image;
  image.target = {ImageKind::kProcess, 7};
  image.pagemap.entries = {{0x10000, 2, kPePresent}};
  image.refs.resize(2);
  ASSERT_TRUE((*store)->PutBatch(pages.data(), 2, image.refs.data()).ok());
  auto server = LazyPageServer::Listen("127.0.0.1", 0, PageLocator::FromImages({image}), store->get());
  ASSERT_TRUE(server.ok());

  auto exchange = [&](std::vector<uint8_t> bytes, size_t reply_bytes, std::vector<uint8_t>* reply = nullptr) {
    auto serving = std::async(std::launch::async, [&] { return (*server)->ServeOne(5s, 2s); });
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((*server)->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_TRUE(SendAll(fd.get(), bytes.data(), bytes.size(), Clock::now() + 5s).ok());
    std::vector<uint8_t> got(reply_bytes);
    if (reply_bytes) {
      EXPECT_TRUE(RecvAll(fd.get(), got.data(), got.size(), Clock::now() + 5s).ok());
    }
    if (reply) *reply = got;
    fd.Reset();
    return serving.get().status();
  };
  auto req = [](uint16_t cmd, uint64_t nr, uint64_t vaddr, uint64_t pid) {
    auto b = EncodeRequest({cmd, 0, nr, vaddr, pid});
    return std::vector<uint8_t>(b.begin(), b.end());
  };
  EXPECT_EQ(exchange({1, 2, 3}, 0).code(), StatusCode::kPeerClosed) << "truncated header";
  EXPECT_EQ(exchange(req(0x77, 1, 0x10000, 7), 0).code(), StatusCode::kProtocolError) << "unknown command";
  EXPECT_EQ(exchange(req(kAddF, 1, 0x10000, 7), 0).code(), StatusCode::kProtocolError) << "ADD on a lazy server";
  EXPECT_EQ(exchange(req(kGet, 0, 0x10000, 7), 0).code(), StatusCode::kProtocolError) << "zero pages";
  EXPECT_EQ(exchange(req(kGet, 1, 0x90000, 7), 0).code(), StatusCode::kProtocolError) << "unmapped address";
  EXPECT_EQ(exchange(req(kGet, 1, 0x10000, 8), 0).code(), StatusCode::kProtocolError) << "unknown pid";
  EXPECT_EQ(exchange(req(kGet, 1, 0x10001, 7), 0).code(), StatusCode::kProtocolError) << "unaligned";

  // A good client: asks for 5 pages from the second, gets the 1 there is, then closes.
  std::vector<uint8_t> good = req(kGet, 5, 0x11000, 7), close = req(kClose, 0, 0, 0), reply;
  good.insert(good.end(), close.begin(), close.end());
  Status st = exchange(good, kRequestSize + kPageSize + 4, &reply);
  EXPECT_TRUE(st.ok()) << st.ToString();
  const Request head = DecodeRequest(std::span<const uint8_t, kRequestSize>(reply.data(), kRequestSize));
  EXPECT_EQ(head.command, kAddF);
  EXPECT_EQ(head.flags, kPePresent);
  EXPECT_EQ(head.nr_pages, 1u);
  EXPECT_EQ(head.vaddr, 0x11000u);
  EXPECT_EQ(head.dst_id, 7u);
  EXPECT_TRUE(std::equal(pages.begin() + kPageSize, pages.end(), reply.begin() + kRequestSize));
}

TEST(PageRefs, RoundTripAndRejectDamage) {
  std::vector<PageHash> hashes = {{1, 2}, {3, 4}, {5, 6}};
  auto bytes = EncodeRefs(hashes);
  auto back = DecodeRefs(bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, hashes);
  bytes.pop_back();
  EXPECT_EQ(DecodeRefs(bytes).status().code(), StatusCode::kCorruption);
  bytes = EncodeRefs(hashes);
  bytes[0] = 'X';
  EXPECT_EQ(DecodeRefs(bytes).status().code(), StatusCode::kCorruption);
  bytes = EncodeRefs(hashes);
  bytes[8] = 0xff;  // count no longer matches the size
  EXPECT_EQ(DecodeRefs(bytes).status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace elsa::page_server
