#include "tls_connection.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>

namespace elsa::transport {
namespace {

// Plaintext sealed per round before the ciphertext is sent: large enough that a round is a few
// big sends, small enough that the ciphertext buffer stays modest.
constexpr size_t kSealRoundBytes = 256u << 10;
constexpr size_t kRecordBytes = 16u << 10;  // TLS's largest record
constexpr size_t kReceiveBytes = 256u << 10;
constexpr char kExporterLabel[] = "EXPORTER-elsa-peer";

struct GeneralNamesFree {
  void operator()(GENERAL_NAMES* names) const { GENERAL_NAMES_free(names); }
};

bool IsCertificateAlert(int alert) {
  switch (alert) {
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_UNKNOWN:
    case SSL_AD_UNKNOWN_CA:
    case SSL_AD_ACCESS_DENIED:
    case SSL_AD_CERTIFICATE_REQUIRED: return true;
    default: return false;
  }
}

// Why an SSL call failed, as a Status whose code tells a refused certificate (kUnauthenticated)
// from a stream altered in transit (kCorruption) from anything else TLS objects to
// (kProtocolError). Takes this thread's OpenSSL error queue.
Status TlsFailure(SSL* ssl, std::string_view during) {
  std::vector<int> reasons;
  std::string detail;
  while (unsigned long e = ERR_get_error()) {
    if (ERR_GET_LIB(e) == ERR_LIB_SSL) reasons.push_back(ERR_GET_REASON(e));
    const char* text = ERR_reason_error_string(e);
    if (!detail.empty()) detail += "; ";
    detail += text ? text : "error " + std::to_string(e);
  }
  if (detail.empty()) detail = "no detail from OpenSSL";
  const std::string where = "TLS (" + std::string(during) + "): ";
  for (int reason : reasons) {
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
      return Status::Unauthenticated(
          where + "the peer's certificate failed verification: " +
          X509_verify_cert_error_string(SSL_get_verify_result(ssl)) +
          " (it must be current, signed by the fleet CA given as --peer-ca, and name the address dialled)");
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
      return Status::Unauthenticated(where + "the peer presented no certificate; every agent needs --peer-cert and "
                                             "--peer-key from the fleet CA (tools/elsa-ca issue DIR NAME --peer)");
    if (reason == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC)
      return Status::Corruption(where + "a record failed authentication (" + detail +
                                "): the stream was altered in transit");
    if (reason >= SSL_AD_REASON_OFFSET) {
      const int alert = reason - SSL_AD_REASON_OFFSET;
      if (IsCertificateAlert(alert))
        return Status::Unauthenticated(where + "the peer refused our certificate (" + detail +
                                       "): both agents need certificates from the same fleet CA, current, "
                                       "naming each agent (tools/elsa-ca issue DIR NAME --peer)");
      if (alert == SSL_AD_BAD_RECORD_MAC)
        return Status::Corruption(where + "the peer received a record that failed authentication (" + detail +
                                  "): the stream was altered in transit");
      return Status::ProtocolError(where + "the peer sent an alert: " + detail);
    }
  }
  return Status::ProtocolError(where + detail);
}

bool IsNumericAddress(const std::string& host) {
  in6_addr any{};
  return ::inet_pton(AF_INET, host.c_str(), &any) == 1 || ::inet_pton(AF_INET6, host.c_str(), &any) == 1;
}

}  // namespace

Result<std::string> AgentNameOf(X509* cert) {
  std::unique_ptr<GENERAL_NAMES, GeneralNamesFree> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  const std::string_view prefix = kAgentUriPrefix;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    const std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                                static_cast<size_t>(ASN1_STRING_length(uri)));
    if (!text.starts_with(prefix)) continue;
    const std::string_view agent = text.substr(prefix.size());
    const bool well_formed = !agent.empty() && agent.size() <= 64 && std::all_of(agent.begin(), agent.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    });
    if (!well_formed) return Status::Unauthenticated("the certificate's agent name '" + std::string(agent) + "' is malformed");
    return std::string(agent);
  }
  return Status::Unauthenticated("the certificate names no agent (no URI SAN " + std::string(prefix) +
                                 "NAME); issue agents' certificates with tools/elsa-ca issue DIR NAME --peer");
}

