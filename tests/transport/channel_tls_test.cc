// TLS between agents: who is refused, with which error, and what a meddling relay achieves
// (nothing but a broken channel). Runs over every backend.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <cstring>
#include <future>
#include <mutex>

#include "channel_test_util.h"
#include "connection.h"
#include "corrupting_relay.h"
#include "handshake.h"

namespace elsa::transport {
namespace {

using namespace testing;

// What a listener logs about the connections it refuses.
class LogLines {
 public:
  Logger logger() {
    return Logger([this](const LogLine& line) {
      std::lock_guard lock(mu_);
      text_ += line.message + "\n";
    });
  }
  std::string text() const {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  mutable std::mutex mu_;
  std::string text_;
};

class PeerTlsTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    auto t = MakeTransport(GetParam());
    ASSERT_TRUE(t.ok()) << t.status().message();
    transport_ = std::move(*t);
  }

  // A listener as agent "beta" (no shared secret: certificates alone).
  void ListenAsBeta(std::function<Status(std::string_view, std::string_view)> authorize = {}) {
    ChannelOptions o = Options(SharedFleet().beta);
    o.tls->authorize = std::move(authorize);
    o.log = log_.logger();
    auto l = transport_->Listen({"127.0.0.1", 0}, o);
    ASSERT_TRUE(l.ok()) << l.status().message();
    listener_ = std::move(*l);
  }

  static ChannelOptions Options(const PeerTls& tls) {
    ChannelOptions o = TestOptions(2);
    o.secret.clear();
    o.tls = tls;
    o.handshake_timeout = 3s;
    return o;
  }

  // Connects with `client`; the listener must not hand out any channel for it.
  Status ConnectRefused(const ChannelOptions& client, uint16_t port = 0) {
    auto accepting = std::async(std::launch::async, [&] { return listener_->Accept(1500ms); });
    auto channel = transport_->Connect({"127.0.0.1", port ? port : listener_->port()}, client);
    EXPECT_FALSE(channel.ok()) << "connected although it should have been refused";
    EXPECT_EQ(accepting.get().status().code(), StatusCode::kTimeout) << "no channel for a refused peer";
    return channel.ok() ? Status::Ok() : channel.status();
  }

  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Listener> listener_;
  LogLines log_;
};

TEST_P(PeerTlsTest, FleetCertificatesAloneMakeAChannel) {
  ListenAsBeta([](std::string_view from, std::string_view to) {
    return from == "alpha" && to == "beta" ? Status::Ok() : Status::PermissionDenied("not alpha -> beta");
  });
  auto accepting = std::async(std::launch::async, [&] { return listener_->Accept(5s); });
  auto client = transport_->Connect({"127.0.0.1", listener_->port()}, Options(SharedFleet().alpha));
  ASSERT_TRUE(client.ok()) << client.status().message();
  auto server = accepting.get();
  ASSERT_TRUE(server.ok()) << server.status().message();
  EXPECT_EQ((*server)->peer_agent(), "alpha") << "who connected, from its certificate";
  EXPECT_EQ((*client)->peer_agent(), "beta");
  ASSERT_TRUE((*client)->Send(Bytes("over tls")).ok());
  ASSERT_TRUE((*server)->Send(Bytes("and back")).ok());
  EXPECT_EQ(Text((*server)->Receive(5s)->data), "over tls");
  EXPECT_EQ(Text((*client)->Receive(5s)->data), "and back");
}

TEST_P(PeerTlsTest, ACertificateFromAnotherCaIsRefused) {
  ListenAsBeta();
  TestCa other(SharedFleet().dir.path(), "other");
  PeerTls stranger = other.Issue("stranger-from-other-ca", {.agent = "alpha"});
  stranger.ca_file = SharedFleet().ca->ca_file();  // it trusts our CA, but we do not trust its
  Status refused = ConnectRefused(Options(stranger));
  EXPECT_EQ(refused.code(), StatusCode::kUnauthenticated) << refused.message();
  EXPECT_NE(refused.message().find("refused our certificate"), std::string::npos) << refused.message();
  EXPECT_NE(log_.text().find("unable to get local issuer certificate"), std::string::npos) << log_.text();

  // And the other way: a listener whose certificate our CA did not sign.
  ChannelOptions imposter = Options(other.Issue("imposter", {.agent = "beta"}));
  auto l = transport_->Listen({"127.0.0.1", 0}, imposter);
  ASSERT_TRUE(l.ok());
  auto serving = std::async(std::launch::async, [&] { return (*l)->Accept(1500ms); });
  auto channel = transport_->Connect({"127.0.0.1", (*l)->port()}, Options(SharedFleet().alpha));
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(channel.status().message().find("failed verification"), std::string::npos) << channel.status().message();
}

TEST_P(PeerTlsTest, AnExpiredCertificateIsRefused) {
  ListenAsBeta();
  PeerTls expired = SharedFleet().ca->Issue("alpha-expired", {.agent = "alpha", .not_before_s = -10L * 86400,
                                                              .not_after_s = -86400});
  Status refused = ConnectRefused(Options(expired));
  EXPECT_EQ(refused.code(), StatusCode::kUnauthenticated) << refused.message();
  EXPECT_NE(refused.message().find("expired"), std::string::npos) << refused.message();
  EXPECT_NE(log_.text().find("certificate has expired"), std::string::npos) << log_.text();
}

TEST_P(PeerTlsTest, TheServerMustBeTheHostDialled) {
  ChannelOptions elsewhere = Options(SharedFleet().ca->Issue("beta-elsewhere", {.agent = "beta", .ip = "10.9.9.9"}));
  auto l = transport_->Listen({"127.0.0.1", 0}, elsewhere);
  ASSERT_TRUE(l.ok());
  auto serving = std::async(std::launch::async, [&] { return (*l)->Accept(1500ms); });
  auto channel = transport_->Connect({"127.0.0.1", (*l)->port()}, Options(SharedFleet().alpha));
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().code(), StatusCode::kUnauthenticated);
  EXPECT_NE(channel.status().message().find("IP address mismatch"), std::string::npos) << channel.status().message();
}

