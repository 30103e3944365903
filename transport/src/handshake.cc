#include "handshake.h"

#include <nettle/hmac.h>
#include <nettle/memops.h>
#include <nettle/sha2.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>

namespace elsa::transport {
namespace {

constexpr char kHelloMagic[] = "ELSAHELO";
constexpr char kChallengeMagic[] = "ELSACHAL";
constexpr char kProofMagic[] = "ELSAPROF";
constexpr char kOkayMagic[] = "ELSAOKAY";
constexpr char kDenyMagic[] = "ELSADENY";
constexpr char kVetoMagic[] = "ELSAVETO";

uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

std::array<uint8_t, kTaggedSize> Tagged(const char* magic, std::span<const uint8_t, 32> body) {
  std::array<uint8_t, kTaggedSize> out{};
  std::memcpy(out.data(), magic, 8);
  std::memcpy(out.data() + 8, body.data(), 32);
  return out;
}

Status Write(Connection& conn, std::span<const uint8_t> bytes, Deadline deadline) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  return conn.WriteAll({&iov, 1}, deadline, false);
}

// Reads a 40-byte tagged message; returns its body if the magic is `magic`.
Result<std::array<uint8_t, 32>> ReadTagged(Connection& conn, const char* magic, Deadline deadline,
                                           const char* what) {
  std::array<uint8_t, kTaggedSize> msg{};
  Status s = conn.ReadExact(msg.data(), msg.size(), deadline);
  if (!s.ok()) return s.WithContext(std::string("handshake: reading the ") + what);
  if (std::memcmp(msg.data(), magic, 8) != 0)
    return Status::ProtocolError(std::string("handshake: expected the ") + what + ", got something else");
  std::array<uint8_t, 32> body{};
  std::memcpy(body.data(), msg.data() + 8, 32);
  return body;
}

}  // namespace

std::array<uint8_t, kHelloSize> EncodeHello(const Hello& h) {
  std::array<uint8_t, kHelloSize> out{};
  std::memcpy(out.data(), kHelloMagic, 8);
  PutU16(out.data() + 8, h.version);
  PutU16(out.data() + 10, h.stream_index);
  PutU16(out.data() + 12, h.stream_count);
  PutU16(out.data() + 14, 0);
  std::memcpy(out.data() + 16, h.channel_id.data(), h.channel_id.size());
  std::memcpy(out.data() + 32, h.nonce.data(), h.nonce.size());
  return out;
}

Result<Hello> DecodeHello(std::span<const uint8_t> b) {
  if (b.size() != kHelloSize) return Status::ProtocolError("handshake: HELLO has the wrong size");
  constexpr uint8_t kTlsHandshakeRecord = 0x16;
  if (b[0] == kTlsHandshakeRecord)
    return Status::ProtocolError("handshake: the client speaks TLS and this end does not: give both agents "
                                 "--peer-cert, --peer-key and --peer-ca");
  if (std::memcmp(b.data(), kHelloMagic, 8) != 0)
    return Status::ProtocolError("handshake: not an Elsa transport client (bad HELLO magic)");
  Hello h;
  h.version = GetU16(b.data() + 8);
  h.stream_index = GetU16(b.data() + 10);
  h.stream_count = GetU16(b.data() + 12);
  if (h.version != kProtocolVersion)
    return Status::ProtocolError("handshake: protocol version " + std::to_string(h.version) + ", we speak " +
                                 std::to_string(kProtocolVersion));
  if (GetU16(b.data() + 14) != 0) return Status::ProtocolError("handshake: reserved HELLO field is not zero");
  if (h.stream_count < 1 || h.stream_count > kMaxStreams || h.stream_index >= h.stream_count)
    return Status::ProtocolError("handshake: stream " + std::to_string(h.stream_index) + " of " +
                                 std::to_string(h.stream_count) + " is out of range");
  std::memcpy(h.channel_id.data(), b.data() + 16, h.channel_id.size());
  std::memcpy(h.nonce.data(), b.data() + 32, h.nonce.size());
  return h;
}

Mac ProofMac(const std::string& key, bool from_client, std::span<const uint8_t> hello, const Nonce& server_nonce) {
  hmac_sha256_ctx ctx;
  hmac_sha256_set_key(&ctx, key.size(), reinterpret_cast<const uint8_t*>(key.data()));
  const std::string label = from_client ? "elsa/1 client" : "elsa/1 server";
  hmac_sha256_update(&ctx, label.size(), reinterpret_cast<const uint8_t*>(label.data()));
  hmac_sha256_update(&ctx, hello.size(), hello.data());
  hmac_sha256_update(&ctx, server_nonce.size(), server_nonce.data());
  Mac mac{};
  hmac_sha256_digest(&ctx, mac.size(), mac.data());
  return mac;
}