Result<std::shared_ptr<const TlsIdentity>> TlsIdentity::Load(const PeerTls& tls, bool server) {
  if (tls.cert_file.empty() || tls.key_file.empty() || tls.ca_file.empty())
    return Status::InvalidArgument("TLS between agents needs a certificate, its key and the fleet's CA, all three");
  ELSA_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewTls13Context(server));
  // AES-128-GCM first: TLS 1.3's mandatory suite, and fewer rounds than AES-256 (about 15% more
  // bytes per second here, `openssl speed -evp`) on the pages a migration moves; both ends are
  // ours, so the server's order decides.
  if (SSL_CTX_set_ciphersuites(ctx.get(),
                               "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") != 1)
    return Status::Internal("cannot set the TLS 1.3 cipher suites: " + TakeOpenSslErrors());
  if (server) SSL_CTX_set_options(ctx.get(), SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert_file.c_str()) != 1)
    return Status::InvalidArgument("certificate " + tls.cert_file + ": " + TakeOpenSslErrors());
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)
    return Status::InvalidArgument("key " + tls.key_file + ": " + TakeOpenSslErrors());
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return Status::InvalidArgument("key " + tls.key_file + " does not match certificate " + tls.cert_file);
  if (SSL_CTX_load_verify_locations(ctx.get(), tls.ca_file.c_str(), nullptr) != 1)
    return Status::InvalidArgument("CA " + tls.ca_file + ": " + TakeOpenSslErrors());
  // Both ends must present a certificate; OpenSSL also checks its extended key usage for the
  // role it plays (serverAuth for the accepting agent, clientAuth for the connecting one).
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  Result<std::string> agent = AgentNameOf(SSL_CTX_get0_certificate(ctx.get()));
  if (!agent.ok()) return agent.status().WithContext("certificate " + tls.cert_file);
  return std::shared_ptr<const TlsIdentity>(new TlsIdentity(std::move(ctx), std::move(*agent)));
}

TlsConnection::TlsConnection(std::unique_ptr<Connection> inner, std::shared_ptr<const TlsIdentity> identity,
                             SslPtr ssl, BIO* ciphertext_in, BIO* ciphertext_out)
    : Connection(UniqueFd()),
      inner_(std::move(inner)),
      identity_(std::move(identity)),
      ssl_(std::move(ssl)),
      ciphertext_in_(ciphertext_in),
      ciphertext_out_(ciphertext_out),
      received_(kReceiveBytes) {
  staged_.reserve(kRecordBytes);
  // Ciphertext lands in one buffer for the connection's life: the backend may register it.
  inner_->UseReadBuffer(received_.data(), received_.size());
}

TlsConnection::~TlsConnection() = default;

Result<std::unique_ptr<TlsConnection>> TlsConnection::Handshake(std::unique_ptr<Connection> inner,
                                                                std::shared_ptr<const TlsIdentity> identity,
                                                                bool server, const std::string& dialled_host,
                                                                Deadline deadline) {
  SslPtr ssl(SSL_new(identity->context()));
  if (!ssl) return Status::Internal("SSL_new: " + TakeOpenSslErrors());
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (!in || !out) {
    BIO_free(in);
    BIO_free(out);
    return Status::Internal("BIO_new: " + TakeOpenSslErrors());
  }
  SSL_set_bio(ssl.get(), in, out);  // ssl owns both from here
  if (server) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
    const int named = IsNumericAddress(dialled_host) ? X509_VERIFY_PARAM_set1_ip_asc(param, dialled_host.c_str())
                                                     : X509_VERIFY_PARAM_set1_host(param, dialled_host.c_str(), 0);
    if (named != 1) return Status::InvalidArgument("cannot check a certificate against '" + dialled_host + "'");
  }
  std::unique_ptr<TlsConnection> conn(
      new TlsConnection(std::move(inner), std::move(identity), std::move(ssl), in, out));
  Status handshake = conn->DriveHandshake(server, deadline);
  if (!handshake.ok()) {
    if (server) {
      // Wait for the client to close, so the alert reaches it before any reset could.
      conn->inner_->ShutdownWrite();
      const Deadline drain = std::min(deadline, Clock::now() + std::chrono::seconds(1));
      for (;;) {
        Result<size_t> n = conn->inner_->ReadSome(conn->received_.data(), conn->received_.size(), drain);
        if (!n.ok() || *n == 0) break;
      }
    }
    return handshake;
  }
  return conn;
}

Status TlsConnection::DriveHandshake(bool server, Deadline deadline) {
  for (;;) {
    Status failure;
    bool done = false;
    {
      std::lock_guard lock(ssl_mu_);
      ERR_clear_error();
      const int rc = SSL_do_handshake(ssl_.get());
      done = rc == 1;
      if (!done && SSL_get_error(ssl_.get(), rc) != SSL_ERROR_WANT_READ) failure = TlsFailure(ssl_.get(), "handshake");
      const size_t pending = BIO_ctrl_pending(ciphertext_out_);
      sealed_.resize(pending);
      if (pending > 0) BIO_read(ciphertext_out_, sealed_.data(), static_cast<int>(pending));
    }
    // Our flight, or the alert that says why we give up.
    Status sent = SendSealed(deadline, false);
    if (!failure.ok()) return failure;
    ELSA_RETURN_IF_ERROR(sent);
    if (done) break;
    Result<size_t> n = ReceiveCiphertext(deadline);
    if ((n.ok() && *n == 0) || n.status().code() == StatusCode::kPeerClosed)
      return Status::PeerClosed(
          "the peer closed the connection during the TLS handshake: it refused us (see its log) or does not "
          "speak TLS between agents (elsad --peer-cert on both ends, or on neither)");
    ELSA_RETURN_IF_ERROR(n.status());
  }
  X509* peer = SSL_get0_peer_certificate(ssl_.get());
  if (!peer) return Status::Unauthenticated("TLS: the peer presented no certificate");
  Result<std::string> agent = AgentNameOf(peer);
  if (!agent.ok()) return agent.status().WithContext(server ? "the connecting agent's certificate" : "the peer's certificate");
  peer_agent_ = std::move(*agent);
  return Status::Ok();
}

