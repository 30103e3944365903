// Faults: every one surfaces a distinct error, nothing hangs, nothing corrupt is delivered.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "channel_test_util.h"
#include "connection.h"
#include "corrupting_relay.h"
#include "frame.h"
#include "handshake.h"

namespace elsa::transport {
namespace {

using namespace testing;

class Faults : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    auto t = MakeTransport(GetParam());
    ASSERT_TRUE(t.ok()) << t.status().message();
    transport_ = std::move(*t);
    options_ = TestOptions(1);
    options_.io_timeout = 500ms;
    auto l = transport_->Listen({"127.0.0.1", 0}, options_);
    ASSERT_TRUE(l.ok()) << l.status().message();
    listener_ = std::move(*l);
  }

  // A hand-driven client: authenticated as stream 0 of 1, then whatever bytes the test wants.
  std::unique_ptr<Connection> RawClient(const std::string& secret = "test-secret") {
    auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
    EXPECT_TRUE(fd.ok());
    auto conn = MakeTcpConnection(std::move(*fd));
    Hello hello;
    EXPECT_TRUE(FillRandom(hello.channel_id).ok());
    EXPECT_TRUE(FillRandom(hello.nonce).ok());
    handshake_ = std::async(std::launch::async, [this] { return listener_->Accept(5s); });
    Status s = ClientHandshake(*conn, secret, hello, Clock::now() + 5s);
    EXPECT_TRUE(s.ok()) << s.message();
    return conn;
  }
  std::unique_ptr<Channel> Accepted() {
    auto ch = handshake_.get();
    EXPECT_TRUE(ch.ok()) << ch.status().message();
    return ch.ok() ? std::move(*ch) : nullptr;
  }

  static void WriteBytes(Connection& c, const std::vector<uint8_t>& bytes) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    ASSERT_TRUE(c.WriteAll({&iov, 1}, Clock::now() + 5s, false).ok());
  }
  static std::vector<uint8_t> Frame(FrameHeader h, const std::vector<uint8_t>& payload) {
    h.wire_length = h.raw_length = static_cast<uint32_t>(payload.size());
    h.payload_xxh3 = PayloadChecksum(payload.data(), payload.size());
    std::vector<uint8_t> out(kFrameHeaderSize);
    EncodeFrameHeader(h, out.data());
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
  }
  static FrameHeader DataHeader(uint64_t seq) {
    FrameHeader h;
    h.type = FrameType::kData;
    h.sequence = seq;
    return h;
  }

  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Listener> listener_;
  ChannelOptions options_;
  std::future<Result<std::unique_ptr<Channel>>> handshake_;
};

TEST_P(Faults, AWrongSecretIsRefusedBeforeAnyPayload) {
  ChannelOptions wrong = options_;
  wrong.secret = "not-the-secret";
  auto accepting = std::async(std::launch::async, [&] { return listener_->Accept(1500ms); });
  auto client = transport_->Connect({"127.0.0.1", listener_->port()}, wrong);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(client.status().message().find("secret"), std::string::npos);
  EXPECT_EQ(accepting.get().status().code(), StatusCode::kTimeout) << "no channel for a stranger";
}

