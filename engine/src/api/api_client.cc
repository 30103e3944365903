#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "api/tls_connection.h"
#include "elsa/engine/api.h"
#include "elsa/file_util.h"
#include "elsa/json_reader.h"

namespace elsa {

using nlohmann::json;

namespace {

constexpr size_t kMaxReplyBytes = 256u << 20;  // a reply lists every session or checkpoint
constexpr int kConnectTimeoutMs = 10000;
constexpr int kClientWriteTimeoutMs = 60000;

Result<std::unique_ptr<ApiConnection>> ConnectUnix(const std::string& socket_path) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof addr.sun_path) return Status::InvalidArgument("socket path too long: " + socket_path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket", errno);
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    std::string why = err == EACCES ? "permission denied: the agent serves root only (use sudo)"
                                    : std::string(std::strerror(err));
    return Status::Unavailable("cannot reach the Elsa agent at " + socket_path + " (" + why +
                               "). Start it as root with `elsad --daemon` (or `elsad` in a terminal), "
                               "using the same --socket if you changed it.");
  }
  return std::unique_ptr<ApiConnection>(std::make_unique<SocketConnection>(std::move(fd), kMaxReplyBytes));
}

Status LoadClientCredentials(SSL_CTX* ctx, const AgentEndpoint& e) {
  if (SSL_CTX_load_verify_locations(ctx, e.ca_file.c_str(), nullptr) != 1)
    return Status::InvalidArgument("--ca " + e.ca_file + ": " + TakeOpenSslErrors());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (e.cert_file.empty() && e.key_file.empty()) return Status::Ok();
  if (e.cert_file.empty() || e.key_file.empty())
    return Status::InvalidArgument("a client certificate needs both --cert and --key");
  if (SSL_CTX_use_certificate_chain_file(ctx, e.cert_file.c_str()) != 1)
    return Status::InvalidArgument("--cert " + e.cert_file + ": " + TakeOpenSslErrors());
  if (SSL_CTX_use_PrivateKey_file(ctx, e.key_file.c_str(), SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1)
    return Status::InvalidArgument("--key " + e.key_file + ": " + TakeOpenSslErrors("does not match --cert"));
  return Status::Ok();
}

Result<std::unique_ptr<ApiConnection>> ConnectTls(const AgentEndpoint& e) {
  if (e.ca_file.empty())
    return Status::InvalidArgument("--agent " + e.address + " needs --ca FILE: the CA that issued the agent's certificate");
  ELSA_ASSIGN_OR_RETURN(auto host_port, SplitHostPort(e.address));
  ELSA_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewTls13Context(/*server=*/false));
  ELSA_RETURN_IF_ERROR(LoadClientCredentials(ctx.get(), e));
  auto fd = ConnectTcp(e.address, kConnectTimeoutMs);
  if (!fd.ok())
    return Status::Unavailable("cannot reach the Elsa agent at " + e.address + " (" + fd.status().message() +
                               "); does its elsad serve --api-listen there?");
  SslPtr ssl(SSL_new(ctx.get()));  // holds its own reference to the context
  if (!ssl) return Status::Internal("SSL_new: " + TakeOpenSslErrors());
  SSL_set_connect_state(ssl.get());
  const std::string& host = host_port.first;
  // The agent's certificate must name what we dialled: its IP address, or its DNS name.
  if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), host.c_str()) != 1) {
    ERR_clear_error();
    // SSL_set_tlsext_host_name, without its macro's C cast.
    if (SSL_set1_host(ssl.get(), host.c_str()) != 1 ||
        SSL_ctrl(ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(host.c_str())) != 1)
      return Status::InvalidArgument("cannot check the agent's certificate against '" + host + "'");
  }
  auto connection = std::make_unique<TlsConnection>(std::move(*fd), std::move(ssl), kMaxReplyBytes, kClientWriteTimeoutMs);
  if (Status s = connection->Handshake(kConnectTimeoutMs); !s.ok()) {
    const long verdict = SSL_get_verify_result(connection->ssl());
    if (verdict != X509_V_OK)
      return Status::Unauthenticated("the agent at " + e.address + " presented a certificate that does not verify against " +
                                     e.ca_file + ": " + X509_verify_cert_error_string(verdict));
    return Status::Unavailable("TLS handshake with the agent at " + e.address + " failed: " + s.message());
  }
  return std::unique_ptr<ApiConnection>(std::move(connection));
}

