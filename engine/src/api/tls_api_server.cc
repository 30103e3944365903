#include "elsa/engine/tls_api_server.h"

#include <errno.h>
#include <netdb.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <optional>

#include "api/tls_connection.h"
#include "elsa/engine/api.h"
#include "elsa/engine/api_auth.h"
#include "elsa/json_reader.h"

namespace elsa {

using nlohmann::json;

struct TlsApiServer::State {
  Agent& agent;
  SslCtxPtr ctx;
  std::optional<ApiTokens> tokens;
  std::vector<std::string> admin_names;
};

namespace {

// TLS records of a handshake start with this byte; anything else is someone speaking plain text.
constexpr unsigned char kTlsHandshakeRecord = 0x16;
constexpr int kTlsDrainTimeoutMs = 1000;

std::string PeerAddress(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  char host[NI_MAXHOST] = "?";
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    (void)::getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
  return host;
}

// A plain-text client gets one plain JSON line saying why, not a TLS alert it cannot read.
// False when the client sent nothing in time, or plain text.
bool StartsWithTls(UniqueFd& fd) {
  pollfd p{fd.get(), POLLIN, 0};
  if (::poll(&p, 1, kTlsHandshakeTimeoutMs) <= 0) return false;
  unsigned char first = 0;
  if (::recv(fd.get(), &first, 1, MSG_PEEK) != 1) return false;
  if (first == kTlsHandshakeRecord) return true;
  const std::string refusal =
      DumpJson(ErrorJson(Status::Unauthenticated(
          "this port serves the Elsa API over TLS 1.3 only, with a client certificate or a token; "
          "use `elsa --agent HOST:PORT --ca CA_FILE --token-file FILE` (or --cert/--key)"))) +
      "\n";
  (void)::send(fd.get(), refusal.data(), refusal.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  DrainAndClose(fd, kTlsDrainTimeoutMs);
  return false;
}

std::optional<std::string> VerifiedCommonName(SSL* ssl) {
  X509* peer = SSL_get0_peer_certificate(ssl);
  if (!peer || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
  char name[256] = "";
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, name, sizeof name) < 0) return "";
  return std::string(name);
}

// Who the client is, from its token (which decides when there is one) or its certificate.
Result<ApiClient> Identify(const TlsApiServer::State& state, const json& request,
                           const std::optional<std::string>& certificate_name) {
  if (request.is_object() && request.contains("token")) {
    if (!request["token"].is_string()) return Status::Unauthenticated("'token' must be a string");
    if (!state.tokens) return Status::Unauthenticated("this agent takes no tokens (it has no --api-tokens)");
    auto client = state.tokens->Find(request["token"].get<std::string>());
    if (!client) return Status::Unauthenticated("no client has this token");
    return *client;
  }
  if (certificate_name) {
    const bool admin = std::find(state.admin_names.begin(), state.admin_names.end(), *certificate_name) !=
                       state.admin_names.end();
    return ApiClient{*certificate_name, admin ? ApiScope::kAdmin : ApiScope::kHub, ApiCredential::kCertificate};
  }
  return Status::Unauthenticated("no credentials: send a token (elsa --token-file) or present a client certificate "
                                 "from the agent's client CA (elsa --cert/--key)");
}

void ServeTlsClient(const TlsApiServer::State& state, UniqueFd fd) {
  const std::string peer = PeerAddress(fd.get());
  const Logger& log = state.agent.config().log;
  if (!StartsWithTls(fd)) {
    log.Warning("TLS API: refused " + peer + ": no TLS handshake");
    return;
  }
  SslPtr ssl(SSL_new(state.ctx.get()));
  if (!ssl) return log.Error("TLS API: SSL_new: " + TakeOpenSslErrors());
  SSL_set_accept_state(ssl.get());
  TlsConnection connection(std::move(fd), std::move(ssl), kMaxRequestBytes, kTlsWriteTimeoutMs);
  if (Status s = connection.Handshake(kTlsHandshakeTimeoutMs); !s.ok()) {
    log.Warning("TLS API: handshake with " + peer + " failed: " + s.message());
    return connection.DrainAndClose(kTlsDrainTimeoutMs);
  }
  const std::optional<std::string> certificate_name = VerifiedCommonName(connection.ssl());
  ServeApiConnection(state.agent, connection, [&](const json& request) -> Status {
    auto client = Identify(state, request, certificate_name);
    Status allowed = client.ok() ? CheckScope(*client, request.is_object() ? request.value("op", "") : "")
                                 : client.status();
    if (!allowed.ok()) log.Warning("TLS API: refused " + peer + ": " + allowed.message());
    return allowed;
  });
}

Status LoadCredentials(SSL_CTX* ctx, const TlsApiOptions& options, bool tokens_too) {
  if (SSL_CTX_use_certificate_chain_file(ctx, options.cert_file.c_str()) != 1)
    return Status::InvalidArgument("--api-cert " + options.cert_file + ": " + TakeOpenSslErrors());
  ELSA_RETURN_IF_ERROR(CheckSecretFile(options.key_file, "--api-key"));
  if (SSL_CTX_use_PrivateKey_file(ctx, options.key_file.c_str(), SSL_FILETYPE_PEM) != 1)
    return Status::InvalidArgument("--api-key " + options.key_file + ": " + TakeOpenSslErrors());
  if (SSL_CTX_check_private_key(ctx) != 1)
    return Status::InvalidArgument("--api-key " + options.key_file + " does not match --api-cert " +
                                   options.cert_file);
  if (options.client_ca_file.empty()) return Status::Ok();
  if (SSL_CTX_load_verify_locations(ctx, options.client_ca_file.c_str(), nullptr) != 1)
    return Status::InvalidArgument("--api-client-ca " + options.client_ca_file + ": " + TakeOpenSslErrors());
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.client_ca_file.c_str());
  if (names) SSL_CTX_set_client_CA_list(ctx, names);  // the context owns them
  // With tokens, a client may come without a certificate; one it presents must still verify.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (tokens_too ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT), nullptr);
  return Status::Ok();
}

}  // namespace

