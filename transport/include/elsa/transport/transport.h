// The data channel between two Elsa agents: an authenticated channel of checksummed frames over
// N parallel TCP streams, with page batches (4 KiB pages + addresses) as the main payload.
//
//   auto t = MakeTransport(Backend::kUring);                  // or kTcp
//   auto listener = t->Listen({"10.0.0.2", 0}, options);      // on B
//   auto channel  = t->Connect({"10.0.0.2", port}, options);  // on A
//   channel->SendPages(std::move(batch));                     // striped over the streams
//   channel->Flush(timeout);                                   // everything received and acked
//
// Frames sent on one stream arrive in order; frames on different streams may interleave. Every
// frame carries an xxh3 checksum; a corrupted frame is never delivered and breaks the channel.
// With `ChannelOptions::tls` every stream is mutual TLS 1.3 (certificates from the fleet's CA,
// one per agent, naming it); inside it, or alone when no certificates are configured (deprecated:
// tests and old fleets), both ends prove a key (HMAC-SHA256 challenge/response) before any payload
// moves: with TLS the key is exported from the TLS session (mixed with the shared secret if one is
// set), so a stream cannot be spliced into another session. Errors are values: kPeerClosed,
// kTimeout, kCorruption (checksum, or a TLS record that fails authentication), kProtocolError,
// kUnauthenticated (no or a bad certificate, a wrong secret), kPermissionDenied (the peer is
// known, but `authorize` refuses it), kEndOfStream (the peer closed cleanly).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "elsa/log.h"
#include "elsa/status.h"
#include "elsa/uninitialized.h"

namespace elsa::transport {

inline constexpr size_t kPageSize = 4096;

using elsa::UninitializedAllocator;
using PageBytes = std::vector<uint8_t, UninitializedAllocator<uint8_t>>;

enum class Backend {
  kTcp,    // blocking sockets with poll(): the fallback and the baseline
  kUring,  // io_uring: batched submission, registered receive buffers, optional zero-copy send
  kRdma,   // RDMA verbs: RC queue pairs, SENDs between registered buffers (needs a device)
};
std::string_view BackendName(Backend backend);
Result<Backend> ParseBackend(std::string_view name);  // "tcp", "uring", "rdma"

enum class Compression {
  kOff,
  kAlways,    // lz4 every frame; sent raw only when it does not shrink
  kAdaptive,  // lz4 while it pays; backs off on incompressible content, probes again later
};
std::string_view CompressionName(Compression c);
Result<Compression> ParseCompression(std::string_view name);  // "off", "always", "adaptive"

// Mutual TLS 1.3 between agents. Each agent's certificate comes from the fleet's CA and names the
// agent in a URI SAN "elsa-agent:NAME" (tools/elsa-ca issue DIR NAME --peer --ip ADDR).
struct PeerTls {
  std::string cert_file;  // this agent's certificate (PEM)
  std::string key_file;   // its private key (PEM)
  std::string ca_file;    // the fleet's CA: a peer must present a certificate it signed
  // Who may open a channel to whom, by agent name: asked on both ends once the peer's certificate
  // verified, with the connecting agent's name and the accepting one's. An error refuses the
  // channel; the connecting end gets kPermissionDenied naming both. Empty: every verified peer.
  std::function<Status(std::string_view from, std::string_view to)> authorize;
};

struct ChannelOptions {
  int streams = 4;     // parallel TCP connections, 1..64
  std::string secret;  // shared secret: required without `tls`; with it, optional and mixed into each proof
  std::optional<PeerTls> tls;  // mutual TLS on every stream (the page traffic is users' memory)
  Compression compression = Compression::kAdaptive;
  bool zero_copy = false;                          // io_uring only: IORING_OP_SENDMSG_ZC for big frames
  std::chrono::milliseconds io_timeout{30000};     // a peer that stalls this long fails the channel
  std::chrono::milliseconds handshake_timeout{10000};
  size_t max_frame_bytes = 16u << 20;              // larger frames are a protocol error
  size_t send_queue_frames = 8;                    // per stream; Send blocks beyond it
  Logger log;                                      // connections a listener refused or dropped
};

struct Endpoint {
  std::string host;  // numeric IPv4/IPv6 address or a name
  uint16_t port = 0;
};

// Pages with their virtual addresses; owns the bytes, so it can be moved into a channel and
// written to the socket without a copy.
class PageBatch {
 public:
  PageBatch() = default;
  explicit PageBatch(size_t reserve_pages);
  // Copies are one memcpy (a vector with a custom allocator would copy byte by byte).
  PageBatch(const PageBatch& other);
  PageBatch& operator=(const PageBatch& other);
  PageBatch(PageBatch&&) noexcept = default;
  PageBatch& operator=(PageBatch&&) noexcept = default;