Result<ExportedKey> TlsConnection::ExportBindingKey() {
  ExportedKey key{};
  std::lock_guard lock(ssl_mu_);
  if (SSL_export_keying_material(ssl_.get(), key.data(), key.size(), kExporterLabel, sizeof kExporterLabel - 1,
                                 nullptr, 0, 0) != 1)
    return Status::Internal("TLS: cannot export keying material: " + TakeOpenSslErrors());
  return key;
}

Result<size_t> TlsConnection::ReceiveCiphertext(Deadline deadline) {
  ELSA_ASSIGN_OR_RETURN(size_t n, inner_->ReadSome(received_.data(), received_.size(), deadline));
  if (n == 0) return n;
  std::lock_guard lock(ssl_mu_);
  if (BIO_write(ciphertext_in_, received_.data(), static_cast<int>(n)) != static_cast<int>(n))
    return Status::Internal("TLS: cannot buffer received bytes: " + TakeOpenSslErrors());
  return n;
}

Status TlsConnection::SendSealed(Deadline deadline, bool zero_copy_hint) {
  if (sealed_.empty()) return Status::Ok();
  iovec iov{sealed_.data(), sealed_.size()};
  Status sent = inner_->WriteAll({&iov, 1}, deadline, zero_copy_hint);
  sealed_.clear();
  return sent;
}

void TlsConnection::SealStaged() {
  if (staged_.empty()) return;
  // A memory BIO takes every byte, so SSL_write never comes back short or wanting I/O.
  if (SSL_write(ssl_.get(), staged_.data(), static_cast<int>(staged_.size())) <= 0) seal_failed_ = true;
  staged_.clear();
}

void TlsConnection::Seal(const uint8_t* data, size_t size) {
  while (size > 0) {
    // Small pieces (frame headers, short frames) share records rather than each costing one.
    if (!staged_.empty() || size < kRecordBytes) {
      const size_t take = std::min(size, kRecordBytes - staged_.size());
      staged_.insert(staged_.end(), data, data + take);
      data += take;
      size -= take;
      if (staged_.size() == kRecordBytes) SealStaged();
      continue;
    }
    const size_t whole = size - size % kRecordBytes;
    if (SSL_write(ssl_.get(), data, static_cast<int>(whole)) <= 0) seal_failed_ = true;
    data += whole;
    size -= whole;
  }
}

Status TlsConnection::WriteAll(std::span<const iovec> iov, Deadline deadline, bool zero_copy_hint) {
  size_t index = 0, offset = 0;
  while (index < iov.size()) {
    {
      std::lock_guard lock(ssl_mu_);
      ERR_clear_error();
      size_t sealed = 0;
      while (index < iov.size() && sealed < kSealRoundBytes) {
        const auto* base = static_cast<const uint8_t*>(iov[index].iov_base);
        const size_t take = std::min(iov[index].iov_len - offset, kSealRoundBytes - sealed);
        Seal(base + offset, take);
        sealed += take;
        offset += take;
        if (offset == iov[index].iov_len) ++index, offset = 0;
      }
      if (index == iov.size()) SealStaged();
      if (seal_failed_) return TlsFailure(ssl_.get(), "sealing");
      const size_t pending = BIO_ctrl_pending(ciphertext_out_);
      sealed_.resize(pending);
      if (pending > 0) BIO_read(ciphertext_out_, sealed_.data(), static_cast<int>(pending));
    }
    ELSA_RETURN_IF_ERROR(SendSealed(deadline, zero_copy_hint));
  }
  return Status::Ok();
}

Result<size_t> TlsConnection::ReadSome(uint8_t* buf, size_t size, Deadline deadline) {
  for (;;) {
    {
      std::lock_guard lock(ssl_mu_);
      ERR_clear_error();
      size_t got = 0;
      const int rc = SSL_read_ex(ssl_.get(), buf, size, &got);
      if (rc == 1) return got;
      const int error = SSL_get_error(ssl_.get(), rc);
      if (error == SSL_ERROR_ZERO_RETURN) return size_t{0};
      if (error != SSL_ERROR_WANT_READ) return TlsFailure(ssl_.get(), "reading");
    }
    ELSA_ASSIGN_OR_RETURN(size_t n, ReceiveCiphertext(deadline));
    if (n == 0) {
      // The channel's own CLOSE frame, inside TLS, is what says a stream ended cleanly; a TCP end
      // without it is reported by the channel. Only a record cut short is TLS's to report.
      std::lock_guard lock(ssl_mu_);
      if (BIO_ctrl_pending(ciphertext_in_) > 0 || SSL_has_pending(ssl_.get()))
        return Status::PeerClosed("the peer closed the connection in the middle of a TLS record");
      return size_t{0};
    }
  }
}

}  // namespace elsa::transport