std::string TlsBoundKey(std::span<const uint8_t> exported, const std::string& secret) {
  hmac_sha256_ctx ctx;
  hmac_sha256_set_key(&ctx, exported.size(), exported.data());
  const std::string label = "elsa/1 stream key";
  hmac_sha256_update(&ctx, label.size(), reinterpret_cast<const uint8_t*>(label.data()));
  hmac_sha256_update(&ctx, secret.size(), reinterpret_cast<const uint8_t*>(secret.data()));
  std::string key(SHA256_DIGEST_SIZE, '\0');
  hmac_sha256_digest(&ctx, key.size(), reinterpret_cast<uint8_t*>(key.data()));
  return key;
}

Status FillRandom(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("getrandom", errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status ClientHandshake(Connection& conn, const std::string& secret, const Hello& hello, Deadline deadline) {
  if (secret.empty()) return Status::Unauthenticated("no shared secret configured for the transport");
  const auto hello_bytes = EncodeHello(hello);
  ELSA_RETURN_IF_ERROR(Write(conn, hello_bytes, deadline));
  std::array<uint8_t, kTaggedSize> challenge{};
  Status read = conn.ReadExact(challenge.data(), challenge.size(), deadline);
  if (!read.ok()) return read.WithContext("handshake: reading the server's challenge");
  if (std::memcmp(challenge.data(), kVetoMagic, 8) == 0)
    return Status::PermissionDenied("the peer knows this agent but does not let it connect");
  if (std::memcmp(challenge.data(), kChallengeMagic, 8) != 0)
    return Status::ProtocolError("handshake: expected the server's challenge, got something else");
  Nonce server_nonce{};
  std::memcpy(server_nonce.data(), challenge.data() + 8, server_nonce.size());
  const Mac proof = ProofMac(secret, true, hello_bytes, server_nonce);
  ELSA_RETURN_IF_ERROR(Write(conn, Tagged(kProofMagic, proof), deadline));

  std::array<uint8_t, kTaggedSize> verdict{};
  Status s = conn.ReadExact(verdict.data(), verdict.size(), deadline);
  if (!s.ok()) return s.WithContext("handshake: reading the server's verdict");
  if (std::memcmp(verdict.data(), kDenyMagic, 8) == 0)
    return Status::Unauthenticated("the peer refused our proof: the shared secrets differ");
  if (std::memcmp(verdict.data(), kOkayMagic, 8) != 0)
    return Status::ProtocolError("handshake: the server's verdict is malformed");
  const Mac expected = ProofMac(secret, false, hello_bytes, server_nonce);
  if (!memeql_sec(expected.data(), verdict.data() + 8, expected.size()))
    return Status::Unauthenticated("the peer could not prove it holds the shared secret");
  return Status::Ok();
}

Result<Hello> ServerHandshake(Connection& conn, const std::string& secret, Deadline deadline,
                              const std::function<Status()>& admit) {
  if (secret.empty()) return Status::Unauthenticated("no shared secret configured for the transport");
  std::array<uint8_t, kHelloSize> hello_bytes{};
  Status s = conn.ReadExact(hello_bytes.data(), hello_bytes.size(), deadline);
  if (!s.ok()) return s.WithContext("handshake: reading HELLO");
  ELSA_ASSIGN_OR_RETURN(Hello hello, DecodeHello(hello_bytes));
  if (admit) {
    if (Status admitted = admit(); !admitted.ok()) {
      const std::array<uint8_t, 32> zeros{};
      (void)Write(conn, Tagged(kVetoMagic, zeros), deadline);
      return admitted;
    }
  }
  Nonce server_nonce{};
  ELSA_RETURN_IF_ERROR(FillRandom(server_nonce));
  ELSA_RETURN_IF_ERROR(Write(conn, Tagged(kChallengeMagic, server_nonce), deadline));
  ELSA_ASSIGN_OR_RETURN(Mac proof, ReadTagged(conn, kProofMagic, deadline, "client's proof"));
  const Mac expected = ProofMac(secret, true, hello_bytes, server_nonce);
  if (!memeql_sec(expected.data(), proof.data(), expected.size())) {
    const std::array<uint8_t, 32> zeros{};
    (void)Write(conn, Tagged(kDenyMagic, zeros), deadline);
    return Status::Unauthenticated("a client failed to prove the shared secret");
  }
  ELSA_RETURN_IF_ERROR(Write(conn, Tagged(kOkayMagic, ProofMac(secret, false, hello_bytes, server_nonce)), deadline));
  return hello;
}

}  // namespace elsa::transport
