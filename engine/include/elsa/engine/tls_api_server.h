// The agent's API over TCP with TLS 1.3 (elsad --api-listen), for the hub and `elsa --agent`
// on other machines. Never without authentication: each client proves itself with a certificate
// from the client CA (mutual TLS), or a token from the token file (elsa/engine/api_auth.h), or
// both (the token then decides). Requests are the Unix socket's JSON lines (elsa/engine/api.h),
// with the token in the request's "token" field.
//
// A client with a verified certificate and no token is `hub`, unless its certificate's common
// name is one of `admin_names` (elsad --api-admin-cn).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "elsa/engine/agent.h"
#include "elsa/engine/api_auth.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

struct TlsApiOptions {
  std::string listen;          // HOST:PORT; empty: no TLS API
  std::string cert_file;       // the agent's certificate (chain), PEM
  std::string key_file;        // its private key, PEM
  std::string client_ca_file;  // mutual TLS: clients' certificates must come from this CA
  std::string tokens_file;     // bearer tokens, one client a line
  std::vector<std::string> admin_names;  // certificate common names given admin

  bool requested() const;  // any of the above set
};

// Bounds on the clients of the TLS API.
constexpr int kTlsHandshakeTimeoutMs = 10000;
constexpr int kTlsWriteTimeoutMs = 60000;  // a client that stops reading cannot hold its thread
constexpr size_t kMaxTlsClients = 64;

// The flags' combinations elsad refuses (a certificate without --api-listen, a listener without
// a certificate, or without any way for clients to authenticate).
Status ValidateTlsApiOptions(const TlsApiOptions& options);

class TlsApiServer {
 public:
  // Loads the certificate, key, CA and tokens, binds `options.listen`, and serves on a thread of
  // its own until destroyed.
  static Result<std::unique_ptr<TlsApiServer>> Start(Agent& agent, const TlsApiOptions& options);
  ~TlsApiServer();  // stops accepting; waits for requests in progress
  TlsApiServer(const TlsApiServer&) = delete;
  TlsApiServer& operator=(const TlsApiServer&) = delete;

  uint16_t port() const { return port_; }

  struct State;  // the TLS context and credentials, shared with the clients' threads

 private:
  TlsApiServer(std::unique_ptr<State> state, UniqueFd listen_fd, uint16_t port);

  std::unique_ptr<State> state_;
  UniqueFd listen_fd_;
  uint16_t port_;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
};

}  // namespace elsa
