// Mutual authentication of one stream with a shared secret, before any payload.
//
//   client -> HELLO     "ELSAHELO" u16 version, u16 stream index, u16 stream count, u16 0,
//                       16-byte channel id, 32-byte client nonce            (64 bytes)
//   server -> CHALLENGE "ELSACHAL" 32-byte server nonce                      (40 bytes)
//   client -> PROOF     "ELSAPROF" HMAC-SHA256(secret, "elsa/1 client" | HELLO | server nonce)
//   server -> VERDICT   "ELSAOKAY" HMAC-SHA256(secret, "elsa/1 server" | HELLO | server nonce)
//                    or "ELSADENY" and 32 zero bytes, then it closes.
//
// Both nonces are fresh, so a recorded exchange cannot be replayed; the server answers with its
// own proof only after checking the client's, so it is no oracle for strangers; the secret
// never crosses the wire.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "connection.h"

namespace elsa::transport {

inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kHelloSize = 64;
inline constexpr size_t kTaggedSize = 40;
inline constexpr int kMaxStreams = 64;

using Nonce = std::array<uint8_t, 32>;
using Mac = std::array<uint8_t, 32>;
using ChannelId = std::array<uint8_t, 16>;

struct Hello {
  uint16_t version = kProtocolVersion;
  uint16_t stream_index = 0;
  uint16_t stream_count = 1;
  ChannelId channel_id{};
  Nonce nonce{};
};

std::array<uint8_t, kHelloSize> EncodeHello(const Hello& hello);
Result<Hello> DecodeHello(std::span<const uint8_t> bytes);  // untrusted bytes

Mac ProofMac(const std::string& secret, bool from_client, std::span<const uint8_t> hello,
             const Nonce& server_nonce);
Status FillRandom(std::span<uint8_t> out);

// Runs the client side on a connected stream; Unauthenticated if the server refuses us or
// cannot prove the secret itself.
Status ClientHandshake(Connection& conn, const std::string& secret, const Hello& hello, Deadline deadline);
// Runs the server side; returns the client's HELLO once it proved the secret.
Result<Hello> ServerHandshake(Connection& conn, const std::string& secret, Deadline deadline);

}  // namespace elsa::transport
