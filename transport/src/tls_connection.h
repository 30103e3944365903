// TLS 1.3 around any backend's Connection (tcp, uring, rdma), in user space.
//
// OpenSSL never touches the socket: it reads ciphertext from one memory BIO and writes it to
// another, and the inner Connection moves those bytes. So the backend stays the byte mover
// (io_uring's batched submission, registered read buffer and zero-copy send keep working on the
// ciphertext), and one TLS layer serves every backend. Kernel TLS (setsockopt TCP_ULP "tls")
// would spare the copies through user space, but these hosts' kernels offer no "tls" ULP
// (/proc/sys/net/ipv4/tcp_available_ulp lists only mptcp), and it would not cover RDMA anyway.
//
// Concurrency: the Connection contract allows one reader and one writer thread at once, and an
// SSL object is not safe for concurrent SSL_read/SSL_write, so every SSL call holds `ssl_mu_`;
// blocking I/O on the inner connection never does. After the handshake a read must only read and
// a write only write: contexts send no session tickets and neither end asks for a key update, so
// no post-handshake message makes SSL_read produce bytes someone would have to send.
#pragma once

#include <openssl/bio.h>

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "connection.h"
#include "elsa/openssl_util.h"
#include "elsa/uninitialized.h"

namespace elsa::transport {

// An agent's certificate, key and fleet CA in a context for one side (server: accepts, client:
// connects), and the agent's name from its own certificate.
class TlsIdentity {
 public:
  static Result<std::shared_ptr<const TlsIdentity>> Load(const PeerTls& tls, bool server);
  SSL_CTX* context() const { return ctx_.get(); }
  const std::string& agent() const { return agent_; }

 private:
  TlsIdentity(SslCtxPtr ctx, std::string agent) : ctx_(std::move(ctx)), agent_(std::move(agent)) {}
  SslCtxPtr ctx_;
  std::string agent_;
};

inline constexpr char kAgentUriPrefix[] = "elsa-agent:";

// NAME from the certificate's URI SAN "elsa-agent:NAME"; Unauthenticated when it has none.
Result<std::string> AgentNameOf(X509* cert);

using ExportedKey = std::array<uint8_t, 32>;

class TlsConnection final : public Connection {
 public:
  // Runs the TLS handshake over `inner` before `deadline`. A client checks the server's
  // certificate against `dialled_host` (its IP or DNS SAN) as well as the CA. On failure the
  // alert goes out, and a server reads what the client still sends before giving up on it: a
  // close with unread bytes resets the connection, and the reset would overtake the alert that
  // tells the client why.
  static Result<std::unique_ptr<TlsConnection>> Handshake(std::unique_ptr<Connection> inner,
                                                          std::shared_ptr<const TlsIdentity> identity, bool server,
                                                          const std::string& dialled_host, Deadline deadline);
  ~TlsConnection() override;

  Status WriteAll(std::span<const iovec> iov, Deadline deadline, bool zero_copy_hint) override;
  Result<size_t> ReadSome(uint8_t* buf, size_t size, Deadline deadline) override;
  void ShutdownWrite() override { inner_->ShutdownWrite(); }
  void Abort() override { inner_->Abort(); }

  const std::string& peer_agent() const { return peer_agent_; }
  const std::string& own_agent() const { return identity_->agent(); }
  // Key material only the two ends of this TLS session can compute (RFC 8446 exporter, label
  // "EXPORTER-elsa-peer"): what binds the stream's proof to this session.
  Result<ExportedKey> ExportBindingKey();

 private:
  TlsConnection(std::unique_ptr<Connection> inner, std::shared_ptr<const TlsIdentity> identity, SslPtr ssl,
                BIO* ciphertext_in, BIO* ciphertext_out);

  Status DriveHandshake(bool server, Deadline deadline);
  // Sends what OpenSSL has sealed so far (the writer's buffer).
  Status SendSealed(Deadline deadline, bool zero_copy_hint);
  // Seals plaintext (coalescing small pieces into full records); `ssl_mu_` held.
  void Seal(const uint8_t* data, size_t size);
  void SealStaged();
  // Feeds ciphertext from the inner connection to OpenSSL; 0 at the peer's end of stream.
  Result<size_t> ReceiveCiphertext(Deadline deadline);

  std::unique_ptr<Connection> inner_;
  std::shared_ptr<const TlsIdentity> identity_;
  std::mutex ssl_mu_;
  SslPtr ssl_;
  BIO* ciphertext_in_;   // owned by ssl_
  BIO* ciphertext_out_;  // owned by ssl_
  std::string peer_agent_;
  bool seal_failed_ = false;       // writer: OpenSSL refused to seal (the session failed)
  // Not zeroed on resize: every byte is written before it is read, and zeroing would cost a pass
  // over each page.
  RawBytes staged_;    // writer: plaintext waiting to fill a record
  RawBytes sealed_;    // writer: ciphertext on its way to the inner connection
  RawBytes received_;  // reader: ciphertext from the inner connection
};

}  // namespace elsa::transport
