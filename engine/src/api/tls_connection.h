// TLS 1.3 for the agent's API (OpenSSL): owners of OpenSSL's objects, and a connection that
// carries the API's lines over TLS on a non-blocking socket, every wait bounded.
#pragma once

#include <openssl/ssl.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "api/api_connection.h"
#include "elsa/openssl_util.h"

namespace elsa {

// "HOST:PORT" or "[V6]:PORT" (the port is required) -> host, port.
Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& address);
// A listening TCP socket on `address`; a connected one to it, within `timeout_ms`.
Result<UniqueFd> ListenTcp(const std::string& address);
Result<UniqueFd> ConnectTcp(const std::string& address, int timeout_ms);

// Ends our side of `fd` and reads what the client still sends, for at most `timeout_ms`, then
// closes: closing with its request unread would reset the connection, and the reset can
// overtake the last words that tell the client why (a TLS alert, a plain-text refusal).
void DrainAndClose(UniqueFd& fd, int timeout_ms);

class TlsConnection final : public ApiConnection {
 public:
  // The socket is made non-blocking; every write must finish within `write_timeout_ms`.
  TlsConnection(UniqueFd fd, SslPtr ssl, size_t max_line_bytes, int write_timeout_ms);

  // The handshake, as the SSL object was set up (accept or connect state), within `timeout_ms`.
  Status Handshake(int timeout_ms);
  SSL* ssl() const { return ssl_.get(); }
  void DrainAndClose(int timeout_ms) { elsa::DrainAndClose(fd_, timeout_ms); }
  Status WriteLine(std::string_view line) override;

 protected:
  Status ReadMore(std::string& buffer, int timeout_ms) override;

 private:
  // Runs `step` (one SSL call) until it completes, waiting on the socket as OpenSSL asks.
  Result<int> Drive(const std::function<int()>& step, int timeout_ms, std::string_view what);

  UniqueFd fd_;
  SslPtr ssl_;
  const int write_timeout_ms_;
  std::mutex ssl_mu_;    // one SSL call at a time: events are written while the gate reads
  std::mutex write_mu_;  // one line at a time
};

}  // namespace elsa
