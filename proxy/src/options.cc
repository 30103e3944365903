#include <algorithm>
#include <thread>

#include <CLI/CLI.hpp>

#include "elsa/proxy/options.h"
#include "url.h"

namespace elsa::proxy {

namespace {

constexpr std::string_view kVersion = "elsa-proxy 0.1.0 (configurable-http-proxy 4.5 compatible)";

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string Trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

Result<LogLevel> ParseLogLevel(const std::string& text) {
  std::string l = Lower(text);
  if (l == "debug" || l == "trace" || l == "silly") return LogLevel::kDebug;
  if (l == "info" || l == "http" || l == "verbose") return LogLevel::kInfo;
  if (l == "warn" || l == "warning") return LogLevel::kWarn;
  if (l == "error" || l == "critical" || l == "fatal") return LogLevel::kError;
  return Status::InvalidArgument("--log-level: '" + text + "' is not one of debug, info, warn, error");
}

void AddTlsFlags(CLI::App& app, const std::string& prefix, const std::string& what, TlsFiles* tls) {
  app.add_option("--" + prefix + "-key", tls->key, "SSL key to use, if any, " + what);
  app.add_option("--" + prefix + "-cert", tls->cert, "SSL certificate to use, if any, " + what);
  app.add_option("--" + prefix + "-ca", tls->ca, "SSL certificate authority, if any, " + what);
  app.add_flag("--" + prefix + "-request-cert", tls->request_cert,
               "Request SSL certs to authenticate clients " + what);
  app.add_flag("--" + prefix + "-reject-unauthorized", tls->reject_unauthorized,
               "Reject unauthorized SSL connections (only meaningful with --" + prefix +
                   "-request-cert) " + what);
}

Status CheckTls(const TlsFiles& tls, const std::string& prefix) {
  if (tls.key.empty() != tls.cert.empty()) {
    return Status::InvalidArgument("--" + prefix + "-key and --" + prefix + "-cert go together");
  }
  return Status::Ok();
}

}  // namespace

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

Result<Options> ParseCommandLine(std::span<const char* const> argv, const char* auth_token_env,
                                 std::string* exit_text) {
  Options o;
  CLI::App app{"elsa-proxy: a configurable-http-proxy drop-in for JupyterHub that keeps websockets "
               "open while a backend is paused, moved and retargeted. API token: "
               "$CONFIGPROXY_AUTH_TOKEN. See docs/proxy.md.",
               "elsa-proxy"};
  app.option_defaults()->always_capture_default();
  bool version = false;
  app.add_flag("-V,--version", version, "Print the version");

  std::string ip, log_level = "info", log_format = "text", storage_backend, ssl_protocol;
  int64_t port = 8000, api_port = 0, metrics_port = 0, redirect_port = 0, redirect_to = 0;
  int64_t timeout_ms = 0, proxy_timeout_ms = 0;
  bool no_x_forward = false, no_prepend_path = false, no_include_prefix = false;
  std::vector<std::string> custom_headers;
  app.add_option("--ip", ip, "Public-facing IP of the proxy ('' or '*': every interface)");
  app.add_option("--port", port, "Public-facing port of the proxy");
  app.add_option("--socket", o.socket, "Public-facing Unix socket, instead of --ip/--port");
  AddTlsFlags(app, "ssl", "(public listener)", &o.ssl);
  app.add_option("--ssl-protocol", ssl_protocol, "The one TLS version to allow, e.g. TLSv1_2");
  app.add_option("--ssl-ciphers", o.ssl_ciphers, "':'-separated cipher list");
  app.add_flag("--ssl-allow-rc4", o.ssl_allow_rc4, "Accepted for compatibility; RC4 stays off");
  app.add_option("--ssl-dhparam", o.ssl_dhparam, "Diffie-Hellman parameters PEM file");
  app.add_option("--api-ip", o.api_ip, "Inward-facing IP for API requests");
  app.add_option("--api-port", api_port, "Inward-facing port for API requests (default: --port + 1)");
  app.add_option("--api-socket", o.api_socket, "Unix socket for API requests, instead of --api-ip/--api-port");
  AddTlsFlags(app, "api-ssl", "(API listener)", &o.api_ssl);
  AddTlsFlags(app, "client-ssl", "(connections to https backends)", &o.client_ssl);
  app.add_option("--default-target", o.default_target, "Default proxy target (proto://host[:port])");
  app.add_option("--error-target", o.error_target, "Server for 404/503 pages: GET <target>/<code>?url=...");
  app.add_option("--error-path", o.error_path, "Directory with <code>.html / error.html pages");
  app.add_option("--redirect-port", redirect_port, "Redirect plain HTTP on this port to HTTPS");
  app.add_option("--redirect-to", redirect_to, "Port to redirect --redirect-port to");
  app.add_option("--pid-file", o.pid_file, "Write our PID to a file");
  app.add_flag("--no-x-forward", no_x_forward, "Don't add 'X-Forwarded-*' headers");
  app.add_flag("--no-prepend-path", no_prepend_path, "Don't prepend the target's path");
  app.add_flag("--no-include-prefix", no_include_prefix, "Don't include the route's prefix");
  app.add_flag("--auto-rewrite", o.auto_rewrite, "Rewrite the Location host/port on redirects");
  app.add_flag("--change-origin", o.change_origin, "Send the target's host as Host");
  app.add_option("--protocol-rewrite", o.protocol_rewrite, "Rewrite the Location protocol on redirects");
  app.add_option("--custom-header", custom_headers, "Header to add to proxied requests, k:v (repeatable)");
  app.add_flag("--insecure", o.insecure, "Don't verify backends' SSL certificates");
  app.add_flag("--host-routing", o.host_routing, "Use host routing (host as first level of path)");
  app.add_option("--metrics-ip", o.metrics_ip, "IP for the metrics server (default: every interface)");
  app.add_option("--metrics-port", metrics_port, "Port serving Prometheus metrics at GET /metrics (default: none)");
  app.add_option("--log-level", log_level, "Log level (debug, info, warn, error)");
  app.add_option("--timeout", timeout_ms, "Idle limit (ms) on a client's connection");
  app.add_option("--proxy-timeout", proxy_timeout_ms, "Limit (ms) on a backend's answer");
  app.add_option("--storage-backend", storage_backend, "Not supported: routes live in memory");

  int64_t header_timeout = o.header_timeout.count(), ws_idle = o.ws_idle_timeout.count();
  int64_t max_pause = o.max_pause.count(), resume_timeout = o.resume_timeout.count();
  int64_t drain_timeout = o.drain_timeout.count();
  app.add_option("--threads", o.threads, "[elsa] Worker threads (default: one per core, at most 8)");
  app.add_option("--header-timeout", header_timeout, "[elsa] ms to wait for a request's headers");
  app.add_option("--max-header-size", o.max_header_bytes, "[elsa] Larger request headers get 431");
  app.add_option("--ws-idle-timeout", ws_idle, "[elsa] ms of browser silence before a websocket is dropped");
  app.add_option("--ws-queue-bytes", o.ws_queue_bytes, "[elsa] Bytes a paused websocket may queue");
  app.add_option("--max-ws-message", o.max_ws_message_bytes, "[elsa] Largest websocket message");
  app.add_option("--max-pause", max_pause, "[elsa] ms after which a paused route resumes by itself");
  app.add_option("--resume-timeout", resume_timeout, "[elsa] ms to keep reconnecting on resume");
  app.add_option("--drain-timeout", drain_timeout, "[elsa] ms a backend gets to close on pause");
  app.add_option("--log-format", log_format, "[elsa] text (CHP's lines), or json: one JSON object a line");

  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::CallForHelp&) {
    *exit_text = app.help();
    return o;
  } catch (const CLI::ParseError& e) {
    return Status::InvalidArgument(e.what());
  }
  if (version) {
    *exit_text = std::string(kVersion) + "\n";
    return o;
  }