// Over TLS 1.3 the agent judges a client's certificate after the client's side of the handshake
// is done: its refusal arrives as an alert on the first read.
Status ExplainTlsFailure(const AgentEndpoint& e, const Status& failure) {
  const std::string& m = failure.message();
  if (m.find("certificate required") != std::string::npos)
    return Status::Unauthenticated("the agent at " + e.address + " wants a client certificate from its CA (--cert/--key): " + m);
  if (m.find("unknown ca") != std::string::npos || m.find("bad certificate") != std::string::npos ||
      m.find("certificate unknown") != std::string::npos || m.find("certificate expired") != std::string::npos)
    return Status::Unauthenticated("the agent at " + e.address + " refused our client certificate " + e.cert_file +
                                   " (not from its client CA, or not valid): " + m);
  if (failure.code() == StatusCode::kPeerClosed || failure.code() == StatusCode::kEndOfStream)
    return Status::Unavailable("the agent at " + e.Describe() + " closed the connection without an answer");
  return failure;
}

Status ExplainRefusal(const AgentEndpoint& e, const std::string& op, const Status& refusal) {
  if (e.address.empty()) return refusal;
  if (refusal.code() == StatusCode::kUnauthenticated)
    return Status::Unauthenticated("the agent at " + e.address + (e.token.empty() ? " refused the request: " : " refused the token: ") +
                                   refusal.message());
  if (refusal.code() == StatusCode::kPermissionDenied)
    return Status::PermissionDenied("the agent at " + e.address + " refused " + op + ": " + refusal.message());
  return refusal;
}

}  // namespace

Result<std::string> ReadClientToken(const std::string& path) {
  ELSA_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 4096));
  std::string token = text.substr(0, text.find('\n'));
  const size_t first = token.find_first_not_of(" \t\r");
  const size_t last = token.find_last_not_of(" \t\r");
  if (first == std::string::npos) return Status::InvalidArgument("token file " + path + " is empty");
  return token.substr(first, last - first + 1);
}

Result<json> CallAgent(const std::string& socket_path, const json& request, const EventFn& on_event) {
  AgentEndpoint endpoint;
  endpoint.socket_path = socket_path;
  return CallAgent(endpoint, request, on_event);
}

Result<json> CallAgent(const AgentEndpoint& endpoint, const json& request, const EventFn& on_event) {
  const bool tls = !endpoint.address.empty();
  ELSA_ASSIGN_OR_RETURN(auto connection, tls ? ConnectTls(endpoint) : ConnectUnix(endpoint.socket_path));
  json sent = request;
  if (tls && !endpoint.token.empty()) sent["token"] = endpoint.token;
  if (Status s = connection->WriteLine(DumpJson(sent)); !s.ok()) return ExplainTlsFailure(endpoint, s);
  for (;;) {
    auto line = connection->ReadLine(/*timeout_ms=*/-1);  // a dump or a migration takes what it takes
    if (!line.ok()) return ExplainTlsFailure(endpoint, line.status());
    json msg = json::parse(*line, nullptr, false);
    if (msg.is_discarded() || !msg.is_object()) return Status::Corruption("the agent sent a line that is not JSON");
    if (msg.contains("event")) {
      if (on_event) on_event(msg);
      continue;
    }
    if (msg.value("ok", false)) return msg.contains("result") ? msg["result"] : json::object();
    return ExplainRefusal(endpoint, request.value("op", "?"),
                          StatusFromErrorJson(msg.value("error", json::object())));
  }
}

}  // namespace elsa
