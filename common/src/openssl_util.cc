#include "elsa/openssl_util.h"

#include <openssl/err.h>

namespace elsa {

std::string TakeOpenSslErrors(std::string_view fallback) {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += reason ? reason : "error " + std::to_string(e);
  }
  return out.empty() ? std::string(fallback) : out;
}

Result<SslCtxPtr> NewTls13Context(bool server) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) return Status::Internal("SSL_CTX_new: " + TakeOpenSslErrors());
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1)
    return Status::Internal("cannot restrict TLS to 1.3: " + TakeOpenSslErrors());
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  if (server) SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

}  // namespace elsa