bool TlsApiOptions::requested() const {
  return !listen.empty() || !cert_file.empty() || !key_file.empty() || !client_ca_file.empty() ||
         !tokens_file.empty() || !admin_names.empty();
}

Status ValidateTlsApiOptions(const TlsApiOptions& o) {
  if (!o.requested()) return Status::Ok();
  if (o.listen.empty())
    return Status::InvalidArgument("--api-cert, --api-key, --api-client-ca, --api-tokens and --api-admin-cn "
                                   "configure the TLS API: they need --api-listen HOST:PORT");
  if (o.cert_file.empty() || o.key_file.empty())
    return Status::InvalidArgument("--api-listen needs the agent's certificate: --api-cert FILE --api-key FILE "
                                   "(tools/elsa-ca issue makes them)");
  if (o.client_ca_file.empty() && o.tokens_file.empty())
    return Status::InvalidArgument("--api-listen needs a way for clients to authenticate: --api-client-ca FILE "
                                   "(mutual TLS) and/or --api-tokens FILE; the API is never served without one");
  if (!o.admin_names.empty() && o.client_ca_file.empty())
    return Status::InvalidArgument("--api-admin-cn names client certificates: it needs --api-client-ca");
  return Status::Ok();
}

Result<std::unique_ptr<TlsApiServer>> TlsApiServer::Start(Agent& agent, const TlsApiOptions& options) {
  ELSA_RETURN_IF_ERROR(ValidateTlsApiOptions(options));
  auto state = std::make_unique<State>(State{agent, nullptr, std::nullopt, options.admin_names});
  if (!options.tokens_file.empty()) {
    auto tokens = ApiTokens::Load(options.tokens_file);
    if (!tokens.ok()) return tokens.status().WithContext("--api-tokens");
    state->tokens = std::move(*tokens);
  }
  ELSA_ASSIGN_OR_RETURN(state->ctx, NewTls13Context(/*server=*/true));
  ELSA_RETURN_IF_ERROR(LoadCredentials(state->ctx.get(), options, state->tokens.has_value()));
  ELSA_ASSIGN_OR_RETURN(UniqueFd listen_fd, ListenTcp(options.listen));
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  char port[NI_MAXSERV] = "0";
  if (::getsockname(listen_fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) == 0)
    (void)::getnameinfo(reinterpret_cast<sockaddr*>(&bound), len, nullptr, 0, port, sizeof port, NI_NUMERICSERV);
  return std::unique_ptr<TlsApiServer>(
      new TlsApiServer(std::move(state), std::move(listen_fd), static_cast<uint16_t>(std::atoi(port))));
}

TlsApiServer::TlsApiServer(std::unique_ptr<State> state, UniqueFd listen_fd, uint16_t port)
    : state_(std::move(state)), listen_fd_(std::move(listen_fd)), port_(port) {
  accept_thread_ = std::thread([this] {
    AcceptClients(listen_fd_.get(), stop_, kMaxTlsClients,
                  [this](UniqueFd client) { ServeTlsClient(*state_, std::move(client)); });
  });
}

TlsApiServer::~TlsApiServer() {
  stop_ = true;
  accept_thread_.join();
}

}  // namespace elsa
