// elsa-proxy's configuration: configurable-http-proxy's command line (what JupyterHub passes,
// spelled the same) plus a few of Elsa's own, prefixed where they could ever collide.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "elsa/log.h"
#include "elsa/status.h"

namespace elsa::proxy {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };

// A set of TLS files, as CHP's --ssl-*, --api-ssl-* and --client-ssl-* flags give them.
struct TlsFiles {
  std::string key;
  std::string cert;
  std::string ca;
  bool request_cert = false;         // ask the peer for a certificate
  bool reject_unauthorized = false;  // and refuse peers without a valid one
  std::string key_passphrase;        // from CONFIGPROXY_SSL_KEY_PASSPHRASE (or the API's)
  bool enabled() const { return !key.empty() || !cert.empty(); }
};

struct Options {
  // --- CHP's flags ------------------------------------------------------------------------
  std::string ip;                // public interface; "" (or "*") means every interface
  uint16_t port = 8000;
  std::string api_ip = "localhost";
  uint16_t api_port = 0;         // 0: port + 1, as CHP
  std::string socket;            // public Unix socket instead of ip:port
  std::string api_socket;        // API Unix socket instead of api_ip:api_port
  TlsFiles ssl;                  // public listener
  TlsFiles api_ssl;              // API listener
  TlsFiles client_ssl;           // connections to https/wss backends
  std::string ssl_protocol;      // e.g. TLSv1_2: the only protocol version allowed
  std::string ssl_ciphers;
  std::string ssl_dhparam;
  bool ssl_allow_rc4 = false;    // accepted for compatibility; RC4 is never enabled
  std::string default_target;
  std::string error_target;      // GET <error_target>/<code>?url=<url> renders 404/503 pages
  std::string error_path;        // or <error_path>/<code>.html
  uint16_t redirect_port = 0;    // plain-HTTP port that redirects to the HTTPS listener
  uint16_t redirect_to = 0;
  std::string pid_file;
  bool x_forward = true;         // add X-Forwarded-{For,Port,Proto,Host}
  bool prepend_path = true;      // prepend the target's path to the request's
  bool include_prefix = true;    // keep the route's prefix in the forwarded path
  bool auto_rewrite = false;     // rewrite Location's host on redirects
  bool change_origin = false;    // send the target's host as Host
  std::string protocol_rewrite;  // rewrite Location's scheme on redirects
  std::vector<std::pair<std::string, std::string>> custom_headers;
  bool insecure = false;         // do not verify backends' certificates
  bool host_routing = false;     // the Host is the first path segment of routes
  std::string metrics_ip;
  uint16_t metrics_port = 0;     // 0: no metrics listener
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kText;  // [elsa] --log-format json: one JSON object a line
  std::chrono::milliseconds timeout{0};        // idle limit on a client's connection; 0: none
  std::chrono::milliseconds proxy_timeout{0};  // limit on a backend's answer; 0: none
  std::string auth_token;        // from CONFIGPROXY_AUTH_TOKEN; empty: API not authenticated

  // --- Elsa's own ---------------------------------------------------------------------------
  int threads = 0;                                     // 0: one per core, at most 8
  std::chrono::milliseconds header_timeout{60000};     // idle + request-header time per request
  size_t max_header_bytes = 16 * 1024;                 // Node's default: larger gets 431
  size_t max_api_body_bytes = 1024 * 1024;             // larger gets 413
  size_t max_ws_message_bytes = 64 * 1024 * 1024;      // larger closes with 1009
  size_t ws_queue_bytes = 16 * 1024 * 1024;            // per websocket, while paused
  std::chrono::milliseconds ws_idle_timeout{120000};   // browser silent this long: dropped
  std::chrono::milliseconds max_pause{300000};         // a pause resumes by itself after this
  std::chrono::milliseconds resume_timeout{60000};     // reconnect attempts stop after this
  std::chrono::milliseconds drain_timeout{10000};      // a backend that will not close: cut
  size_t backend_idle_per_host = 64;                   // pooled keep-alive connections
  std::chrono::milliseconds backend_idle_timeout{30000};
};

// Parses argv (argv[0] is the program name). The API token is not a flag: it comes from
// `auth_token_env` (the value of CONFIGPROXY_AUTH_TOKEN, or null). --help and --version put
// their text in `*exit_text` and return Ok with exit_text set; errors say which flag and why.
Result<Options> ParseCommandLine(std::span<const char* const> argv, const char* auth_token_env,
                                 std::string* exit_text);

std::string_view LogLevelName(LogLevel level);

}  // namespace elsa::proxy
