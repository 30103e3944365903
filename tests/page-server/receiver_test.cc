// The receiver against the real CRIU: dumps go into it, restores come out of what it wrote, and
// what it writes matches `criu page-server` byte for byte.
#include "elsa/page_server/receiver.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include "elsa/engine/criu_driver.h"
#include "elsa/engine/session_process.h"
#include "elsa/page_server/protocol.h"
#include "socket_io.h"
#include "criu_holder.h"
#include "test_util.h"

namespace elsa::page_server {
namespace {

using namespace std::chrono_literals;
using elsa::testing::TempDir;

TEST_F(ReceiverWithCriu, ADumpIntoOurReceiverRestoresWithItsMemoryIntact) {
  const std::string images = dir_ / "images";
  auto receiver = PageReceiver::Listen("127.0.0.1", 0, images);
  ASSERT_TRUE(receiver.ok()) << receiver.status().message();
  auto serving = std::async(std::launch::async, [&] { return (*receiver)->ServeOne(30s); });
  ASSERT_EQ(DumpTo((*receiver)->port(), images, false), 0) << CriuLogSummary(images + "/dump.log");
  auto stats = serving.get();
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  EXPECT_GE(stats->pages_present, 12u * 1024) << "48 MiB of data at least";
  EXPECT_GE(stats->pagemaps, 1u);
  HolderGone();
  const pid_t restored = RestoreFrom(images);
  ASSERT_GT(restored, 0) << CriuLogSummary(images + "/restore.log");
  ExpectMemoryIntact(restored);
}

TEST_F(ReceiverWithCriu, WritesWhatCriuPageServerWrites) {
  ASSERT_EQ(::kill(holder_, SIGSTOP), 0);  // the same memory for both dumps
  const std::string theirs = dir_ / "theirs", ours = dir_ / "images";
  std::filesystem::create_directories(theirs);

  uint16_t their_port = 0;
  {  // find a free port for criu page-server
    auto probe = ListenOn("127.0.0.1", 0, &their_port);
    ASSERT_TRUE(probe.ok());
  }
  pid_t server = ::fork();
  if (server == 0) {
    ::execl(criu_.c_str(), criu_.c_str(), "page-server", "-D", theirs.c_str(), "--address", "127.0.0.1", "--port",
            std::to_string(their_port).c_str(), "-o", "ps.log", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(DumpTo(their_port, theirs, true), 0) << CriuLogSummary(theirs + "/dump.log");
  int status;
  ::waitpid(server, &status, 0);

  auto receiver = PageReceiver::Listen("127.0.0.1", 0, ours);
  ASSERT_TRUE(receiver.ok());
  auto serving = std::async(std::launch::async, [&] { return (*receiver)->ServeOne(30s); });
  ASSERT_EQ(DumpTo((*receiver)->port(), ours, true), 0);
  ASSERT_TRUE(serving.get().ok());

  // Pagemaps: the same entries (ours also fills the legacy u32 page count, which CRIU 4.2 leaves
  // 0). Pages: the same bytes, but for the odd page CRIU's parasite dirtied on the task's stack
  // between the two dumps.
  size_t pagemaps = 0;
  for (const auto& entry : std::filesystem::directory_iterator(theirs)) {
    const std::string name = entry.path().filename();
    if (name.rfind("pagemap-", 0) != 0) continue;
    ++pagemaps;
    ASSERT_TRUE(std::filesystem::exists(ours + "/" + name)) << name << " missing from ours";
    const std::string a = Slurp(theirs + "/" + name), b = Slurp(ours + "/" + name);
    auto their_map = DecodePagemapImage(std::vector<uint8_t>(a.begin(), a.end()));
    auto our_map = DecodePagemapImage(std::vector<uint8_t>(b.begin(), b.end()));
    ASSERT_TRUE(their_map.ok() && our_map.ok()) << name;
    EXPECT_EQ(their_map->entries, our_map->entries) << name;
    EXPECT_EQ(their_map->pages_id, our_map->pages_id) << name;
    const std::string pages = PagesFileName(our_map->pages_id);
    const std::string pa = Slurp(theirs + "/" + pages), pb = Slurp(ours + "/" + pages);
    ASSERT_EQ(pa.size(), pb.size()) << pages;
    size_t differing = 0;
    for (size_t off = 0; off < pa.size(); off += kPageSize)
      differing += pa.compare(off, kPageSize, pb, off, kPageSize) != 0;
    EXPECT_LE(differing, 4u) << pages << ": " << differing << " of " << pa.size() / kPageSize << " pages differ";
  }
  EXPECT_GE(pagemaps, 1u);
  ::kill(holder_, SIGCONT);
}

// A hand-driven client that breaks the protocol in each way the issue lists.
class HostileClient : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = PageReceiver::Listen("127.0.0.1", 0, dir_.path());
    ASSERT_TRUE(r.ok()) << r.status().message();
    receiver_ = std::move(*r);
  }
  // Connects, sends `bytes`, reads `reply_bytes` of answers (as CRIU would), closes; returns
  // what the receiver made of it.
  Status Send(const std::vector<uint8_t>& bytes, size_t reply_bytes = 0) {
    auto serving = std::async(std::launch::async, [&] { return receiver_->ServeOne(5s, 2s); });
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(receiver_->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    if (!bytes.empty()) {
      EXPECT_TRUE(SendAll(fd.get(), bytes.data(), bytes.size(), Clock::now() + 5s).ok());
    }
    std::vector<uint8_t> reply(reply_bytes);
    if (reply_bytes) {
      EXPECT_TRUE(RecvAll(fd.get(), reply.data(), reply.size(), Clock::now() + 5s).ok());
    }
    fd.Reset();
    return serving.get().status();
  }
  static std::vector<uint8_t> Req(uint16_t cmd, uint16_t flags, uint64_t nr, uint64_t vaddr, uint64_t dst) {
    auto b = EncodeRequest({cmd, flags, nr, vaddr, dst});
    return {b.begin(), b.end()};
  }
  TempDir dir_;
  std::unique_ptr<PageReceiver> receiver_;
};

TEST_F(HostileClient, EachViolationEndsOnlyThatConnection) {
  const uint64_t pid7 = EncodeDstId({ImageKind::kProcess, 7});
  EXPECT_EQ(Send({1, 2, 3}).code(), StatusCode::kPeerClosed) << "truncated header";
  EXPECT_EQ(Send(Req(0x99, 0, 1, 0, pid7)).code(), StatusCode::kProtocolError) << "unknown command";
  EXPECT_EQ(Send(Req(kAddF, kPePresent, 1ull << 40, 0x1000, pid7)).code(), StatusCode::kProtocolError) << "absurd nr_pages";
  EXPECT_EQ(Send(Req(kAddF, kPePresent, 0, 0x1000, pid7)).code(), StatusCode::kProtocolError) << "zero pages";
  EXPECT_EQ(Send(Req(kAddF, kPePresent, 1, 0x1001, pid7)).code(), StatusCode::kProtocolError) << "unaligned";
  EXPECT_EQ(Send(Req(kAddF, 0x80, 1, 0x1000, pid7)).code(), StatusCode::kProtocolError) << "unknown flags";
  EXPECT_EQ(Send(Req(kOpen2, 0, 0, 0, (7 << 8) | 9)).code(), StatusCode::kProtocolError) << "unknown image type";
  EXPECT_EQ(Send(Req(kGet, 0, 1, 0x1000, 7)).code(), StatusCode::kProtocolError) << "GET on a receiver";
  auto partial = Req(kAddF, kPePresent, 4, 0x1000, pid7);
  partial.resize(partial.size() + 100);  // promised 16 KiB, sent 100 bytes
  EXPECT_EQ(Send(partial).code(), StatusCode::kPeerClosed) << "data cut short";
  EXPECT_EQ(Send(Req(kOpen2, 0, 0, 0, pid7)).code(), StatusCode::kPeerClosed) << "no CLOSE";
  // ... and the receiver still serves a well-behaved client.
  auto good = Req(kOpen2, 0, 0, 0, pid7);
  auto add = Req(kAddF, kPePresent, 1, 0x1000, pid7);
  good.insert(good.end(), add.begin(), add.end());
  good.resize(good.size() + kPageSize, 0xab);
  auto close = Req(kClose, 0, 0, 0, 0);
  good.insert(good.end(), close.begin(), close.end());
  Status good_status = Send(good, 1 + 4);  // OPEN2's has_parent, CLOSE's status
  EXPECT_TRUE(good_status.ok()) << good_status.ToString();
  auto image = DecodePagemapImage(std::vector<uint8_t>(
      std::istreambuf_iterator<char>(*std::make_unique<std::ifstream>(dir_ / "pagemap-7.img", std::ios::binary)), {}));
  ASSERT_TRUE(image.ok()) << image.status().message();
  ASSERT_EQ(image->entries.size(), 1u);
  EXPECT_EQ(std::filesystem::file_size(dir_ / PagesFileName(image->pages_id)), kPageSize);
}

}  // namespace
}  // namespace elsa::page_server