TEST_P(PeerTlsTest, ACertificateNamingNoAgentIsRefused) {
  ListenAsBeta();
  PeerTls nameless = SharedFleet().ca->Issue("nameless", {.agent = ""});
  EXPECT_EQ(transport_->Connect({"127.0.0.1", listener_->port()}, Options(nameless)).status().code(),
            StatusCode::kUnauthenticated)
      << "our own certificate must name us";
}

TEST_P(PeerTlsTest, NoCertificateIsRefused) {
  ListenAsBeta();
  // A TLS client with the fleet's CA but no certificate of its own, driven by hand.
  auto ctx = NewTls13Context(false);
  ASSERT_TRUE(ctx.ok());
  ASSERT_EQ(SSL_CTX_load_verify_locations(ctx->get(), SharedFleet().ca->ca_file().c_str(), nullptr), 1);
  auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
  ASSERT_TRUE(fd.ok());
  SslPtr ssl(SSL_new(ctx->get()));
  SSL_set_fd(ssl.get(), fd->get());
  auto accepting = std::async(std::launch::async, [&] { return listener_->Accept(1500ms); });
  // TLS 1.3: the client's handshake completes before the server judges its (missing) certificate.
  ASSERT_EQ(SSL_connect(ssl.get()), 1) << TakeOpenSslErrors();
  Hello hello;
  const auto bytes = EncodeHello(hello);
  (void)SSL_write(ssl.get(), bytes.data(), static_cast<int>(bytes.size()));
  char reply[40];
  EXPECT_LE(SSL_read(ssl.get(), reply, sizeof reply), 0) << "no challenge for a client without a certificate";
  EXPECT_NE(TakeOpenSslErrors().find("certificate required"), std::string::npos);
  EXPECT_EQ(accepting.get().status().code(), StatusCode::kTimeout);
  EXPECT_NE(log_.text().find("presented no certificate"), std::string::npos) << log_.text();
}

TEST_P(PeerTlsTest, APlaintextHelloToATlsListenerIsRefused) {
  ListenAsBeta();
  auto fd = ConnectTcp({"127.0.0.1", listener_->port()}, Clock::now() + 5s);
  ASSERT_TRUE(fd.ok());
  auto plain = MakeTcpConnection(std::move(*fd));
  Hello hello;
  ASSERT_TRUE(FillRandom(hello.channel_id).ok());
  auto accepting = std::async(std::launch::async, [&] { return listener_->Accept(1500ms); });
  Status s = ClientHandshake(*plain, "test-secret", hello, Clock::now() + 5s);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(accepting.get().status().code(), StatusCode::kTimeout);
  EXPECT_NE(log_.text().find("TLS (handshake)"), std::string::npos) << log_.text();
}

TEST_P(PeerTlsTest, ATlsClientToAPlaintextListenerSaysWhy) {
  ChannelOptions plain = TestOptions(1);
  plain.log = log_.logger();
  auto l = transport_->Listen({"127.0.0.1", 0}, plain);
  ASSERT_TRUE(l.ok());
  auto serving = std::async(std::launch::async, [&] { return (*l)->Accept(1500ms); });
  auto channel = transport_->Connect({"127.0.0.1", (*l)->port()}, Options(SharedFleet().alpha));
  ASSERT_FALSE(channel.ok());
  EXPECT_NE(channel.status().message().find("--peer-cert on both ends"), std::string::npos)
      << channel.status().message();
  serving.wait();
  EXPECT_NE(log_.text().find("the client speaks TLS and this end does not"), std::string::npos) << log_.text();
}

