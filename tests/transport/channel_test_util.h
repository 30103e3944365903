// Helpers for channel tests: a connected pair of channels on loopback.
#pragma once

#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <string>

#include "elsa/transport/transport.h"
#include "test_pki.h"

namespace elsa::transport::testing {

using namespace std::chrono_literals;

struct ChannelPair {
  std::unique_ptr<Transport> transport;
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Channel> client;  // connected side
  std::unique_ptr<Channel> server;  // accepted side
};

inline ChannelOptions TestOptions(int streams = 4) {
  ChannelOptions o;
  o.streams = streams;
  o.secret = "test-secret";
  o.io_timeout = 5s;
  o.handshake_timeout = 5s;
  return o;
}

// Connects two channels over 127.0.0.1 with `backend`; fails the test if it cannot.
inline void MakePair(Backend backend, const ChannelOptions& options, ChannelPair* pair,
                     const ChannelOptions* server_options = nullptr) {
  auto transport = MakeTransport(backend);
  ASSERT_TRUE(transport.ok()) << transport.status().message();
  pair->transport = std::move(*transport);
  auto listener = pair->transport->Listen({"127.0.0.1", 0}, server_options ? *server_options : options);
  ASSERT_TRUE(listener.ok()) << listener.status().message();
  pair->listener = std::move(*listener);
  auto connecting = std::async(std::launch::async, [&] {
    return pair->transport->Connect({"127.0.0.1", pair->listener->port()}, options);
  });
  auto accepted = pair->listener->Accept(10s);
  auto connected = connecting.get();
  ASSERT_TRUE(connected.ok()) << connected.status().message();
  ASSERT_TRUE(accepted.ok()) << accepted.status().message();
  pair->client = std::move(*connected);
  pair->server = std::move(*accepted);
}

inline std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }
inline std::string Text(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }

// TCP and io_uring must work on every machine we support (a failure there is a real failure);
// RDMA joins the suites where a device exists.
inline std::vector<Backend> BackendsUnderTest() {
  std::vector<Backend> backends = {Backend::kTcp, Backend::kUring};
  if (MakeTransport(Backend::kRdma).ok()) backends.push_back(Backend::kRdma);
  return backends;
}

inline std::string BackendParamName(const ::testing::TestParamInfo<Backend>& info) {
  return std::string(BackendName(info.param));
}

// The certificates every TLS test of this process shares (made once: key generation is slow).
inline const TestFleet& SharedFleet() {
  static const TestFleet fleet = TestFleet::Make();
  return fleet;
}

// A backend with or without TLS around it: the suites run over both.
struct ChannelVariant {
  Backend backend = Backend::kTcp;
  bool tls = false;
};

inline std::vector<ChannelVariant> VariantsUnderTest() {
  std::vector<ChannelVariant> variants;
  for (Backend b : BackendsUnderTest())
    for (bool tls : {false, true}) variants.push_back({b, tls});
  return variants;
}

inline std::string VariantParamName(const ::testing::TestParamInfo<ChannelVariant>& info) {
  return std::string(BackendName(info.param.backend)) + (info.param.tls ? "_tls" : "_plain");
}

// `options` for both ends, with TLS as alpha (connecting) and beta (accepting) if the variant has it.
inline void MakePair(const ChannelVariant& variant, const ChannelOptions& options, ChannelPair* pair) {
  if (!variant.tls) return MakePair(variant.backend, options, pair);
  ChannelOptions client = options, server = options;
  client.tls = SharedFleet().alpha;
  server.tls = SharedFleet().beta;
  MakePair(variant.backend, client, pair, &server);
}

// Frames of 1000 bytes (frame i all `first + i`) sent on stream 0 through a relay at
// `relay_port` that damages them on the way to `listener`: how many the receiver got, each
// checked intact, before the channel broke, and how it broke.
struct DamagedDelivery {
  int sent = 0;       // before the sender saw the channel break
  int delivered = 0;  // intact frames received
  Status end;         // the receiver's error
  bool sender_learned = false;  // the sender's Flush failed instead of waiting forever
};
inline DamagedDelivery SendThroughDamage(Transport& transport, Listener& listener, uint16_t relay_port,
                                         const ChannelOptions& options, int frames, uint8_t first) {
  DamagedDelivery out;
  auto accepting = std::async(std::launch::async, [&] { return listener.Accept(5s); });
  auto client = transport.Connect({"127.0.0.1", relay_port}, options);
  auto server = accepting.get();
  if (!client.ok() || !server.ok()) {
    ADD_FAILURE() << "connecting through the relay: " << (client.ok() ? server.status() : client.status()).message();
    return out;
  }
  while (out.sent < frames &&
         (*client)->Send(std::vector<uint8_t>(1000, static_cast<uint8_t>(first + out.sent)), 0).ok())
    ++out.sent;
  for (;;) {
    auto m = (*server)->Receive(5s);
    if (!m.ok()) {
      out.end = m.status();
      break;
    }
    EXPECT_EQ(m->data, std::vector<uint8_t>(1000, static_cast<uint8_t>(first + out.delivered))) << "only intact frames";
    ++out.delivered;
  }
  out.sender_learned = !(*client)->Flush(5s).ok();
  return out;
}

}  // namespace elsa::transport::testing