  // Appends a page and returns where its 4096 bytes go (e.g. for process_vm_readv).
  uint8_t* AddPage(uint64_t address);
  void AddPage(uint64_t address, const void* bytes);

  size_t size() const { return addresses_.size(); }
  bool empty() const { return addresses_.empty(); }
  uint64_t address(size_t i) const { return addresses_[i]; }
  const uint8_t* page(size_t i) const { return data_.data() + i * kPageSize; }
  uint8_t* page(size_t i) { return data_.data() + i * kPageSize; }
  size_t bytes() const { return size() * kPageSize; }

 private:
  std::vector<uint64_t> addresses_;
  PageBytes data_;
};

struct Message {
  enum class Kind { kData, kPages };
  Kind kind = Kind::kData;
  uint16_t stream = 0;
  std::vector<uint8_t> data;  // kData
  PageBatch pages;            // kPages
};

struct ChannelStats {
  uint64_t frames_sent = 0;
  uint64_t payload_bytes_sent = 0;  // before compression, zero pages counted as 4 KiB
  uint64_t wire_bytes_sent = 0;     // headers + payloads as sent
  uint64_t pages_sent = 0;
  uint64_t zero_pages_sent = 0;
  uint64_t frames_compressed = 0;
  uint64_t frames_raw = 0;
  uint64_t frames_received = 0;
  uint64_t payload_bytes_received = 0;
  uint64_t wire_bytes_received = 0;
};

class Channel {
 public:
  virtual ~Channel() = default;
  virtual int streams() const = 0;
  // The other agent's name from its TLS certificate (elsa-agent:NAME); empty without TLS.
  virtual std::string peer_agent() const { return {}; }

  // Queue a message on `stream` (-1: the next stream in turn). Blocks while that stream's queue
  // is full; fails once the channel is broken or closed.
  virtual Status Send(std::vector<uint8_t> data, int stream = -1) = 0;
  virtual Status SendPages(PageBatch pages, int stream = -1) = 0;

  // The next message from any stream. kEndOfStream once the peer closed cleanly and all its
  // messages were received; kTimeout if nothing arrives in time; the channel's error otherwise.
  virtual Result<Message> Receive(std::chrono::milliseconds timeout) = 0;

  // Waits until everything queued so far was received, verified and acknowledged by the peer.
  virtual Status Flush(std::chrono::milliseconds timeout) = 0;

  // Flushes, tells the peer we are done sending, and waits for the peer to do the same (its
  // remaining messages stay receivable). Idempotent.
  virtual Status Close(std::chrono::milliseconds timeout) = 0;

  virtual ChannelStats Stats() const = 0;
};

class Listener {
 public:
  virtual ~Listener() = default;
  virtual uint16_t port() const = 0;
  // The next fully authenticated channel (all its streams). Connections that fail the handshake
  // are dropped and reported to ChannelOptions::log; Accept keeps waiting for a good one until
  // `timeout`. Each connection's handshake runs on its own thread within handshake_timeout
  // (independent of `timeout`, and finishing after Accept returned if need be), so a silent one
  // never holds up the others.
  virtual Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout) = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual Backend backend() const = 0;
  virtual Result<std::unique_ptr<Listener>> Listen(const Endpoint& where, const ChannelOptions& options) = 0;
  virtual Result<std::unique_ptr<Channel>> Connect(const Endpoint& peer, const ChannelOptions& options) = 0;
};

// Loads `tls` as a listener and a connector would, and returns the agent's own name from its
// certificate: a program checks its configuration once, at start, rather than at the first channel.
Result<std::string> LoadPeerIdentity(const PeerTls& tls);

// FailedPrecondition, with the reason, when the backend cannot run here (e.g. io_uring disabled).
Result<std::unique_ptr<Transport>> MakeTransport(Backend backend);

}  // namespace elsa::transport