TEST_P(Faults, AMissingSecretIsAnError) {
  ChannelOptions none = options_;
  none.secret.clear();
  EXPECT_EQ(transport_->Connect({"127.0.0.1", listener_->port()}, none).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(transport_->Listen({"127.0.0.1", 0}, none).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(Faults, GarbageInsteadOfAHandshakeIsDroppedAndServingGoesOn) {
  auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
  ASSERT_TRUE(fd.ok());
  auto garbage = MakeTcpConnection(std::move(*fd));
  std::vector<uint8_t> noise(64);
  std::mt19937 rng(3);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  WriteBytes(*garbage, noise);
  EXPECT_EQ(listener_->Accept(800ms).status().code(), StatusCode::kTimeout);
  // A good client still gets through.
  auto client = std::async(std::launch::async, [&] { return transport_->Connect({"127.0.0.1", listener_->port()}, options_); });
  EXPECT_TRUE(listener_->Accept(5s).ok());
  EXPECT_TRUE(client.get().ok());
}

// A stranger may connect and say nothing until the handshake deadline (5 s here). That must
// cost only its own connection: a real peer connecting after it is accepted at once.
TEST_P(Faults, ASilentConnectionDoesNotHoldUpTheHandshakesOfOthers) {
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 3; ++i) {
    auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
    ASSERT_TRUE(fd.ok());
    silent.push_back(std::move(*fd));
  }
  ChannelOptions two = options_;
  two.streams = 2;
  const auto start = Clock::now();
  auto client = std::async(std::launch::async, [&] { return transport_->Connect({"127.0.0.1", listener_->port()}, two); });
  auto accepted = listener_->Accept(4s);
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  EXPECT_LT(waited, 1500ms) << "the silent connections held up a real peer for " << waited.count() << " ms";
  auto connected = client.get();
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  EXPECT_EQ((*accepted)->streams(), 2);
  // The channel works.
  ASSERT_TRUE((*connected)->Send(Bytes("after the silent ones")).ok());
  auto got = (*accepted)->Receive(5s);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(Text(got->data), "after the silent ones");
}

TEST_P(Faults, PeerGoneMidFrame) {
  auto raw = RawClient();
  auto server = Accepted();
  ASSERT_TRUE(server);
  std::vector<uint8_t> frame = Frame(DataHeader(1), std::vector<uint8_t>(1000, 'x'));
  frame.resize(kFrameHeaderSize + 10);  // the rest never comes
  WriteBytes(*raw, frame);
  raw.reset();  // closes the socket
  auto m = server->Receive(5s);
  EXPECT_EQ(m.status().code(), StatusCode::kPeerClosed);
  EXPECT_NE(m.status().message().find("middle of a frame"), std::string::npos) << m.status().message();
}

TEST_P(Faults, ATruncatedHeader) {
  auto raw = RawClient();
  auto server = Accepted();
  ASSERT_TRUE(server);
  WriteBytes(*raw, std::vector<uint8_t>(10, 0));
  raw.reset();
  EXPECT_EQ(server->Receive(5s).status().code(), StatusCode::kPeerClosed);
}

TEST_P(Faults, AnOversizedLengthField) {
  auto raw = RawClient();
  auto server = Accepted();
  ASSERT_TRUE(server);
  FrameHeader h = DataHeader(1);
  h.wire_length = h.raw_length = 1u << 30;
  std::vector<uint8_t> header(kFrameHeaderSize);
  EncodeFrameHeader(h, header.data());
  WriteBytes(*raw, header);
  auto m = server->Receive(5s);
  EXPECT_EQ(m.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(m.status().message().find("exceeds the limit"), std::string::npos);
}

TEST_P(Faults, RandomGarbageAfterTheHandshake) {
  auto raw = RawClient();
  auto server = Accepted();
  ASSERT_TRUE(server);
  std::vector<uint8_t> noise(4096);
  std::mt19937 rng(5);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  WriteBytes(*raw, noise);
  auto m = server->Receive(5s);
  EXPECT_EQ(m.status().code(), StatusCode::kCorruption);  // the header check fails
}

TEST_P(Faults, OutOfOrderOrMisroutedFrames) {
  {
    auto raw = RawClient();
    auto server = Accepted();
    ASSERT_TRUE(server);
    WriteBytes(*raw, Frame(DataHeader(2), {1, 2, 3}));  // 1 is due
    EXPECT_EQ(server->Receive(5s).status().code(), StatusCode::kProtocolError);
  }
  {
    auto raw = RawClient();
    auto server = Accepted();
    ASSERT_TRUE(server);
    FrameHeader h = DataHeader(1);
    h.stream = 5;
    WriteBytes(*raw, Frame(h, {1}));
    EXPECT_EQ(server->Receive(5s).status().code(), StatusCode::kProtocolError);
  }
}

TEST_P(Faults, AStalledPeerTimesOut) {
  auto raw = RawClient();
  auto server = Accepted();
  ASSERT_TRUE(server);
  std::vector<uint8_t> frame = Frame(DataHeader(1), std::vector<uint8_t>(1000, 'x'));
  frame.resize(kFrameHeaderSize + 100);
  WriteBytes(*raw, frame);  // and then silence, connection open
  auto start = Clock::now();
  auto m = server->Receive(10s);
  EXPECT_EQ(m.status().code(), StatusCode::kTimeout);
  EXPECT_LT(Clock::now() - start, 5s);
}

TEST_P(Faults, AByteFlippedOnTheWireIsCaughtAndNeverDelivered) {
  // Client-to-server handshake bytes: HELLO (64) + PROOF (40). Flip inside the third frame's payload.
  const size_t frame_bytes = kFrameHeaderSize + 1000;
  CorruptingRelay relay(listener_->port(), kHelloSize + kTaggedSize + 2 * frame_bytes + kFrameHeaderSize + 500);
  ChannelOptions o = options_;
  o.compression = Compression::kOff;
  // Once the receiver sees the damage the channel breaks, so later sends may already fail.
  const DamagedDelivery d = SendThroughDamage(*transport_, *listener_, relay.port(), o, 5, 'a');
  EXPECT_GE(d.sent, 3);
  EXPECT_EQ(d.delivered, 2);
  EXPECT_EQ(d.end.code(), StatusCode::kCorruption) << d.end.message();
  EXPECT_NE(d.end.message().find("checksum mismatch"), std::string::npos);
  EXPECT_TRUE(d.sender_learned) << "the sender learns the channel is broken instead of waiting forever";
}

TEST_P(Faults, APeerProcessKilledMidTransfer) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto t = MakeTransport(GetParam());
    if (!t.ok()) ::_exit(2);
    auto ch = (*t)->Connect({"127.0.0.1", listener_->port()}, options_);
    if (!ch.ok()) ::_exit(3);
    PageBatch proto(256);
    for (int i = 0; i < 256; ++i) std::memset(proto.AddPage(static_cast<uint64_t>(i) * kPageSize), i + 1, kPageSize);
    for (;;) {
      PageBatch b(256);
      for (size_t i = 0; i < 256; ++i) b.AddPage(proto.address(i), proto.page(i));
      if (!(*ch)->SendPages(std::move(b)).ok()) ::_exit(4);
    }
  }
  auto server = listener_->Accept(10s);
  ASSERT_TRUE(server.ok()) << server.status().message();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE((*server)->Receive(5s).ok());
  ::kill(child, SIGKILL);
  int status;
  ::waitpid(child, &status, 0);
  Status end;
  for (int i = 0; i < 100000 && end.ok(); ++i) {
    auto m = (*server)->Receive(5s);
    if (!m.ok()) end = m.status();
  }
  EXPECT_EQ(end.code(), StatusCode::kPeerClosed) << end.message();
}

TEST_P(Faults, SilentConnectionsFromOnePeerAreBounded) {
  // More silent connections from one address than it may have in their handshake: the rest
  // are closed at once, not kept.
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 12; ++i) {
    auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
    ASSERT_TRUE(fd.ok()) << fd.status().message();
    silent.push_back(std::move(*fd));
  }
  (void)listener_->Accept(500ms);  // takes them all in
  int closed = 0;
  for (const UniqueFd& fd : silent) {
    pollfd p{fd.get(), POLLIN, 0};
    char c;
    if (::poll(&p, 1, 100) == 1 && ::recv(fd.get(), &c, 1, MSG_DONTWAIT) == 0) closed++;
  }
  EXPECT_EQ(closed, 12 - 8) << "8 per peer wait for their handshake";
}

INSTANTIATE_TEST_SUITE_P(Backends, Faults, ::testing::ValuesIn(BackendsUnderTest()), BackendParamName);

}  // namespace
}  // namespace elsa::transport
