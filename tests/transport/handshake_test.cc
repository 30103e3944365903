#include "handshake.h"

#include <gtest/gtest.h>

namespace elsa::transport {
namespace {

TEST(Hello, RoundTrips) {
  Hello h;
  h.stream_index = 2;
  h.stream_count = 4;
  h.channel_id.fill(7);
  h.nonce.fill(9);
  auto bytes = EncodeHello(h);
  auto back = DecodeHello(bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->stream_index, 2);
  EXPECT_EQ(back->stream_count, 4);
  EXPECT_EQ(back->channel_id, h.channel_id);
  EXPECT_EQ(back->nonce, h.nonce);
}

TEST(Hello, RejectsStrangers) {
  Hello h;
  auto bytes = EncodeHello(h);
  auto bad = bytes;
  bad[0] = 'X';
  EXPECT_EQ(DecodeHello(bad).status().code(), StatusCode::kProtocolError);
  bad = bytes;
  bad[8] = 2;  // version 2
  EXPECT_NE(DecodeHello(bad).status().message().find("version"), std::string::npos);
  Hello many;
  many.stream_count = kMaxStreams + 1;
  EXPECT_FALSE(DecodeHello(EncodeHello(many)).ok());
  Hello outside;
  outside.stream_count = 2;
  outside.stream_index = 2;
  EXPECT_FALSE(DecodeHello(EncodeHello(outside)).ok());
  EXPECT_FALSE(DecodeHello(std::span<const uint8_t>(bytes.data(), 10)).ok());
}

TEST(ProofMac, DependsOnSecretRoleHelloAndNonce) {
  Hello h;
  auto hello = EncodeHello(h);
  Nonce n{};
  n.fill(1);
  Mac base = ProofMac("secret", true, hello, n);
  EXPECT_EQ(base, ProofMac("secret", true, hello, n));
  EXPECT_NE(base, ProofMac("secreT", true, hello, n));
  EXPECT_NE(base, ProofMac("secret", false, hello, n));
  Nonce other = n;
  other[31] = 2;
  EXPECT_NE(base, ProofMac("secret", true, hello, other));
}

// Inside TLS the proof key is bound to the session: another session's export, or another
// secret, gives another key.
TEST(TlsBoundKey, DependsOnTheSessionAndTheSecret) {
  std::array<uint8_t, 32> exported{};
  exported.fill(7);
  const std::string base = TlsBoundKey(exported, "secret");
  EXPECT_EQ(base.size(), 32u);
  EXPECT_EQ(base, TlsBoundKey(exported, "secret"));
  EXPECT_NE(base, TlsBoundKey(exported, ""));
  std::array<uint8_t, 32> other_session = exported;
  other_session[0] = 8;
  EXPECT_NE(base, TlsBoundKey(other_session, "secret"));
  EXPECT_NE(TlsBoundKey(exported, ""), TlsBoundKey(other_session, ""));
}

}  // namespace
}  // namespace elsa::transport