  auto port_value = [](int64_t v, const char* flag, bool zero_ok) -> Result<uint16_t> {
    if (v < (zero_ok ? 0 : 1) || v > 65535) {
      return Status::InvalidArgument(std::string(flag) + ": " + std::to_string(v) + " is not a port");
    }
    return static_cast<uint16_t>(v);
  };
  ELSA_ASSIGN_OR_RETURN(o.port, port_value(port, "--port", true));
  ELSA_ASSIGN_OR_RETURN(o.api_port, port_value(api_port, "--api-port", true));
  ELSA_ASSIGN_OR_RETURN(o.metrics_port, port_value(metrics_port, "--metrics-port", true));
  ELSA_ASSIGN_OR_RETURN(o.redirect_port, port_value(redirect_port, "--redirect-port", true));
  ELSA_ASSIGN_OR_RETURN(o.redirect_to, port_value(redirect_to, "--redirect-to", true));
  if (o.api_port == 0 && api_port == 0 && o.port != 0) {
    if (o.port == 65535) return Status::InvalidArgument("--port 65535 leaves no room for the default --api-port");
    o.api_port = static_cast<uint16_t>(o.port + 1);
  }
  o.ip = ip == "*" ? "" : ip;
  o.x_forward = !no_x_forward;
  o.prepend_path = !no_prepend_path;
  o.include_prefix = !no_include_prefix;
  ELSA_ASSIGN_OR_RETURN(o.log_level, ParseLogLevel(log_level));
  ELSA_ASSIGN_OR_RETURN(o.log_format, ParseLogFormat(log_format));
  if (timeout_ms < 0 || proxy_timeout_ms < 0) return Status::InvalidArgument("--timeout and --proxy-timeout must be >= 0");
  o.timeout = std::chrono::milliseconds(timeout_ms);
  o.proxy_timeout = std::chrono::milliseconds(proxy_timeout_ms);
  for (auto [value, flag] : {std::pair{header_timeout, "--header-timeout"}, std::pair{ws_idle, "--ws-idle-timeout"},
                             std::pair{max_pause, "--max-pause"}, std::pair{resume_timeout, "--resume-timeout"},
                             std::pair{drain_timeout, "--drain-timeout"}}) {
    if (value <= 0) return Status::InvalidArgument(std::string(flag) + " must be > 0 ms");
  }
  o.header_timeout = std::chrono::milliseconds(header_timeout);
  o.ws_idle_timeout = std::chrono::milliseconds(ws_idle);
  o.max_pause = std::chrono::milliseconds(max_pause);
  o.resume_timeout = std::chrono::milliseconds(resume_timeout);
  o.drain_timeout = std::chrono::milliseconds(drain_timeout);
  if (o.max_header_bytes < 1024) return Status::InvalidArgument("--max-header-size must be >= 1024");
  if (o.max_ws_message_bytes < 1024) return Status::InvalidArgument("--max-ws-message must be >= 1024");
  if (o.threads < 0 || o.threads > 256) return Status::InvalidArgument("--threads must be between 0 and 256");
  if (o.threads == 0) o.threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));

  for (const std::string& h : custom_headers) {
    std::string v = Trim(h);
    size_t colon = v.find(':');
    if (colon == std::string::npos || colon == 0) {
      return Status::InvalidArgument("A colon was expected in custom header: " + v);
    }
    o.custom_headers.emplace_back(Trim(v.substr(0, colon)), Trim(v.substr(colon + 1)));
  }
  if (!storage_backend.empty()) {
    return Status::InvalidArgument("--storage-backend names a Node.js module; elsa-proxy keeps its "
                                   "routes in memory (JupyterHub re-adds them when a proxy restarts)");
  }
  if (!o.error_target.empty() && !o.error_path.empty()) {
    return Status::InvalidArgument("Cannot specify both error-target and error-path. Pick one.");
  }
  if (!o.error_target.empty()) {
    auto t = ParseTargetUrl(o.error_target);
    if (!t.ok()) return t.status().WithContext("--error-target");
  }
  if (!o.default_target.empty()) {
    auto t = ParseTargetUrl(o.default_target);
    if (!t.ok()) return t.status().WithContext("--default-target");
  }
  if (o.redirect_port && !o.ssl.enabled()) {
    return Status::InvalidArgument("HTTPS redirection specified but certificates not provided.");
  }
  ELSA_RETURN_IF_ERROR(CheckTls(o.ssl, "ssl"));
  ELSA_RETURN_IF_ERROR(CheckTls(o.api_ssl, "api-ssl"));
  ELSA_RETURN_IF_ERROR(CheckTls(o.client_ssl, "client-ssl"));
  std::string proto = Lower(ssl_protocol);
  if (!proto.empty() && proto != "tlsv1_2" && proto != "tlsv1_3" && proto != "tls" && proto != "sslv23") {
    return Status::InvalidArgument("--ssl-protocol: '" + ssl_protocol +
                                   "' is not supported (TLSv1_2, TLSv1_3, or TLS for any)");
  }
  o.ssl_protocol = proto;
  if (!o.protocol_rewrite.empty() && o.protocol_rewrite != "http" && o.protocol_rewrite != "https") {
    return Status::InvalidArgument("--protocol-rewrite must be http or https");
  }
  o.auth_token = auth_token_env ? auth_token_env : "";
  return o;
}

}  // namespace elsa::proxy
