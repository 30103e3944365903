// Mutual authentication of one stream with a key both ends hold, before any payload: the shared
// secret alone (no certificates configured), or, inside TLS, a key exported from the TLS session
// and mixed with the secret if one is set (TlsBoundKey), so that the proof is valid in this TLS
// session only and a relay holding two sessions cannot splice streams between them.
//
//   client -> HELLO     "ELSAHELO" u16 version, u16 stream index, u16 stream count, u16 0,
//                       16-byte channel id, 32-byte client nonce            (64 bytes)
//   server -> CHALLENGE "ELSACHAL" 32-byte server nonce                      (40 bytes)
//   client -> PROOF     "ELSAPROF" HMAC-SHA256(secret, "elsa/1 client" | HELLO | server nonce)
//   server -> VERDICT   "ELSAOKAY" HMAC-SHA256(secret, "elsa/1 server" | HELLO | server nonce)
//                    or "ELSADENY" and 32 zero bytes, then it closes.
//   The server may answer HELLO with "ELSAVETO" and 32 zero bytes instead of a CHALLENGE: it
//   knows the client (its TLS certificate) but does not let it connect; then it closes.
//
// Both nonces are fresh, so a recorded exchange cannot be replayed; the server answers with its
// own proof only after checking the client's, so it is no oracle for strangers; the secret
// never crosses the wire.
#pragma once

#include <array>
#include <functional>
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

Mac ProofMac(const std::string& key, bool from_client, std::span<const uint8_t> hello,
             const Nonce& server_nonce);
Status FillRandom(std::span<uint8_t> out);

// The proof key of a stream inside TLS: HMAC-SHA256 keyed with the session's exported key, over
// a label and the shared secret (which may be empty).
std::string TlsBoundKey(std::span<const uint8_t> exported, const std::string& secret);

// Runs the client side on a connected stream; Unauthenticated if the server refuses us or
// cannot prove the key itself, PermissionDenied if it vetoes us.
Status ClientHandshake(Connection& conn, const std::string& key, const Hello& hello, Deadline deadline);
// Runs the server side; returns the client's HELLO once it proved the key. `admit`, if given,
// is asked once HELLO arrived; its error is sent as a veto and returned.
Result<Hello> ServerHandshake(Connection& conn, const std::string& key, Deadline deadline,
                              const std::function<Status()>& admit = {});

}  // namespace elsa::transport