TEST_P(PeerTlsTest, TheListenersAllowlistVetoesAKnownPeer) {
  ListenAsBeta([](std::string_view from, std::string_view to) {
    return from == "alpha" && to == "beta" ? Status::PermissionDenied("no rule lets it") : Status::Ok();
  });
  Status refused = ConnectRefused(Options(SharedFleet().alpha));
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied) << refused.message();
  EXPECT_NE(refused.message().find("agent 'beta' refuses channels from agent 'alpha'"), std::string::npos)
      << refused.message();
  EXPECT_NE(log_.text().find("agent 'alpha' may not connect to 'beta': no rule lets it"), std::string::npos)
      << log_.text();
}

TEST_P(PeerTlsTest, TheConnectorsAllowlistVetoesThePeerItReached) {
  ListenAsBeta();
  ChannelOptions o = Options(SharedFleet().alpha);
  o.tls->authorize = [](std::string_view, std::string_view to) {
    return to == "beta" ? Status::PermissionDenied("beta is not a destination") : Status::Ok();
  };
  Status refused = ConnectRefused(o);
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.message().find("beta is not a destination"), std::string::npos) << refused.message();
}

TEST_P(PeerTlsTest, TheSharedSecretStillCountsInsideTls) {
  ChannelOptions server = Options(SharedFleet().beta);
  server.secret = "the-fleet-secret";
  auto l = transport_->Listen({"127.0.0.1", 0}, server);
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  ChannelOptions client = Options(SharedFleet().alpha);
  client.secret = "another-secret!!";
  Status refused = ConnectRefused(client);
  EXPECT_EQ(refused.code(), StatusCode::kUnauthenticated) << refused.message();
}

TEST_P(PeerTlsTest, AFlippedCiphertextByteBreaksTheChannelAndNothingDamagedIsDelivered) {
  ListenAsBeta();
  // Far past the TLS handshake (about 1.5 KB from the client), inside the frames' records.
  CorruptingRelay relay(listener_->port(), 40000);
  ChannelOptions o = Options(SharedFleet().alpha);
  o.streams = 1;
  o.compression = Compression::kOff;
  const DamagedDelivery d = SendThroughDamage(*transport_, *listener_, relay.port(), o, 100, 0);
  EXPECT_LT(d.delivered, 40) << "the frames behind the damaged record never arrive";
  EXPECT_TRUE(d.end.code() == StatusCode::kCorruption || d.end.code() == StatusCode::kProtocolError) << d.end.ToString();
  EXPECT_NE(d.end.message().find("TLS"), std::string::npos) << d.end.message();
  EXPECT_TRUE(d.sender_learned) << "the sender learns the channel is broken";
}

// What a machine in the middle sees: with TLS, neither the pages nor the frame headers; without
// it (the deprecated secret-only channel), the pages as they are.
TEST_P(PeerTlsTest, PagesCrossTheWireEncrypted) {
  const std::string marker = "a user's notebook state, not for the wire";
  PageBatch batch(4);
  for (uint64_t i = 0; i < 4; ++i) {
    uint8_t* page = batch.AddPage(i * kPageSize);
    std::memset(page, 0, kPageSize);
    std::memcpy(page + 100, marker.data(), marker.size());
  }
  for (bool tls : {false, true}) {
    ChannelOptions server = tls ? Options(SharedFleet().beta) : TestOptions(1);
    ChannelOptions client = tls ? Options(SharedFleet().alpha) : TestOptions(1);
    server.compression = client.compression = Compression::kOff;
    server.streams = client.streams = 1;  // the relay carries one connection
    auto l = transport_->Listen({"127.0.0.1", 0}, server);
    ASSERT_TRUE(l.ok());
    CorruptingRelay relay((*l)->port(), CorruptingRelay::kNoFlip);
    auto accepting = std::async(std::launch::async, [&] { return (*l)->Accept(5s); });
    auto sender = transport_->Connect({"127.0.0.1", relay.port()}, client);
    ASSERT_TRUE(sender.ok()) << sender.status().message();
    auto receiver = accepting.get();
    ASSERT_TRUE(receiver.ok()) << receiver.status().message();
    ASSERT_TRUE((*sender)->SendPages(batch).ok());
    auto got = (*receiver)->Receive(5s);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(std::memcmp(got->pages.page(3) + 100, marker.data(), marker.size()), 0);
    const std::string wire = relay.seen();
    EXPECT_EQ(wire.find(marker) != std::string::npos, !tls) << (tls ? "TLS" : "plain");
    EXPECT_EQ(wire.find("ELSAHELO") != std::string::npos, !tls) << "the handshake too";
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, PeerTlsTest, ::testing::ValuesIn(BackendsUnderTest()), BackendParamName);

}  // namespace
}  // namespace elsa::transport
