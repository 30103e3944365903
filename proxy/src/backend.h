// Connections to backends: connecting (TCP or TLS, bounded in time), a per-worker pool of idle
// keep-alive connections, and relaying one HTTP request/response pair through them.
//
// The pool is why elsa-proxy does not run out of ephemeral ports with hundreds of users, as
// configurable-http-proxy (a new connection per request) does.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "stream.h"
#include "url.h"

namespace elsa::proxy {

namespace http = beast::http;

struct Shared;
struct ClientInfo;

class BackendPool {
 public:
  BackendPool(size_t max_idle_per_host, std::chrono::milliseconds idle_timeout)
      : max_idle_(max_idle_per_host), idle_timeout_(idle_timeout) {}
  // A pooled connection to `key` that still looks usable, if any.
  std::optional<AnyStream> Take(const std::string& key);
  void Give(const std::string& key, AnyStream stream);
  // Closes every idle connection to `key`.
  void Drop(const std::string& key) { idle_.erase(key); }

 private:
  struct Idle {
    AnyStream stream;
    std::chrono::steady_clock::time_point since;
  };
  const size_t max_idle_;
  const std::chrono::milliseconds idle_timeout_;
  std::unordered_map<std::string, std::deque<Idle>> idle_;
};

// Unavailable when the backend cannot be reached (resolving, connecting, TLS handshake).
net::awaitable<Result<AnyStream>> ConnectBackend(const Shared& shared, const TargetUrl& target,
                                                 std::chrono::milliseconds timeout);

// A reached backend failing an exchange: Timeout if it ran out of time, PeerClosed otherwise.
// Kept apart from Unavailable so errors can be told apart (elsa_proxy_errors_total's reason).
Status BackendExchangeError(std::string_view what, const error_code& ec);

// The request line and headers the backend gets: path joined with the target's, hop-by-hop
// headers dropped, X-Forwarded-* added, custom headers set. Used for websockets too.
void PrepareForwardHeaders(const Shared& shared, http::fields& fields, const ClientInfo& client,
                           const TargetUrl& target, bool websocket);
// The request-target the backend gets for `raw_target` matched under `prefix`.
std::string ForwardTarget(const Shared& shared, const TargetUrl& target, std::string_view raw_target,
                          std::string_view prefix);

// Relays a request whose header `parser` has read from `client` (body still to come) to the
// target and the answer back. Ok(true): the client connection may serve another request.
// An error before anything reached the client is returned for the caller's 503 page: from
// ConnectBackend, or BackendExchangeError.
struct ForwardOutcome {
  bool keep_alive = false;
  bool responded = false;  // something was written to the client
  int status = 0;
};
net::awaitable<Result<ForwardOutcome>> ForwardHttp(Shared& shared, BackendPool& pool,
                                                   AnyStream& client, beast::flat_buffer& client_buf,
                                                   http::request_parser<http::buffer_body>& parser,
                                                   const ClientInfo& info, const TargetUrl& target,
                                                   std::string_view prefix);

}  // namespace elsa::proxy
