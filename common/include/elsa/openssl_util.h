// OpenSSL pieces both TLS users share: the agent's API (engine/src/api) and the channel between
// agents (transport/): owners of OpenSSL's objects, its error queue as a sentence, and a
// TLS 1.3-only context.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>

#include "elsa/status.h"

namespace elsa {

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

// OpenSSL's queued errors as one sentence (and the queue emptied); `fallback` when it is empty.
std::string TakeOpenSslErrors(std::string_view fallback = "no detail from OpenSSL");

// A context for TLS 1.3 only, server or client side, that never sends session tickets: each
// connection is used once, so there is nothing to resume, and a ticket would be a write the
// server makes after its handshake, which a reader must then be able to send.
Result<SslCtxPtr> NewTls13Context(bool server);

}  // namespace elsa
